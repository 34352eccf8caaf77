"""What :func:`proxytune.analysis.predict.predict_from_sweep` returns: the target's HP, loss and plan, typed.

Plain frozen dataclasses, no computation: the CLI, the demo, ``tune`` and the reports read their attributes;
``to_dict()`` gives the JSON that ``proxytune predict --json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..typed import Record


@dataclass(frozen=True)
class TargetSize(Record):
    """The model the prediction is for. ``tokens`` is None when a program sweep did not report its tokens
    and none were asked for; ``batch_tokens`` is None for a program sweep asked for none."""

    width: int
    depth: int
    params: float
    tokens: float | None
    batch_tokens: float | None


@dataclass(frozen=True)
class HPEstimate(Record):
    """The predicted value of one HP axis (``log2_lr``...) with its interval at ``confidence``, and ``source``:
    how it was found, in words (which law or estimate, and why that one)."""

    name: str
    value: float
    interval: tuple[float, float]
    confidence: float
    source: str = ""

    @property
    def natural_name(self) -> str | None:
        """``lr`` for ``log2_lr``: the HP itself when the axis is its log2, else None."""
        return self.name[5:] if self.name.startswith("log2_") else None

    @property
    def natural(self) -> float | None:
        """``2 ** value`` for a log2 axis (the learning rate for ``log2_lr``), else None."""
        return 2.0 ** self.value if self.natural_name else None

    @property
    def natural_interval(self) -> tuple[float, float] | None:
        lo, hi = self.interval
        return (2.0 ** lo, 2.0 ** hi) if self.natural_name else None

    @property
    def lr(self) -> float | None:
        """The base LR predicted, when the axis is ``log2_lr``."""
        return self.natural if self.name == "log2_lr" else None

    @property
    def lr_interval(self) -> tuple[float, float] | None:
        return self.natural_interval if self.name == "log2_lr" else None

    def fields_for_dict(self) -> dict[str, Any]:
        out = super().fields_for_dict()
        if self.natural_name:
            out.update({self.natural_name: self.natural, f"{self.natural_name}_interval": self.natural_interval})
        return out


@dataclass(frozen=True)
class LossEstimate(Record):
    """The expected loss of the target from ``L = a N^b + c`` over the proxies' best losses.

    ``at_tokens`` is the token budget the loss is for (the proxies'; None when a program did not report it);
    ``fit`` is the fitted law (:class:`proxytune.analysis.laws.SaturatingLaw`), kept as the object in
    :meth:`to_dict` (JSON output prints its formula)."""

    value: float
    interval: tuple[float, float]
    law: str
    at_tokens: float | None
    fit: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["fit"] = self.fit  # the law object itself, as the dict form has always carried it
        return out


@dataclass(frozen=True)
class RecipeRef(Record):
    """The recipe and optimizer of the sweep the prediction comes from, and the sweep's name."""

    recipe: str
    optimizer: str
    sweep: str


@dataclass(frozen=True)
class ProxySummary(Record):
    """What the proxies covered: the extrapolation the prediction makes is measured against this."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    base_depth: int | None
    base_residual: float
    tokens: float | None
    batch_tokens: tuple[float, ...]
    seeds: int


@dataclass(frozen=True)
class Prediction(Record):
    """HP, expected loss, trust warnings and per-tensor plan for a target, from a sweep.

    ``loss`` is None when the sweep has too few sizes for the loss law (the notes say why). ``plan`` is the
    target's plan document (what ``--plan`` writes, plus ``base_hparams``, ``groups`` and ``snippet``), None
    for a sweep of the user's own program (proxytune cannot build that model)."""

    target: TargetSize
    hp: HPEstimate
    loss: LossEstimate | None
    notes: tuple[str, ...]
    recipe: RecipeRef
    proxies: ProxySummary
    warnings: tuple[str, ...]
    plan: dict[str, Any] | None

    @property
    def snippet(self) -> str | None:
        """The training code for the target, None for a program sweep."""
        return None if self.plan is None else self.plan["snippet"]

"""What a tuning run produces, typed: stage 1's search, each candidate recipe's evidence, the prediction for
the target, the cost, and the :class:`TuneResult` that gathers them.

Plain frozen dataclasses, no computation: :mod:`proxytune.tune.run` builds them, the report, the demo and the
CLI read their attributes, and ``to_dict()`` gives what ``tune.json`` stores and ``proxytune tune --json``
prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..analysis.horizon import HorizonStage, TargetSetting
from ..analysis.optimum import Optimum
from ..analysis.prediction import LossEstimate
from ..analysis.verdict import Verdict, loss_se
from ..typed import Record


@dataclass(frozen=True)
class Finalist(Record):
    """A setting's mean loss over fresh seeds, with its standard error."""

    setting: dict[str, float]
    mean: float
    se: float
    seeds: int


@dataclass(frozen=True)
class Round(Record):
    """One round of stage 1's one-at-a-time search: its center, the decision per axis, its trial count.

    ``round`` is the round's number, or ``"final LR"`` for the closing LR scan. Each decision is the dict
    :func:`proxytune.tune.search.scan_optimum` returns (``axis``, ``from``, ``value``, ``scan``, ``note``...)."""

    round: int | str
    center: dict[str, float]
    decisions: list[dict[str, Any]]
    trials: int


@dataclass(frozen=True)
class Stage1Result(Record):
    """Stage 1 at the base: the LR scan, the search's rounds, the finalists on fresh seeds, the winner and the
    control (the defaults, every multiplier at 1)."""

    strategy: str
    lr_scan: dict[str, Any]
    defaults: dict[str, float]
    rounds: tuple[Round, ...]
    finalists: tuple[Finalist, ...]
    winner: Finalist
    control: Finalist
    trials: int


def _optimum_summary(o: Optimum) -> dict[str, Any]:
    return {"size": o.group, "log2_lr": o.value, "interval": list(o.interval), "loss": o.loss,
            "loss_se": loss_se(o), "seeds": o.n_seeds, "edge": o.edge, "notes": o.notes}


@dataclass(frozen=True)
class Candidate(Record):
    """One candidate recipe's evidence from stage 2: its optimum per width (and per depth when depths were
    verified), its transfer verdicts, the LR scans it ran, and whether the race dropped it.

    ``probe_only`` is the width where it trained at its transferred LR only (the race scanned the LR there for
    the leader alone), else None; ``one_seed`` says why that probe trained one seed only (clearly behind on it);
    ``one_seed_points``, which points of its LR scans trained one seed only, and why (``tune.run.SeedTrial``);
    ``widest_settled``, why the largest width trained the transferred LR only, its optimum left to the narrower
    widths (``verify.widest_scan: auto``), else None.
    The dict form summarises each optimum as plain data."""

    recipe: str
    sweep: str
    optima: tuple[Optimum, ...]
    lrs: dict[int, list[float]]
    dropped: str | None = None
    probe_only: int | None = None
    verdict: Verdict | None = None
    depth_optima: tuple[Optimum, ...] | None = None
    depth_verdict: Verdict | None = None
    one_seed: str | None = None
    one_seed_points: tuple[str, ...] = ()
    widest_settled: str | None = None

    def fields_for_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": self.recipe, "sweep": self.sweep, "dropped": self.dropped, "lrs": self.lrs,
                               "probe_only": self.probe_only, "one_seed": self.one_seed,
                               "one_seed_points": list(self.one_seed_points),
                               "widest_settled": self.widest_settled,
                               "optima": [_optimum_summary(o) for o in self.optima],
                               "verdict": self.verdict.to_dict() if self.verdict else None}
        if self.depth_optima is not None:
            out["depth_optima"] = [_optimum_summary(o) for o in self.depth_optima]
            out["depth_verdict"] = self.depth_verdict.to_dict() if self.depth_verdict else None
        return out


@dataclass(frozen=True)
class TargetPrediction(Record):
    """The base LR and loss predicted for the target from the recommended recipe's verification sweep, with
    the trust warnings and notes, and where the target's plan and training code were written (None for a
    program sweep, whose model proxytune cannot build)."""

    width: int
    depth: int
    params: float
    tokens: float | None
    log2_lr: float
    log2_lr_interval: tuple[float, float]
    lr: float
    lr_interval: tuple[float, float]
    loss: LossEstimate | None
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    plan: str | None
    snippet: str | None
    lr_source: str = ""
    #: the target run's settings (lr, batch_tokens, steps, weight_decay, warmup, beta2; muon_lr or eps when stage 1
    #: searched an optimizer constant), each with its interval,
    #: whether proxies measured it and where it came from (:class:`proxytune.analysis.horizon.TargetSetting`)
    settings: tuple[TargetSetting, ...] = ()
    #: stage 3's measurements (None when it did not run: the settings then rest on the published rules, named)
    horizon: HorizonStage | None = None

    def setting(self, name: str) -> TargetSetting | None:
        """The target setting called ``name`` (``lr``, ``batch_tokens``, ``steps``...), None when absent."""
        return next((s for s in self.settings if s.name == name), None)

    @property
    def loss_law(self) -> Any:
        """The fitted loss law (:class:`proxytune.analysis.laws.SaturatingLaw`), None without a loss prediction."""
        return self.loss.fit if self.loss is not None else None

    def fields_for_dict(self) -> dict[str, Any]:
        items = list(super().fields_for_dict().items())
        at = [k for k, _ in items].index("loss") + 1
        items.insert(at, ("loss_law", self.loss_law))
        return dict(items)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["loss"] is not None:
            out["loss"] = {k: v for k, v in out["loss"].items() if k != "fit"}  # the law has its own entry
        law = self.loss_law
        out["loss_law"] = law.to_dict() if law is not None else None
        return out


@dataclass(frozen=True)
class TuneCost(Record):
    """FLOPs of every proxy trial (in all and per stage) and how they compare with an LR sweep at the largest
    proxy and with one run of the target (each comparison None where it cannot be made)."""

    flops: float
    trials: int
    per_stage: dict[str, float]
    lr_sweep_at_largest: float | None = None
    vs_lr_sweep_at_largest: float | None = None
    largest_width: int | None = None
    target_run: float | None = None
    vs_target_run: float | None = None

    def fields_for_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().fields_for_dict().items()
                if v is not None or k in ("flops", "trials", "per_stage")}


@dataclass(frozen=True)
class TuneResult(Record):
    """What ``tune`` found: the recommendation, the evidence for it, the prediction and the cost.

    ``lr`` (``log2_lr``, ``lr_interval``) is the one learning rate of the answer: what goes to
    ``plan.optimizer(lr=...)`` of the target's plan (the proxies' size when no target is given), the number the
    training code uses; ``lr_source`` says how it was found (the optima's mean, or a resolved drift carried)."""

    name: str
    run_dir: str
    recipe: str
    log2_lr: float
    lr: float
    constants: dict[str, Any]
    stage1: Stage1Result
    candidates: tuple[Candidate, ...]
    recommendation: tuple[str, ...]
    prediction: TargetPrediction | None
    cost: TuneCost
    report: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    lr_interval: tuple[float, float] | None = None
    lr_source: str = ""

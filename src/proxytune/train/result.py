"""RunResult: what one training run produced, as plain data."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("complete", "diverged", "pruned")

# Final train loss = mean over this many last steps: one batch is too noisy to compare LRs.
FINAL_WINDOW = 10


@dataclass
class RunResult:
    """The outcome of one run.

    ``status`` is ``complete``, ``diverged`` or ``pruned`` (stopped early by
    a caller, e.g. successive halving). A diverged run is a result,
    not an error: its final losses are ``inf`` and ``diverged_step`` says
    when the loss went non-finite or above ``diverge_factor`` x the first loss.
    """

    status: str
    final_train_loss: float
    final_val_loss: float
    train_losses: list[float]
    evals: list[dict[str, float]]
    steps_done: int
    tokens: int
    wall_time: float
    flops: float
    n_params: int
    config: dict[str, Any]
    env: dict[str, Any] = field(default_factory=dict)
    diverged_step: int | None = None
    reason: str = ""
    #: the gradient noise scale B_simple in tokens, when the config asked for it (``TrainConfig.noise_scale``)
    noise_scale: float | None = None

    @property
    def loss(self) -> float:
        """The number a sweep compares: final validation loss (``inf`` when diverged)."""
        return self.final_val_loss

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``inf``/``nan`` become strings)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(**_from_json_safe(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def summary(self) -> dict[str, Any]:
        """The headline numbers, for tables."""
        return {
            "status": self.status,
            "final_train_loss": self.final_train_loss,
            "final_val_loss": self.final_val_loss,
            "steps": self.steps_done,
            "tokens": self.tokens,
            "wall_time_s": round(self.wall_time, 3),
            "flops": self.flops,
            "params": self.n_params,
        }


def final_train_loss(losses: list[float]) -> float:
    """Mean of the last FINAL_WINDOW step losses."""
    tail = losses[-FINAL_WINDOW:]
    return sum(tail) / len(tail) if tail else math.inf


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _from_json_safe(x: Any) -> Any:
    if x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: _from_json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json_safe(v) for v in x]
    return x

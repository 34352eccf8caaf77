"""The transfer verdict: does the optimal HP stay put as the model grows?

From the optima of one HP at several sizes (Optimum objects from
``optima_by_group``):

- **drift**: optimum at the largest size minus at the smallest, in octaves
  (log2 units), in total and per doubling of the size;
- **regret**: loss at the largest size with the HP transferred from the
  smallest, minus the best loss found at the largest size (absolute and
  relative);
- **wider is better**: whether the loss at the optimum improves with size.

The one-line verdict states the thresholds it used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .optimum import Optimum

DEFAULT_THRESHOLDS = {"max_drift_per_doubling": 0.25, "max_relative_regret": 0.01}


@dataclass
class Verdict:
    size_axis: str
    sizes: list[float]
    optima: list[float]
    drift: float
    drift_per_doubling: float
    regret: float
    relative_regret: float
    wider_is_better: bool
    passed: bool
    thresholds: dict[str, float]
    line: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer_verdict(optima: list[Optimum], size_axis: str = "width",
                     thresholds: dict[str, float] | None = None) -> Verdict:
    """Judge HP transfer along ``size_axis`` from per-size optima (other axes must be fixed)."""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    rows = sorted((o for o in optima if size_axis in o.group and math.isfinite(o.value)),
                  key=lambda o: float(o.group[size_axis]))
    if len(rows) < 2:
        raise ValueError(f"a transfer verdict needs optima at 2 or more values of {size_axis!r}, got {len(rows)}")
    small, large = rows[0], rows[-1]
    sizes = [float(o.group[size_axis]) for o in rows]
    doublings = math.log2(sizes[-1] / sizes[0])
    drift = large.value - small.value
    per_doubling = drift / doublings if doublings else math.nan
    transferred = large.loss_at(small.value)
    regret = transferred - large.best_grid_loss if math.isfinite(transferred) else math.inf
    rel = regret / large.best_grid_loss if math.isfinite(regret) else math.inf
    best_losses = [o.best_grid_loss for o in rows]
    wider = all(b <= a + 1e-12 for a, b in zip(best_losses, best_losses[1:]))
    passed = abs(per_doubling) <= th["max_drift_per_doubling"] and rel <= th["max_relative_regret"]
    warnings = [f"{size_axis}={o.group[size_axis]}: {n}" for o in rows for n in o.notes]
    line = (f"{'PASS' if passed else 'FAIL'}: optimum drift {drift:+.2f} octaves over {doublings:.0f} doublings "
            f"of {size_axis} ({per_doubling:+.2f}/doubling, limit ±{th['max_drift_per_doubling']:g}); regret at "
            f"{size_axis}={sizes[-1]:g} with the HP from {size_axis}={sizes[0]:g}: {regret:.4f} ({rel:.2%}, limit "
            f"{th['max_relative_regret']:.1%}); wider is {'better' if wider else 'NOT better'}")
    return Verdict(size_axis, sizes, [o.value for o in rows], drift, per_doubling, regret, rel, wider, passed, th,
                   line, warnings)

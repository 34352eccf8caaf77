"""The transfer verdict: does the optimal HP stay put as the model grows?

From the optima of one HP at several sizes (Optimum objects from
``optima_by_group``), three figures of merit, each with its interval:

- **drift per doubling**: the least-squares slope of the optimum (octaves,
  i.e. log2 units) against log2 of the size, over every size. Its interval
  comes from refitting the slope to each bootstrap draw of the optima.
- **regret**: the loss at the largest size with the HP found at the smallest
  size, minus the loss at the largest size's own optimum, both read off the
  largest size's fitted loss curve, relative to that loss.
- **wider is better**: whether the loss at the optimum falls as the size grows,
  judged against the seed-to-seed spread of the loss level (``yes`` / ``no``
  / ``unresolved``).

The verdict is one of three states, with the limits of
:mod:`proxytune.thresholds` (stated in the line):

- ``PASS``: the drift and the regret are within their limits, the drift's
  interval lies within ``resolution_factor`` times the limit, and no optimum
  sits on the edge of its grid;
- ``FAIL``: the drift's interval lies entirely beyond its limit, or the
  regret's interval entirely above its limit;
- ``UNRESOLVED``: neither is established; the sweep is too small or noisy to
  tell. ``advice`` says what would resolve it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ..thresholds import THRESHOLDS, Thresholds
from .optimum import Optimum

N_DRAWS = 400


@dataclass
class Verdict:
    size_axis: str
    hp: str
    sizes: list[float]
    optima: list[float]
    drift: float  # fitted drift over the whole size range (octaves)
    drift_per_doubling: float
    drift_interval: tuple[float, float]  # of drift_per_doubling
    regret: float  # absolute (loss units)
    relative_regret: float
    regret_interval: tuple[float, float]  # of relative_regret
    wider_is_better: str  # "yes" / "no" / "unresolved"
    state: str  # "PASS" / "FAIL" / "UNRESOLVED"
    thresholds: dict[str, float]
    line: str
    advice: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.state == "PASS"

    @property
    def failed(self) -> bool:
        return self.state == "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _resolve_thresholds(thresholds: Thresholds | dict[str, float] | None) -> Thresholds:
    if thresholds is None:
        return THRESHOLDS
    if isinstance(thresholds, Thresholds):
        return thresholds
    unknown = set(thresholds) - set(THRESHOLDS.to_dict())
    if unknown:
        raise ValueError(f"unknown thresholds: {', '.join(sorted(unknown))}")
    return Thresholds(**{**THRESHOLDS.to_dict(), **thresholds})


def optimum_draws(o: Optimum, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of the optimum (resampled from its bootstrap, or uniform over its interval when it has
    none) and the index of the bootstrap draw each came from (-1: none)."""
    if o.draws:
        idx = rng.integers(0, len(o.draws), size=n)
        return np.asarray(o.draws)[idx], idx
    lo, hi = o.interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = o.value
    return rng.uniform(lo, hi, size=n) if hi > lo else np.full(n, o.value), np.full(n, -1)


def lsq_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``y`` (draws x sizes) against ``x``."""
    xc = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / float(xc @ xc)


def transfer_verdict(optima: list[Optimum], size_axis: str = "width",
                     thresholds: Thresholds | dict[str, float] | None = None, seed: int = 0) -> Verdict:
    """Judge HP transfer along ``size_axis`` from per-size optima (other axes must be fixed)."""
    th = _resolve_thresholds(thresholds)
    rows = sorted((o for o in optima if size_axis in o.group and math.isfinite(o.value)),
                  key=lambda o: float(o.group[size_axis]))
    if len(rows) < 2:
        raise ValueError(f"a transfer verdict needs optima at 2 or more values of {size_axis!r}, got {len(rows)}")
    hp = rows[0].hp
    rng = np.random.default_rng(seed)
    sizes = [float(o.group[size_axis]) for o in rows]
    x = np.log2(np.asarray(sizes))
    doublings = float(x[-1] - x[0])
    if doublings <= 0:
        raise ValueError(f"a transfer verdict needs 2 or more distinct values of {size_axis!r}")
    tail = 50 * (1 - th.confidence)

    # drift
    values = np.asarray([o.value for o in rows])
    per_doubling = float(lsq_slope(x, values[None, :])[0])
    draws = [optimum_draws(o, N_DRAWS, rng) for o in rows]
    slopes = lsq_slope(x, np.stack([d[0] for d in draws], axis=1))
    drift_iv = (float(np.percentile(slopes, tail)), float(np.percentile(slopes, 100 - tail)))
    drift_iv = (min(drift_iv[0], per_doubling), max(drift_iv[1], per_doubling))

    # regret at the largest size with the smallest size's optimum
    small, large = rows[0], rows[-1]
    regret = max(0.0, large.loss_at(small.value) - large.loss)
    rel = regret / large.loss if math.isfinite(regret) and large.loss > 0 else math.inf
    rel_draws = []
    for xs_d, (_, idx) in zip(draws[0][0], zip(*draws[-1])):
        d = int(idx) if idx >= 0 else None
        r = max(0.0, large.loss_at(float(xs_d), d) - large.loss_at_optimum(d))
        rel_draws.append(r / large.loss if large.loss > 0 else math.inf)
    finite = [r for r in rel_draws if math.isfinite(r)]
    regret_iv = ((float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))
                 if finite else (math.inf, math.inf))
    regret_iv = (min(regret_iv[0], rel), max(regret_iv[1], rel))

    wider = _wider_is_better(rows, th.confidence)

    limit, rlimit = th.max_drift_per_doubling, th.max_relative_regret
    edges = [o for o in rows if o.edge is not None]
    if drift_iv[0] > limit or drift_iv[1] < -limit or regret_iv[0] > rlimit:
        state = "FAIL"
    elif (abs(per_doubling) <= limit and rel <= rlimit and not edges
          and -th.resolution_factor * limit <= drift_iv[0] and drift_iv[1] <= th.resolution_factor * limit):
        state = "PASS"
    else:
        state = "UNRESOLVED"
    advice: list[str] = []
    if edges:
        advice.append(f"extend the {hp} grid: the optimum is on its edge at {size_axis} "
                      + ", ".join(f"{o.group[size_axis]:g}" for o in edges))
    if state == "UNRESOLVED":
        n_seeds = min(o.n_seeds for o in rows)
        advice.append(f"the sweep cannot tell a still optimum from a drifting one (drift interval "
                      f"{drift_iv[0]:+.2f} .. {drift_iv[1]:+.2f} octaves per doubling): run more seeds (now "
                      f"{n_seeds}), more {size_axis}s over a wider range (now {doublings:.0f} doublings), or longer "
                      "runs, which lower the noise")
    pct = f"{100 * th.confidence:.0f}%"
    line = (f"{state}: the optimal {hp} moves {per_doubling:+.2f} octaves per doubling of {size_axis} ({pct} "
            f"{drift_iv[0]:+.2f} .. {drift_iv[1]:+.2f}; limit +-{limit:g}) over {size_axis} {sizes[0]:g}..{sizes[-1]:g}"
            f"; using {size_axis} {sizes[0]:g}'s optimum at {size_axis} {sizes[-1]:g} costs {rel:.2%} loss ({pct} "
            f"{regret_iv[0]:.2%} .. {regret_iv[1]:.2%}; limit {rlimit:.1%}); wider is better: {wider}")
    warnings = [f"{size_axis}={o.group[size_axis]:g}: {n}" for o in rows for n in o.notes]
    return Verdict(size_axis, hp, sizes, values.tolist(), per_doubling * doublings, per_doubling, drift_iv, regret,
                   rel, regret_iv, wider, state, th.to_dict(), line, advice, warnings)


def loss_se(o: Optimum) -> float:
    """Standard error of the loss at an optimum: the seed-to-seed spread of the loss level and the spread of the
    fitted minimum over the bootstrap draws (nan with one seed)."""
    spread = np.std([o.loss_at_optimum(d) for d in range(len(o.draws))]) if o.draws else 0.0
    return math.hypot(o.level_se, float(spread)) if math.isfinite(o.level_se) else math.nan


def loss_gap(a: Optimum, b: Optimum) -> tuple[float, float]:
    """(``a.loss - b.loss``, its standard error): how much lower ``b``'s best loss is than ``a``'s."""
    return a.loss - b.loss, math.hypot(loss_se(a), loss_se(b))


def _wider_is_better(rows: list[Optimum], confidence: float) -> str:
    """``yes`` when the loss at the optimum falls from the smallest to the largest size beyond the noise and no
    step between neighbouring sizes rises beyond it; ``no`` when one does; else ``unresolved``."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    steps = [loss_gap(a, b) for a, b in zip(rows, rows[1:])]
    if any(math.isfinite(s) and d < -z * s for d, s in steps):
        return "no"
    total, s = loss_gap(rows[0], rows[-1])
    if math.isfinite(s) and total > z * s and all(d > -z * s_ for d, s_ in steps):
        return "yes"
    return "unresolved"


def verdict_with_gaps(optima: list[Optimum], size_axis: str = "width",
                      hp: str = "log2_lr") -> tuple[Verdict | None, list[str]]:
    """The transfer verdict over the sizes that have a finite optimum, and what is missing, in words.

    A size where every point diverged has no optimum: it is named, with what to do, and when it is the largest
    size swept the verdict says it covers only the smaller ones (a recommendation must never come from a size
    that is not the largest swept)."""
    finite = [o for o in optima if math.isfinite(o.value)]
    notes = []
    for o in optima:
        if not math.isfinite(o.value):
            grid = [g for g in o.grid if math.isfinite(g)]
            span = f" ({hp} {min(grid):g} .. {max(grid):g})" if grid else ""
            notes.append(f"{size_axis} {o.group.get(size_axis)}: every point diverged{span}: add lower {hp} values "
                         f"there and resume the sweep")
    if not finite:
        notes.insert(0, f"every point of the sweep diverged: no optimum anywhere; lower the {hp} range")
        return None, notes
    sizes = [o.group.get(size_axis) for o in finite]
    verdict = None
    if len(set(sizes)) >= 2 and len(set(sizes)) == len(finite):
        verdict = transfer_verdict(finite, size_axis)
    swept = [o.group.get(size_axis) for o in optima if o.group.get(size_axis) is not None]
    if swept and sizes and None not in sizes and max(swept) > max(sizes):
        notes.append(f"the largest {size_axis} swept ({max(swept)}) has no optimum: "
                     + (f"the verdict covers {size_axis} {', '.join(map(str, sorted(set(sizes))))} only, and "
                        if verdict else "") + "nothing can be recommended for larger models until it has one")
    return verdict, notes

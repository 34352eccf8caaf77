"""One learning rate for the target from the proxies' optima: carried with the drift only when the drift is measured.

The proxies give an optimum per size (width, or depth). Two estimates of the target's optimum are possible:

- **no drift** (the recipe's claim: under muP, or CompleteP across depth, the optimum does not move): the mean of
  the proxies' optima, every size an estimate of the same number;
- **the measured drift**: the least-squares line of the optima against log2 of the size (parameters), carried to
  the target.

The line is used only when the transfer verdict resolved a drift (FAIL: its interval excludes the limit). With a
PASS the drift is within the limit; with UNRESOLVED the proxies cannot tell a drift from noise, and a line fitted
through noise and carried several doublings is a guess (the drift interval, carried, says how large a guess).
Either way the answer says which estimate it is and why: :attr:`CarriedLR.source`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .optimum import Optimum
from .verdict import Verdict, lsq_slope, optimum_draws, transfer_verdict

_N_DRAWS = 1000


@dataclass(frozen=True)
class CarriedLR:
    """The log2 LR for the target, its interval, and how it was found.

    ``extrapolated``: True when the measured drift was carried (the verdict resolved it); ``slope``: the drift
    used, in log2 LR per unit of log2 size (0 when not extrapolated); ``fitted_slope``: the line's slope either
    way; ``verdict``: the transfer verdict the choice rests on (None with a single size)."""

    value: float
    interval: tuple[float, float]
    extrapolated: bool
    slope: float
    fitted_slope: float
    source: str
    verdict: Verdict | None


def size_axis_of(optima: Sequence[Optimum]) -> str | None:
    """The group key (``width`` or ``depth``) that varies among ``optima``; None when none or both do."""
    varying = [a for a in ("width", "depth") if len({o.group.get(a) for o in optima}) >= 2]
    return varying[0] if len(varying) == 1 else None


def carry_lr(optima: Sequence[Optimum], log2_sizes: Sequence[float], log2_target: float | None, *,
             target_size: float | None = None, confidence: float = 0.9, recipe: str = "the recipe",
             size_name: str = "parameters") -> CarriedLR:
    """The target's log2 LR from per-size ``optima`` (finite values) at ``log2_sizes`` (log2 of ``size_name``,
    what the line is fitted against: parameters, or width).

    ``log2_target`` None: the LR for the proxies' own sizes (no target given): the mean of the optima unless the
    drift is resolved, then the largest proxy's optimum (nothing to extrapolate to). ``target_size``: the target's
    width (or depth, on a depth sweep), to say how far an unresolved drift could move the optimum there."""
    if len(optima) != len(log2_sizes) or not optima:
        raise ValueError("carry_lr needs one size per optimum, and at least one optimum")
    x = np.asarray(log2_sizes, dtype=float)
    rng = np.random.default_rng(0)
    draws = np.stack([optimum_draws(o, _N_DRAWS, rng)[0] for o in optima], axis=1)  # (draws, sizes)
    values = np.asarray([o.value for o in optima], dtype=float)
    tail = 50 * (1 - confidence)
    axis = size_axis_of(optima)
    verdict = transfer_verdict(list(optima), axis) if axis is not None and len(set(x)) >= 2 else None
    fitted = float(lsq_slope(x, values[None, :])[0]) if len(set(x)) >= 2 else 0.0
    if verdict is not None and verdict.failed:
        if log2_target is None:
            big = int(np.argmax(x))
            o = optima[big]
            return CarriedLR(o.value, o.interval, False, 0.0, fitted,
                             f"the optimum measured at the largest proxy ({_size(o)}): the transfer verdict resolved "
                             f"a drift ({verdict.drift_per_doubling:+.2f} octaves per doubling of {axis}), and no "
                             "target was given to carry it to", verdict)
        dx = log2_target - float(x.mean())
        at = draws.mean(axis=1) + lsq_slope(x, draws) * dx
        value = float(values.mean()) + fitted * dx
        lo, hi = np.percentile(at, [tail, 100 - tail])
        return CarriedLR(value, (float(min(lo, value)), float(max(hi, value))), True, fitted, fitted,
                         f"the measured drift, extrapolated: the line through the {len(optima)} proxies' optima "
                         f"({fitted:+.3f} log2 lr per doubling of {size_name}), carried to the target; the transfer "
                         f"verdict resolved it (FAIL: {verdict.drift_per_doubling:+.2f} octaves per doubling of "
                         f"{axis}, 90% {verdict.drift_interval[0]:+.2f} .. {verdict.drift_interval[1]:+.2f})", verdict)
    value = float(values.mean())
    lo, hi = np.percentile(draws.mean(axis=1), [tail, 100 - tail])
    return CarriedLR(value, (float(min(lo, value)), float(max(hi, value))), False, 0.0, fitted,
                     _no_drift_source(optima, verdict, recipe, target_size), verdict)


def _no_drift_source(optima: Sequence[Optimum], verdict: Verdict | None, recipe: str,
                     target_size: float | None) -> str:
    n = len(optima)
    head = (f"the mean of the {n} proxies' optima, not extrapolated" if n > 1
            else f"the optimum measured at {_size(optima[0])}, not extrapolated")
    if verdict is None:
        return head + f" (one size: no drift can be measured; {recipe}'s claim is that the optimum does not move)"
    d, (lo, hi) = verdict.drift_per_doubling, verdict.drift_interval
    if verdict.passed:
        why = (f"the transfer verdict is PASS: the drift ({d:+.2f} octaves per doubling of {verdict.size_axis}, "
               f"90% {lo:+.2f} .. {hi:+.2f}) is within the limit")
    else:
        why = (f"the transfer verdict is {verdict.state}: the proxies cannot tell the drift ({d:+.2f} octaves per "
               f"doubling of {verdict.size_axis}, 90% {lo:+.2f} .. {hi:+.2f}) from noise, so {recipe}'s claim that the "
               "optimum does not move is used")
    largest = max(float(s) for s in verdict.sizes)
    if target_size is not None and target_size > largest:
        k = math.log2(target_size / largest)
        if not verdict.passed:
            why += (f"; were the drift real, {k:.1f} doublings past the largest proxy would move the optimum "
                    f"{k * lo:+.1f} .. {k * hi:+.1f} octaves ({verdict.size_axis} {target_size:g})")
    return f"{head}: {why}"


def _size(o: Optimum) -> str:
    return " ".join(f"{k} {v}" for k, v in o.group.items() if k in ("width", "depth")) or "the only size"

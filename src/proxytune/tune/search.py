"""Stage 1 of ``tune``: where to look next, as pure functions of the trials stored so far.

A *setting* is one point of the search: ``log2_lr`` (the base LR in octaves)
plus one value per tuned multiplier (the multiplier itself, 1 = the
recipe's default, 0 allowed for ``role_init.*``). Everything here maps
stored records to the next points, so a tuning run that is stopped and
started again re-derives exactly the same points from the same trials.

The one-at-a-time (``oat``) search, per round, around a center setting:

- an LR scan, ``log2_lr`` +- ``lr_span`` octaves, the multipliers at the center;
- for each multiplier, a scan of ``center x 2^k`` for ``k`` in
  ``-span .. span`` (``step`` apart), the LR and the other multipliers at the
  center; the readout's init multiplier also tries 0 (a zero readout);
- the next center takes, for each scanned axis, the optimum of its own scan
  (the optimum estimator of :mod:`proxytune.analysis.optimum`, on the log2 of
  the multiplier, rounded to half an octave).

Scans around the defaults, one HP at a time, are what Everett et al. 2024
and u-muP (Blake et al. 2024) suggest for constants that interact little; the
rounds catch what interaction there is, and a final LR scan at the combined
setting re-centres the LR, which every multiplier shifts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..analysis.optimum import find_optimum

LR_AXIS = "log2_lr"
SEED = "seed"
_QUANTUM = 0.5  # octaves: multipliers and LR centers are rounded to this
_DONE = ("complete", "diverged")
# Multipliers whose scan also tries 0. A zero readout trains (its gradient does not need its own weights); a
# zero hidden or embedding init would freeze the layers behind it, so those are not offered.
ZERO_INIT = ("role_init.readout",)


def quantize_log2(x: float, q: float = _QUANTUM) -> float:
    return round(round(x / q) * q, 10)


def scaled(value: float, octaves: float) -> float:
    """``value x 2^octaves``, rounded to a whole quarter-octave power of two (readable, exactly repeatable)."""
    return 2.0 ** (round((math.log2(value) + octaves) * 4) / 4)


def offsets(span: float, step: float) -> list[float]:
    """``-span .. span`` in ``step`` increments, without 0."""
    n = int(math.floor(span / step + 1e-9))
    return [round(k * step, 10) for k in range(-n, n + 1) if k != 0]


def default_setting(multipliers: Iterable[str], log2_lr: float) -> dict[str, float]:
    return {LR_AXIS: float(log2_lr), **{m: 1.0 for m in multipliers}}


def key(setting: dict[str, Any], axes: Iterable[str]) -> tuple:
    """A hashable identity of a setting over ``axes`` (floats rounded, so 0.1 + 0.2 == 0.3)."""
    return tuple(round(float(setting[a]), 9) for a in axes)


def with_seed(setting: dict[str, float], seed: int) -> dict[str, Any]:
    return {**setting, SEED: seed}


def oat_points(center: dict[str, float], multipliers: list[str], *, span: float, step: float,
               lr_span: float, seed: int = 0) -> list[dict[str, Any]]:
    """The points of one one-at-a-time round around ``center`` (one ``seed``), the center first."""
    points = [dict(center)]
    for k in offsets(lr_span, 1.0):
        points.append({**center, LR_AXIS: round(center[LR_AXIS] + k, 10)})
    for m in multipliers:
        if center[m] > 0:
            values = [scaled(center[m], k) for k in offsets(span, step)]
            if m in ZERO_INIT:
                values.append(0.0)  # a zero readout is a natural value of its init multiplier (Tensor Programs V)
        else:  # the center is a zero init: scan the nonzero values around the default
            values = [scaled(1.0, k) for k in (0.0, *offsets(span, step))]
        points += [{**center, m: v} for v in values]
    axes = list(center)
    seen, out = set(), []
    for p in points:
        k = key(p, axes)
        if k not in seen:
            seen.add(k)
            out.append(with_seed(p, seed))
    return out


def lr_scan_points(center: dict[str, float], lr_span: float, seed: int = 0) -> list[dict[str, Any]]:
    """An LR scan at ``center``'s multipliers: ``log2_lr`` +- ``lr_span`` octaves in 1-octave steps."""
    return [with_seed({**center, LR_AXIS: round(center[LR_AXIS] + k, 10)}, seed)
            for k in (0.0, *offsets(lr_span, 1.0))]


def setting_of(record: dict[str, Any], axes: list[str]) -> dict[str, float] | None:
    """The setting of a stored record over ``axes`` (``log2_`` axes of a TPE sweep read back as multipliers);
    None when the record lacks one of them."""
    out: dict[str, float] = {}
    for a in axes:
        if a in record:
            out[a] = float(record[a])
        elif a != LR_AXIS and f"log2_{a}" in record:
            out[a] = 2.0 ** float(record[f"log2_{a}"])
        else:
            return None
    return out


def _matches(record: dict[str, Any], center: dict[str, float], except_axis: str) -> bool:
    return all(a == except_axis or (a in record and math.isclose(float(record[a]), v, rel_tol=1e-9, abs_tol=1e-12))
               for a, v in center.items())


def scan_optimum(records: list[dict[str, Any]], center: dict[str, float], axis: str) -> dict[str, Any]:
    """The best value of ``axis`` from its scan around ``center``: a dict with ``value``, ``loss`` (fitted, or
    measured for a grid or zero-init pick), ``center_loss``, ``points`` and a ``note``."""
    scan = [r for r in records if r.get("status") in _DONE and _matches(r, center, axis)]
    if not scan:
        return {"axis": axis, "value": center[axis], "loss": math.nan, "center_loss": math.nan, "points": 0,
                "note": "no finished trials in this scan", "scan": []}
    loss = {round(float(r[axis]), 9): (r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf) for r in scan}
    center_loss = loss.get(round(center[axis], 9), math.nan)
    if axis == LR_AXIS:
        rows = [{"x": float(r[axis]), "val_loss": r["val_loss"]} for r in scan]
    else:
        rows = [{"x": math.log2(float(r[axis])), "val_loss": r["val_loss"]} for r in scan if float(r[axis]) > 0]
    out = {"axis": axis, "center_loss": center_loss, "points": len(scan), "note": "",
           "scan": sorted((r["x"], r["val_loss"]) for r in rows)}
    finite = [r for r in rows if math.isfinite(r["val_loss"])]
    o = find_optimum(rows, "x", n_boot=0) if len({r["x"] for r in finite}) >= 3 else None
    if not finite:
        out.update(value=center[axis], loss=math.inf, note="every point of the scan diverged: kept")
    elif o is not None and o.flat:
        out.update(value=center[axis], loss=center_loss, note="flat: kept")
    else:
        if o is not None and math.isfinite(o.value):
            x, fitted = quantize_log2(o.value), o.loss
            out["note"] = "edge of the scan" if o.edge else ""
        else:
            best = min(finite, key=lambda r: r["val_loss"])
            x, fitted = best["x"], best["val_loss"]
        out.update(value=x if axis == LR_AXIS else 2.0 ** x, loss=fitted)
    zero = loss.get(0.0) if axis != LR_AXIS else None
    out["zero"] = zero
    if axis != LR_AXIS and zero is not None and zero < min((r["val_loss"] for r in finite), default=math.inf):
        out.update(value=0.0, loss=zero, note="zero init is best")
    return out


def next_center(center: dict[str, float], records: list[dict[str, Any]],
                axes: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The next round's center: each axis of ``axes`` moved to the optimum of its own scan around ``center``."""
    new = dict(center)
    decisions = []
    for axis in axes:
        d = scan_optimum(records, center, axis)
        new[axis] = d["value"]
        decisions.append({**d, "from": center[axis]})
    return new, decisions


def distinct_settings(records: list[dict[str, Any]], axes: list[str]) -> list[tuple[dict[str, float], float]]:
    """Every distinct setting over ``axes`` among finished records with its best loss, best first."""
    best: dict[tuple, tuple[dict[str, float], float]] = {}
    for r in records:
        if r.get("status") not in _DONE:
            continue
        s = setting_of(r, axes)
        if s is None:
            continue
        loss = r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf
        k = key(s, axes)
        if k not in best or loss < best[k][1]:
            best[k] = (s, loss)
    return sorted(best.values(), key=lambda sv: sv[1])


def finalist_settings(records: list[dict[str, Any]], axes: list[str], k: int,
                      defaults: dict[str, float]) -> list[dict[str, float]]:
    """The ``k`` best distinct settings of stage 1 (one seed each), plus the best setting with every multiplier
    at 1 (the control that tuning has to beat), control first."""
    ranked = [s for s, loss in distinct_settings(records, axes) if math.isfinite(loss)]
    control = next((s for s in ranked if all(s[a] == 1.0 for a in axes if a != LR_AXIS)), defaults)
    out = [control]
    for s in ranked:
        if len(out) > k:
            break
        if key(s, axes) != key(control, axes):
            out.append(s)
    return out


def mean_losses(records: list[dict[str, Any]], settings: list[dict[str, float]],
                axes: list[str]) -> list[dict[str, Any]]:
    """Per setting: mean, std error and count of the finished seeds' losses (diverged seeds count as inf)."""
    out = []
    for s in settings:
        k = key(s, axes)
        losses = [r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf for r in records
                  if r.get("status") in _DONE and setting_of(r, axes) is not None and key(setting_of(r, axes), axes) == k]
        n = len(losses)
        mean = sum(losses) / n if n else math.nan
        se = (math.sqrt(sum((x - mean) ** 2 for x in losses) / (n - 1) / n)
              if n > 1 and math.isfinite(mean) else math.nan)
        out.append({"setting": s, "mean": mean, "se": se, "seeds": n})
    return out

"""The optimal HP of each size: a local quadratic fit of loss vs log2 HP, with a bootstrap interval.

For each group of trials (one size: width / depth / tokens / batch...), the
loss is averaged over seeds at each grid value of the HP (a diverged seed
makes the point ``inf``). Around the best grid point, a parabola through the
best point and up to two neighbours on each side gives the sub-grid optimum.
The interval comes from a bootstrap over seeds (when there are several) and
over the points of the fit window (residual resampling).

An optimum on the edge of the grid, or a flat optimum, is reported as such,
with what to do about it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SEED_AXES = ("seed", "data_seed")
_META = ("trial", "status", "stage", "val_loss", "train_loss", "steps_done", "tokens", "flops", "params", "wall_time",
         "diverged_step", "error")


@dataclass
class Optimum:
    """The optimal value of ``hp`` for one group of trials."""

    group: dict[str, Any]
    hp: str
    value: float  # sub-grid optimum (log2 units for log2_ axes)
    interval: tuple[float, float]
    loss: float  # fitted loss at the optimum
    best_grid_value: float
    best_grid_loss: float
    grid: list[float]
    mean_losses: list[float]
    n_seeds: int
    method: str  # "quadratic" or "grid"
    edge: str | None = None  # "low" / "high" when the best point is on the grid's edge
    flat: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A usable optimum: inside the grid and not flat."""
        return self.edge is None and not self.flat

    def loss_at(self, x: float) -> float:
        """Seed-mean loss at HP value ``x``, interpolated linearly between grid points (clamped at the ends)."""
        return _interpolate(self.grid, self.mean_losses, x)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = list(self.interval)
        return d


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = int(np.searchsorted(xs, x)) - 1
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    a, b = ys[i], ys[i + 1]
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return a + t * (b - a)


def _fit_window(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, bool]:
    """(argmin, min) of a parabola through (xs, ys); falls back to the best point when it is not convex."""
    i = int(np.argmin(ys))
    if len(xs) < 3:
        return float(xs[i]), float(ys[i]), False
    x0 = xs[i]
    a, b, c = np.polyfit(xs - x0, ys, 2)
    if a <= 0:
        return float(xs[i]), float(ys[i]), False
    opt = float(np.clip(-b / (2 * a), xs.min() - x0, xs.max() - x0))
    return float(x0 + opt), float(a * opt * opt + b * opt + c), True


def find_optimum(records: list[dict[str, Any]], hp: str = "log2_lr", *, window: int = 2, n_boot: int = 300,
                 flat_tol: float = 0.002, seed: int = 0) -> Optimum:
    """The optimum of ``hp`` over ``records`` of one group (dicts with ``hp``, ``val_loss``, maybe ``seed``)."""
    by_x: dict[float, dict[Any, float]] = {}
    for r in records:
        loss = r.get("val_loss")
        loss = math.inf if loss is None or not math.isfinite(loss) else float(loss)
        seed_key = tuple(r.get(a) for a in SEED_AXES)
        by_x.setdefault(float(r[hp]), {})[seed_key] = loss
    if not by_x:
        raise ValueError(f"no trials to find the optimum of {hp!r} from")
    grid = sorted(by_x)
    seeds = sorted({s for v in by_x.values() for s in v}, key=repr)
    table = np.array([[by_x[x].get(s, math.nan) for s in seeds] for x in grid])  # (points, seeds)
    means = _row_means(table)
    group = {k: v for k, v in records[0].items() if k not in (hp, *_META) and k not in SEED_AXES}
    notes: list[str] = []
    finite = np.isfinite(means)
    if not finite.any():
        return Optimum(group, hp, math.nan, (math.nan, math.nan), math.inf, math.nan, math.inf, grid,
                       means.tolist(), len(seeds), "grid", notes=["every point diverged: lower the HP range"])
    i = int(np.nanargmin(np.where(finite, means, np.inf)))
    edge = "low" if i == 0 else ("high" if i == len(grid) - 1 else None)
    lo, hi = max(0, i - window), min(len(grid), i + window + 1)
    win = [j for j in range(lo, hi) if finite[j]]
    xs, ys = np.array([grid[j] for j in win]), means[win]
    value, loss, convex = _fit_window(xs, ys)
    method = "quadratic" if convex else "grid"
    spread = float(ys.max() - ys.min()) if len(ys) > 1 else 0.0
    flat = len(ys) >= 3 and spread <= flat_tol * float(ys.min())
    if flat:
        notes.append(f"flat optimum: the losses of the {len(ys)} points around it differ by {spread:.2g} "
                     f"(< {flat_tol:.1%}); any {hp} in [{xs.min():g}, {xs.max():g}] is as good")
    if edge is not None:
        step = grid[1] - grid[0] if len(grid) > 1 else 1.0
        side, end = ("lower", grid[0]) if edge == "low" else ("higher", grid[-1])
        notes.append(f"optimum on the grid edge ({hp} = {end:g} is the {'smallest' if edge == 'low' else 'largest'} "
                     f"value tried): extend the grid by at least 2 points ({2 * abs(step):g}) toward {side} values")
    interval = _bootstrap(table, grid, win, n_boot, seed) if method == "quadratic" else (value, value)
    return Optimum(group, hp, value, interval, loss, grid[i], float(means[i]), grid, means.tolist(), len(seeds),
                   method, edge, flat, notes)


def _row_means(table: np.ndarray) -> np.ndarray:
    """Seed mean per point; a diverged seed (inf) makes the point inf, missing seeds (nan) are skipped."""
    out = []
    for row in table:
        vals = row[~np.isnan(row)]
        out.append(math.inf if len(vals) == 0 or np.isinf(vals).any() else float(vals.mean()))
    return np.array(out)


def _bootstrap(table: np.ndarray, grid: list[float], win: list[int], n_boot: int, seed: int) -> tuple[float, float]:
    """90% interval of the fitted optimum: resample seeds per point, then residuals of the window fit."""
    rng = np.random.default_rng(seed)
    xs = np.array([grid[j] for j in win])
    base = _row_means(table[win])
    value0, _, _ = _fit_window(xs, base)
    coeffs = np.polyfit(xs - xs[np.argmin(base)], base, 2)
    resid = base - np.polyval(coeffs, xs - xs[np.argmin(base)])
    draws = []
    for _ in range(n_boot):
        rows = []
        for j in win:
            vals = table[j][~np.isnan(table[j])]
            pick = rng.choice(vals, size=len(vals), replace=True)
            rows.append(math.inf if np.isinf(pick).any() else float(pick.mean()))
        ys = np.array(rows)
        if len(xs) >= 3:
            ys = ys + rng.choice(resid, size=len(ys), replace=True)
        if not np.isfinite(ys).all():
            continue
        draws.append(_fit_window(xs, ys)[0])
    if len(draws) < 10:
        return (value0, value0)
    return (float(np.percentile(draws, 5)), float(np.percentile(draws, 95)))


def optima_by_group(records: list[dict[str, Any]], hp: str = "log2_lr", size_axes: list[str] | None = None,
                    **kwargs: Any) -> list[Optimum]:
    """One Optimum per combination of ``size_axes`` (default: every axis but ``hp`` and seeds)."""
    done = [r for r in records if r.get("status") in ("complete", "diverged")]
    if not done:
        return []
    meta = set(_META)
    if size_axes is None:
        size_axes = [k for k in done[0] if k not in meta and k != hp and k not in SEED_AXES]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault(tuple(r.get(a) for a in size_axes), []).append(
            {**{a: r.get(a) for a in size_axes}, hp: r[hp], "val_loss": r["val_loss"],
             **{s: r[s] for s in SEED_AXES if s in r}})
    return [find_optimum(rows, hp, **kwargs) for _, rows in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))]


def _sort_key(key: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, repr(v)) for v in key)

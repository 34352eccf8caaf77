"""The optimal HP of each size: a skew-aware fit over seeds, kept inside the measured bracket, with an interval.

This module is pure (numpy only) and sits below both ``sweep/`` (a grid sweep's refinement pass asks it where
each size's optimum is) and ``analysis/`` (which reports it); :mod:`proxytune.analysis.optimum` re-exports it.

The estimator, for one group of trials (one size: width / depth / tokens ...)
and one HP axis (usually ``log2_lr``):

1. **Table.** Loss per HP value and seed. A seed that diverged makes its HP
   value unusable (``inf``); a missing seed is skipped.
2. **Best point.** The HP value with the lowest seed-mean loss. The true
   optimum of a curve with one minimum lies between the best point's two
   neighbours (the nearest measured values on each side, refinement points
   included): that is the *bracket*, and the estimate never leaves it.
3. **Window.** Every usable point within ``window`` (2) *coarse steps* of the
   best point, in HP units, not in points. The coarse step is the grid's own
   step: the smallest spacing that, together with the smaller ones, covers
   more than half of the grid's span. For a regular grid that is its step, and
   the half steps that refinement adds leave it unchanged on grids of 5 or
   more points, so refinement points join the window instead of narrowing it.
4. **Fit.** A curve in the HP through every seed's losses in the window, with
   one intercept per seed: a parabola, plus a cubic term when the window holds
   5 or more distinct HP values. Runs with the same seed share their init and
   batch order, so their losses move up or down together; the per-seed
   intercept removes that shared shift, which says nothing about *where* the
   minimum is, and the residual of the fit is the noise that does. The cubic
   term is there because real loss-vs-log2-lr curves are skewed (steeper on
   the low-lr side): a parabola over +-2 octaves put the optimum 0.2..0.65
   octave toward the flat side, a misfit the bootstrap below cannot see.
5. **Optimum.** The lowest point of the fitted curve on the bracket (a root of
   its slope inside the bracket, or the lower end). The curve must be convex
   there (positive second derivative); when it is not, the best grid point is
   the answer. ``loss`` is the fitted curve at the optimum.
6. **Interval** (90% by default). A parametric bootstrap: new losses are drawn
   around the fitted curve with the residual noise (its scale itself drawn
   from its chi-square distribution, which widens the interval when few
   residual degrees of freedom back it), and steps 2-5 are re-run on each
   draw, so a draw whose best point moves to a neighbour moves its bracket
   and window too. The interval is the 5th..95th percentile of the
   re-estimated optima. Short scans (3 points on 2 seeds leave 2 residual
   degrees of freedom) estimate that noise poorly, and a scan whose noise came
   out small by luck gets an interval too narrow. ``optima_by_group(...,
   pool_noise=True)``, as ``tune``'s verification uses it, gives such a fit
   the residuals of all the sizes' fits together (their rss and degrees of
   freedom summed); a fit whose own noise is above that pool keeps its own.
   B5c, on synthetic 3-point 2-seed scans of B1's measured curves: 90%
   intervals covered 0.870 on each scan's own noise, 0.926 with this rule
   (0.885 when every size took the pool, which made the noisiest width's
   intervals too narrow).
7. **Refinement.** When the interval is wider than the grid step around the
   best point (and that step is a coarse one), :attr:`Optimum.refine` lists
   the half-step points on each side of the best point. They lie inside the
   same window, so the refit has more points over the same span. Sweeps run
   them as a second pass when ``strategy.refine`` is on (the default); a best
   point whose neighbours are half steps away asks for no further pass.
8. **Two candidates.** When the interval excludes the best measured point
   and the measured curve has a bump in the fit window next to it (a point
   above both neighbours), the fit and the measurements disagree on where
   the minimum is: :attr:`Optimum.unimodal`
   is False, a note names both candidates (and the bump), and ``refine`` also
   holds the unmeasured half-step points inside the bracket next to the best
   point and on each side of the fitted minimum, whatever the interval's
   width. The interval and the value stay as fitted. An interval that merely
   falls between grid points on a clean curve is not flagged. On the
   synthetic 2-seed parabola sweeps of ``tests/test_optimum.py`` 13/150 are
   flagged, each for a bump the seed noise made.

Coverage of the interval, measured by ``bench/optimum_noise.py`` (2-core CPU;
2-seed synthetic sweeps, 200 per case, on the 14 smoothed loss curves of real
4-seed sweeps, at their measured noise): 0.91 pooled, 0.88 after one
refinement pass (0.67 / 0.69 with the plain +-2-point parabola); 0.92 / 0.89
on parabolas with the same noise (the estimator's own model). Median widths
0.9..2.3 octave (0.7..2.0 after refinement). After refinement the bracket is
only +-0.5 octave, and the re-estimated optima are clipped to it, so an
interval can stop at the bracket just short of the truth; that is where the
refined misses mostly fall (checked on the cpu-mup-32 control). ``tests/test_optimum.py`` checks the rate on synthetic
7-point 2-seed sweeps at the measured noise: 142/150 on a parabola, 134/150
when 2x steeper below the optimum, 139/150 on that after refinement.

An optimum on the edge of the grid, or a flat optimum, is reported as such,
with what to do about it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEED_AXES = ("seed", "data_seed")
#: the columns of a trial record (:meth:`proxytune.sweep.results.TrialResults.records`) that are results, not the
#: point's axes
RECORD_META = ("trial", "status", "stage", "val_loss", "train_loss", "steps_done", "tokens", "flops", "params",
               "wall_time", "diverged_step", "noise_scale", "error")


@dataclass(frozen=True)
class Curve:
    """The fitted seed-mean loss ``c + b t + a t^2 + cubic t^3`` with ``t = x - x0``, trusted on ``[lo, hi]``
    (the fit window). ``cubic`` is 0 when the window has fewer than 5 distinct HP values (a plain parabola)."""

    x0: float
    a: float
    b: float
    c: float
    lo: float
    hi: float
    cubic: float = 0.0

    def __call__(self, x: float) -> float:
        t = x - self.x0
        return self.c + t * (self.b + t * (self.a + t * self.cubic))

    def curvature(self, x: float) -> float:
        """Half the second derivative at ``x``: the local quadratic coefficient (loss per HP unit squared)."""
        return self.a + 3 * self.cubic * (x - self.x0)

    def covers(self, x: float) -> bool:
        return self.lo - 1e-9 <= x <= self.hi + 1e-9

    def minimum(self, lo: float, hi: float) -> float | None:
        """Where the curve is lowest on ``[lo, hi]``: a root of its slope inside or the lower end; None when
        the curve is not convex there (a concave or inflecting fit says nothing reliable about the minimum)."""
        candidates = [lo, hi]
        # slope = b + 2 a t + 3 cubic t^2
        qa, qb, qc = 3 * self.cubic, 2 * self.a, self.b
        if qa != 0:
            disc = qb * qb - 4 * qa * qc
            if disc >= 0:
                # the cancellation-free pair of roots: q / qa and qc / q
                q = -0.5 * (qb + math.copysign(math.sqrt(disc), qb))
                roots = [q / qa] + ([qc / q] if q != 0 else [])
                candidates += [self.x0 + t for t in roots]
        elif qb != 0:
            candidates.append(self.x0 - qc / qb)
        x = min((v for v in candidates if lo <= v <= hi), key=self)
        return x if self.curvature(x) > 0 else None


Parabola = Curve  # the old name: without a cubic term the curve is one


@dataclass
class Optimum:
    """The optimal value of ``hp`` for one group of trials (see the module docstring for the estimator)."""

    group: dict[str, Any]
    hp: str
    value: float  # the optimum (log2 units for log2_ axes)
    interval: tuple[float, float]
    loss: float  # fitted seed-mean loss at the optimum
    best_grid_value: float
    best_grid_loss: float
    grid: list[float]
    mean_losses: list[float]
    n_seeds: int
    # "quadratic": the fitted curve (a parabola, plus a cubic term on 5+ points; ``fit.cubic`` tells which);
    # "grid" when no curve convex at its minimum fits
    method: str
    edge: str | None = None  # "low" / "high" when the best point is on the grid's edge
    flat: bool = False
    notes: list[str] = field(default_factory=list)
    bracket: tuple[float, float] = (math.nan, math.nan)
    noise: float = math.nan  # residual std of the fit (loss units): the noise that moves the optimum
    noise_df: int = 0
    # standard error of the seed-mean loss level from the seed-to-seed offsets (nan with one seed): what
    # limits comparing losses *between* sizes, which the residual noise above does not include
    level_se: float = math.nan
    confidence: float = 0.9
    refine: list[float] = field(default_factory=list)  # half-step points that would narrow the interval
    fit: Curve | None = None
    # bootstrap draws (not serialized): optimum per draw, and the curve of that draw (None: grid fallback)
    draws: list[float] = field(default_factory=list, repr=False)
    draw_fits: list[Curve | None] = field(default_factory=list, repr=False)
    # False when the interval excludes the best measured point and the measured curve has a bump next to it (not
    # unimodal there): ``notes`` names both candidates and the bump, ``refine`` asks for points around both
    unimodal: bool = True

    @property
    def ok(self) -> bool:
        """A usable optimum: inside the grid and not flat."""
        return self.edge is None and not self.flat and math.isfinite(self.value)

    @property
    def width(self) -> float:
        """Width of the interval (HP units; octaves for log2 axes)."""
        return self.interval[1] - self.interval[0]

    def loss_at(self, x: float, draw: int | None = None) -> float:
        """Seed-mean loss at HP value ``x``: the fitted curve inside its window, else linear interpolation
        between grid points (clamped at the ends). ``draw`` uses that bootstrap draw's curve."""
        fit = self.fit if draw is None else self.draw_fits[draw]
        if fit is not None and fit.covers(x):
            return fit(x)
        return _interpolate(self.grid, self.mean_losses, x)

    def loss_at_optimum(self, draw: int | None = None) -> float:
        return self.loss if draw is None else self.loss_at(self.draws[draw], draw)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("group", "hp", "value", "loss", "best_grid_value", "best_grid_loss",
                                           "grid", "mean_losses", "n_seeds", "method", "edge", "flat", "notes",
                                           "noise", "noise_df", "level_se", "confidence", "refine",
                                           "unimodal")}
        d["interval"] = list(self.interval)
        d["bracket"] = list(self.bracket)
        d["fit"] = None if self.fit is None else self.fit.__dict__.copy()
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


def _row_means(table: np.ndarray) -> np.ndarray:
    """Seed mean per point; a diverged seed (inf) makes the point inf, missing seeds (nan) are skipped."""
    missing = np.isnan(table)
    count = (~missing).sum(axis=1)
    total = np.where(missing, 0.0, table).sum(axis=1)  # inf stays inf: the point is unusable
    return np.where((count > 0) & np.isfinite(total), total / np.maximum(count, 1), math.inf)


def _coarse_step(xs: np.ndarray) -> float:
    """The grid's own step: the smallest spacing that, with the smaller ones, covers more than half the grid.

    For a regular grid that is its step. Refinement points split one or two steps into halves, which then
    cover at most 2 steps' length, so on a grid of 5+ points the step stays the coarse one (a plain median of
    the spacings would drift to the half step); a missing point's double gap does not move it either.
    """
    gaps = np.sort(np.diff(xs))
    if not len(gaps):
        return math.nan
    covered = np.cumsum(gaps)
    # the tolerance makes an exact half (5-point grid + 2 half steps) count as not more than half
    return float(gaps[int(np.searchsorted(covered, covered[-1] / 2 * (1 + 1e-9), side="right"))])


@dataclass
class _Estimate:
    value: float
    loss: float
    best: int
    window: np.ndarray  # indices into the grid of the fit's points
    bracket: tuple[float, float]
    fit: Curve | None
    rss: float = math.nan
    df: int = 0
    fitted: np.ndarray | None = None  # fitted loss per (window point, seed); nan where no measurement
    offsets: np.ndarray | None = None  # the per-seed intercepts


def _two_way_fit(xs: np.ndarray, table: np.ndarray) -> tuple[Curve, float, int, np.ndarray, np.ndarray] | None:
    """Least squares ``y[j, s] = k t^3 + a t^2 + b t + u_s`` (``t = x_j - x0``; ``k = 0`` under 5 distinct HP
    values) over the measured entries.

    Returns the seed-mean curve (``c`` = mean of the seed intercepts), the residual sum of squares, its
    degrees of freedom, the fitted table and the seed intercepts; None when fewer than 3 distinct HP values
    are measured.
    """
    present = ~np.isnan(table)
    rows_x = np.flatnonzero(present.any(axis=1))
    if len(rows_x) < 3:
        return None
    seeds = np.flatnonzero(present.any(axis=0))
    lo, hi = float(xs[rows_x[0]]), float(xs[rows_x[-1]])
    x0, half = (lo + hi) / 2, (hi - lo) / 2
    j, s = np.nonzero(present)
    # powers of t scaled to [-1, 1], so the columns are comparable whatever the HP's units
    u = (xs[j] - x0) / half
    degree = 3 if len(rows_x) >= 5 else 2  # the cubic term takes the curve's skew; it needs 5 points to be fit
    X = np.zeros((len(j), degree + len(seeds)))
    X[:, :degree] = u[:, None] ** np.arange(degree, 0, -1)  # columns u^3 (if any), u^2, u
    X[np.arange(len(j)), degree + np.searchsorted(seeds, s)] = 1.0  # one intercept per seed
    y = table[j, s]
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ coef
    resid = y - pred
    df = len(y) - X.shape[1]
    fitted = np.full(table.shape, math.nan)
    fitted[j, s] = pred
    # back from the scaled u to x - x0
    cubic = float(coef[0]) / half ** 3 if degree == 3 else 0.0
    a, b = float(coef[degree - 2]) / half ** 2, float(coef[degree - 1]) / half
    offsets = np.asarray(coef[degree:], dtype=float)
    return Curve(x0, a, b, float(offsets.mean()), lo, hi, cubic), float(resid @ resid), df, fitted, offsets


def _estimate(xs: np.ndarray, table: np.ndarray, reach: float) -> _Estimate | None:
    """Steps 2-4 of the estimator on one table, fitting the points within ``reach`` (HP units) of the best
    one; None when every point diverged."""
    means = _row_means(table)
    finite = np.isfinite(means)
    if not finite.any():
        return None
    i = int(np.argmin(means))  # inf where unusable, so a finite point wins
    n = len(xs)
    bracket = (float(xs[max(i - 1, 0)]), float(xs[min(i + 1, n - 1)]))
    # a window in HP units, not in points: refinement points then add to the fit instead of narrowing it
    win = np.flatnonzero(finite & (np.abs(xs - xs[i]) <= reach + 1e-9 * max(1.0, abs(reach))))
    got = _two_way_fit(xs[win], table[win])
    value = None if got is None else got[0].minimum(*bracket)
    if value is None:
        return _Estimate(float(xs[i]), float(means[i]), i, win, bracket, None)
    fit, rss, df, fitted, offsets = got
    return _Estimate(value, fit(value), i, win, bracket, fit, rss, df, fitted, offsets)


def _noise(est: _Estimate, pooled: tuple[float, int] | None) -> tuple[float, int]:
    """Residual sum of squares and degrees of freedom behind ``est``'s noise: its own fit's, with ``pooled``
    (other fits' rss and df) added, unless its own residuals say more noise than the pool does. A fit whose
    residuals came out small borrows the pool's; one noisier than the pool keeps its own, since the sizes of a
    sweep need not share one noise level (B5c: pooling alone made the noisiest width's intervals too narrow)."""
    rss, df = (est.rss, est.df) if est.fit is not None and est.df > 0 else (0.0, 0)
    if pooled is None or pooled[1] <= 0:
        return rss, df
    if df > 0 and rss / df > (rss + pooled[0]) / (df + pooled[1]):
        return rss, df
    return rss + pooled[0], df + pooled[1]


def _bootstrap(xs: np.ndarray, table: np.ndarray, est: _Estimate, reach: float, n_boot: int, confidence: float,
               rng: np.random.Generator, pooled: tuple[float, int] | None = None,
               ) -> tuple[tuple[float, float], list[float], list[Curve | None]] | None:
    """Parametric bootstrap of the whole estimator (step 5); None when no residual freedom backs the noise."""
    rss, df = _noise(est, pooled)
    if est.fit is None or df <= 0 or est.fitted is None:
        return None
    sigma2 = rss / df
    win = est.window
    mask = ~np.isnan(est.fitted)
    draws: list[float] = []
    fits: list[Curve | None] = []
    for _ in range(n_boot):
        scale = math.sqrt(sigma2 * df / rng.chisquare(df))
        sim = table.copy()
        block = sim[win]
        block[mask] = est.fitted[mask] + rng.normal(0.0, scale, size=int(mask.sum()))
        sim[win] = block
        e = _estimate(xs, sim, reach)
        if e is not None:
            draws.append(e.value)
            fits.append(e.fit)
    if len(draws) < 10:
        return None
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return (float(lo), float(hi)), draws, fits


def _table(records: list[dict[str, Any]], hp: str) -> tuple[list[float], list[Any], np.ndarray]:
    """The grid of ``hp``, the seeds, and the loss per (point, seed) (``inf``: diverged, nan: not run)."""
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
    return grid, seeds, np.array([[by_x[x].get(s, math.nan) for s in seeds] for x in grid])  # (points, seeds)


def _reach(xs: np.ndarray, window: int) -> tuple[float, float]:
    coarse = _coarse_step(xs)
    return coarse, (window * coarse if math.isfinite(coarse) else 0.0)


def residual_noise(records: list[dict[str, Any]], hp: str = "log2_lr", window: int = 2) -> tuple[float, int]:
    """The residual sum of squares and degrees of freedom of the fit :func:`find_optimum` makes on ``records``
    (``(0, 0)`` without a curve or residual freedom): what ``pooled_noise`` adds up over sizes."""
    grid, _, table = _table(records, hp)
    xs = np.array(grid)
    est = _estimate(xs, table, _reach(xs, window)[1])
    return (0.0, 0) if est is None else _noise(est, None)


def find_optimum(records: list[dict[str, Any]], hp: str = "log2_lr", *, window: int = 2, n_boot: int = 400,
                 confidence: float = 0.9, flat_tol: float = 0.002, seed: int = 0,
                 pooled_noise: tuple[float, int] | None = None) -> Optimum:
    """The optimum of ``hp`` over ``records`` of one group (dicts with ``hp``, ``val_loss``, maybe ``seed``).

    See the module docstring for the estimator. ``window``: how far the fit reaches on each side of the best
    point, in coarse grid steps (refinement's half-step points inside it add to the fit); ``n_boot``:
    bootstrap draws; ``confidence``: level of the interval; ``flat_tol``: relative loss spread below which the
    optimum is called flat; ``seed``: of the bootstrap (results are deterministic); ``pooled_noise``: the
    residual sum of squares and degrees of freedom of other fits with the same noise (:func:`residual_noise` of
    the other sizes of one sweep), added to this fit's for the bootstrap's noise and for ``noise``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if pooled_noise is not None and (pooled_noise[1] < 0 or not pooled_noise[0] >= 0):
        raise ValueError(f"pooled_noise must be (rss >= 0, df >= 0), got {pooled_noise}")
    grid, seeds, table = _table(records, hp)
    xs = np.array(grid)
    means = _row_means(table)
    group = {k: v for k, v in records[0].items() if k not in (hp, *RECORD_META) and k not in SEED_AXES}
    coarse, reach = _reach(xs, window)
    est = _estimate(xs, table, reach)
    if est is None:
        return Optimum(group, hp, math.nan, (math.nan, math.nan), math.inf, math.nan, math.inf, grid,
                       means.tolist(), len(seeds), "grid", notes=["every point diverged: lower the HP range"],
                       confidence=confidence)
    i = est.best
    notes: list[str] = []
    edge = "low" if i == 0 else ("high" if i == len(grid) - 1 else None)
    ys = means[est.window]
    spread = float(ys.max() - ys.min()) if len(ys) > 1 else 0.0
    flat = len(ys) >= 3 and spread <= flat_tol * float(ys.min())
    if flat:
        notes.append(f"flat optimum: the losses of the {len(ys)} points around it differ by {spread:.2g} "
                     f"(< {flat_tol:.1%}); any {hp} in [{xs[est.window].min():g}, {xs[est.window].max():g}] is "
                     "as good")
    if edge is not None:
        step = coarse if math.isfinite(coarse) else 1.0
        side, end = ("lower", grid[0]) if edge == "low" else ("higher", grid[-1])
        notes.append(f"optimum on the grid edge ({hp} = {end:g} is the {'smallest' if edge == 'low' else 'largest'} "
                     f"value tried): extend the grid by at least 2 points ({2 * step:g}) toward {side} values")
    boot = _bootstrap(xs, table, est, reach, n_boot, confidence, np.random.default_rng(seed), pooled_noise)
    if boot is None:
        interval, draws, fits = est.bracket, [], []
        if est.fit is not None:
            notes.append(f"too few points and seeds to estimate the noise ({len(est.window)} points x "
                         f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}): the interval is the bracket of the "
                         "best point's neighbours")
        else:
            notes.append("no curve convex at its minimum fits around the best point: the optimum is the best grid "
                         "value and the interval the bracket of its neighbours")
    else:
        interval, draws, fits = boot
    interval = (min(interval[0], est.value), max(interval[1], est.value))  # rounding must not exclude the value
    local_step = min((abs(grid[j] - grid[i]) for j in (i - 1, i + 1) if 0 <= j < len(grid)), default=math.nan)
    refine: list[float] = []
    # only around a coarse point: after one pass the best point's neighbours are half steps away, so no second
    if edge is None and not flat and math.isfinite(local_step) and local_step >= coarse - 1e-9 \
            and interval[1] - interval[0] > local_step:
        refine = [round(grid[i] + d * local_step / 2, 10) for d in (-1, 1)]
    rss, df = _noise(est, pooled_noise)
    noise = math.sqrt(rss / df) if df > 0 else math.nan
    level_se = _level_se(table, est)
    opt = Optimum(group, hp, est.value, interval, est.loss, grid[i], float(means[i]), grid, means.tolist(),
                  len(seeds), "quadratic" if est.fit is not None else "grid", edge, flat, notes, est.bracket,
                  noise, df, level_se, confidence, refine, est.fit, draws, fits)
    _flag_two_candidates(opt, est.window, coarse)
    return opt


def _flag_two_candidates(opt: Optimum, window: np.ndarray, coarse: float) -> None:
    """When the interval excludes the best measured point and the measured curve has a bump next to it, say so
    (``unimodal`` False, a note naming both candidates and the bump) and ask for half-step points around both."""
    best, (lo, hi) = opt.best_grid_value, opt.interval
    tol = 1e-9 * max(1.0, abs(best))
    if opt.fit is None or lo - tol <= best <= hi + tol:
        return
    # An interval between grid points is what a good fit gives on a clean curve; it contradicts the measurements
    # when the measured curve has a bump there (a point above both neighbours): then it is not unimodal.
    bumps = _bumps(opt.grid, opt.mean_losses, window, best, opt.value)
    if not bumps:
        return
    opt.unimodal = False
    if not opt.flat and math.isfinite(coarse) and coarse > 0:
        opt.refine = _refine_around(opt.grid, opt.bracket, best, opt.value, coarse / 2, opt.refine)
    why = f" (a bump at {' and '.join(_num(x) for x in bumps)})"
    if opt.refine:
        todo = f"refine around both ({opt.hp} = {', '.join(_num(x) for x in opt.refine)})"
    else:
        todo = "the points around both are measured already: more seeds there would tell them apart"
    opt.notes.append(f"the fitted curve's minimum ({_num(opt.value)}, {opt.confidence:.0%} {_num(lo)} .. "
                     f"{_num(hi)}) excludes the best measured point ({_num(best)}, loss {opt.best_grid_loss:.5g}; "
                     f"the fit's loss at its minimum {opt.loss:.5g}): the measured curve is not unimodal "
                     f"here{why}; {todo}")


def _num(x: float) -> str:
    """An HP value for a note: 2 decimals at most, no trailing zeros (-10.5, -10.99, -10)."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _refine_around(grid: list[float], bracket: tuple[float, float], best: float, value: float, half: float,
                   refine: list[float]) -> list[float]:
    """``refine`` plus the half-step points (on the lattice of ``half`` through ``best``) next to the best
    point and on each side of the fitted minimum, strictly inside the bracket and not yet measured; sorted.

    Inside the bracket, on the coarse step's lattice and unmeasured: once they are measured, the best point's
    neighbours are half steps away and no lattice point is left between them, so no further pass is asked."""
    k = (value - best) / half
    points = set(refine)
    for x in (best - half, best + half, best + math.floor(k + 1e-9) * half, best + math.ceil(k - 1e-9) * half):
        x = round(x, 10)
        measured = any(abs(x - g) <= 1e-9 * max(1.0, abs(g)) for g in grid)
        if bracket[0] + 1e-9 < x < bracket[1] - 1e-9 and not measured:
            points.add(x)
    return sorted(points)


def _bumps(grid: list[float], means: list[float], window: np.ndarray, best: float, value: float) -> list[float]:
    """The grid points of the fit window, between the two candidates or next to them, whose seed-mean loss is
    higher than both neighbours': the bumps that make the measured curve not unimodal there."""
    lo, hi = min(best, value), max(best, value)
    first = max([j for j, x in enumerate(grid) if x < lo - 1e-9], default=0)
    last = min([j for j, x in enumerate(grid) if x > hi + 1e-9], default=len(grid) - 1)
    found = []
    for j in sorted(int(k) for k in window):
        if first <= j <= last and 0 < j < len(grid) - 1 and all(math.isfinite(means[k]) for k in (j - 1, j, j + 1)) \
                and means[j] > means[j - 1] and means[j] > means[j + 1]:
            found.append(grid[j])
    return found


def _level_se(table: np.ndarray, est: _Estimate) -> float:
    """Standard error of the seed-mean loss level: spread of the seed offsets over sqrt(seeds)."""
    if est.offsets is not None and len(est.offsets) > 1:
        offsets = est.offsets
    else:  # no fit: the seeds' losses at the best point
        row = table[est.best]
        offsets = row[np.isfinite(row)]
    if len(offsets) < 2:
        return math.nan
    return float(np.std(offsets, ddof=1) / math.sqrt(len(offsets)))


def optima_by_group(records: list[dict[str, Any]], hp: str = "log2_lr", size_axes: list[str] | None = None,
                    pool_noise: bool = False, **kwargs: Any) -> list[Optimum]:
    """One Optimum per combination of ``size_axes`` (default: every axis but ``hp`` and seeds).

    ``pool_noise``: every group's interval draws its noise from the residuals of all the groups' fits (one
    noise level for the sweep), for short scans whose own residuals are too few to estimate it (step 6 of the
    module docstring)."""
    done = [r for r in records if r.get("status") in ("complete", "diverged")]
    if not done:
        return []
    if size_axes is None:
        size_axes = group_axes(done, hp)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault(tuple(r.get(a) for a in size_axes), []).append(
            {**{a: r.get(a) for a in size_axes}, hp: r[hp], "val_loss": r["val_loss"],
             **{s: r[s] for s in SEED_AXES if s in r}})
    base_seed = kwargs.pop("seed", 0)
    # one bootstrap stream per group: the same stream for every size would correlate their draws and make
    # differences between sizes (the drift) look more certain than they are
    ordered = [rows for _, rows in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))]
    own = [residual_noise(rows, hp, kwargs.get("window", 2)) for rows in ordered] if pool_noise else []
    total = (sum(r for r, _ in own), sum(d for _, d in own))
    return [find_optimum(rows, hp, seed=base_seed + 7919 * k, **kwargs,
                         **({"pooled_noise": (max(0.0, total[0] - own[k][0]), total[1] - own[k][1])}
                            if pool_noise else {}))
            for k, rows in enumerate(ordered)]


def group_axes(records: list[dict[str, Any]], hp: str) -> list[str]:
    """The axes that tell groups apart: every key of a record but ``hp``, the seeds and the result fields."""
    return [k for k in records[0] if k not in RECORD_META and k != hp and k not in SEED_AXES]


def _sort_key(key: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, repr(v)) for v in key)

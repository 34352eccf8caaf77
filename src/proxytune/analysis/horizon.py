"""The target's horizon and batch, measured on proxies at the base width: LR*(D, B), B_opt(D) and the AdamW timescale.

Under a width-transferring recipe (muP), the optimal LR's dependence on width and its dependence on the token
horizon D and the batch B separate: the width answer comes from the width proxies (:mod:`proxytune.analysis.carry`),
the horizon and batch answer from LR scans at the base width over several (D, B), where the runs are cheap. In log2
units the two add: ``log2 lr*(target) = log2 lr*(width, D0, B0) + [log2 lr*(D_t, B_t) - log2 lr*(D0, B0)]``.

- **The critical batch**: the gradient noise scale ``B_simple`` (McCandlish et al. 2018) measured at every horizon
  (:mod:`proxytune.train.noise`) gives ``B_noise = k D^gamma`` (:func:`noise_scale_law`). With it, the LR law is
  ``log2 lr* = c + a log2 S + factor(B, B_noise(D))`` (S = D / B the steps, :func:`lr_shift_critical`): the batch
  acts through :func:`batch_lr_factor`, the square-root rule below the critical batch and saturating near it (Li et
  al. 2024), so a target batch past the batches measured is answered, not clamped.
- **LR*(D, B)** without a noise scale: ``lr* = c D^a B^b``, fitted on the per-cell optima (:func:`proxytune.analysis.laws.fit_log_linear`
  for the point fit); its interval comes from refitting the law to bootstrap draws of every cell's optimum, so it
  carries each optimum's measured noise. Published priors, for comparison and where nothing was measured: Bjorck et
  al. 2024 (``a = -0.32`` at fixed batch), the square-root rule for Adam (``b = 1/2``, Malladi et al. 2022), Step
  Law (Li et al. 2025).
- **B_opt(D)**: at each horizon with 3 or more batches, the best loss against log2 B is fitted with a parabola;
  its minimum (when inside the batches tried) is that horizon's optimal batch; ``B_opt = k D^beta`` across horizons.
  Priors: Power Lines (Bergsma et al. 2025, ``beta = 0.383``), Step Law (``B* = 0.58 D^0.571`` tokens).
- **Weight decay** through the AdamW timescale ``tau = B / (lr wd D)`` (the EMA timescale of the weights as a
  fraction of training; Wang & Aitchison 2024; Bergsma et al. 2025): lambda tuned at one horizon, its tau carried,
  and the carried lambda checked against the lambda measured at another horizon.

Everything here is numpy on :class:`~proxytune.analysis.optimum.Optimum` objects: no training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..typed import Record
from .laws import LogLinearLaw, fit_log_linear
from .optimum import Optimum
from .rules_of_thumb import (
    BATCH_LR_OPTIMIZERS, POWER_LINES_BOPT_EXP, STEPLAW_BATCH_COEF, STEPLAW_BATCH_D_EXP, TOKEN_HORIZON_EXP, steplaw_batch_tokens,
)
from .verdict import loss_se, optimum_draws

_N_DRAWS = 1000


@dataclass(frozen=True)
class TargetSetting(Record):
    """One setting of the target run: its value, the interval at the answer's confidence (None where there is
    none: a value the user gave, or a rule applied without an error model), whether proxies measured it, and where
    it came from, in words."""

    name: str
    value: float
    interval: tuple[float, float] | None
    measured: bool
    source: str
    unit: str = ""


@dataclass(frozen=True)
class Cell:
    """One (horizon, batch) of the horizon stage: tokens D and tokens per step B, and the LR optimum there."""

    tokens: float
    batch_tokens: float
    optimum: Optimum


@dataclass(frozen=True)
class LRShift(Record):
    """log2 LR*(target D, B) - log2 LR*(reference D, B) from the fitted law, with its interval, the law, and the
    exponents with their bootstrap intervals (``{"D": (a, lo, hi), "B": (b, lo, hi)}``)."""

    shift: float
    interval: tuple[float, float]
    law: str
    exponents: dict[str, tuple[float, float, float]]
    cells: int
    source: str
    fit: LogLinearLaw | None = None


@dataclass(frozen=True)
class NoiseScaleLaw(Record):
    """The gradient noise scale B_simple (McCandlish et al. 2018; tokens) at the base width against the training
    tokens D: ``B_noise = k D^gamma`` through one value per probe run (``points``: (tokens, B_simple)), with the
    covariance of (log2 k, gamma); a constant (``gamma`` 0, the points' mean) where one horizon was measured."""

    points: tuple[tuple[float, float], ...]
    log2_k: float
    gamma: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    dropped: int = 0  # probes whose gradient estimate was not positive (noise dominated): no value

    def log2_at(self, tokens: float) -> float:
        return self.log2_k + self.gamma * math.log2(tokens)

    def at(self, tokens: float) -> float:
        """B_noise (tokens) at ``tokens`` of training."""
        return 2.0 ** self.log2_at(tokens)

    def draws(self, tokens: Sequence[float], n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws of log2 B_noise at each of ``tokens`` (n, len(tokens)), from the fit's covariance."""
        coef = rng.multivariate_normal([self.log2_k, self.gamma], np.asarray(self.cov), size=n)
        return coef[:, :1] + coef[:, 1:] * np.log2(np.asarray(tokens, dtype=float))[None, :]

    def law(self) -> str:
        """The fitted law in words (its exponent with a 90% half-width), or that it is a constant."""
        if len({d for d, _ in self.points}) > 1:
            return f"B_noise ∝ D^{self.gamma:+.2f} (+-{1.645 * math.sqrt(self.cov[1][1]):.2f})"
        return "one horizon measured: taken as constant"

    def line(self) -> str:
        horizons = len({d for d, _ in self.points})
        return (f"gradient noise scale B_simple (McCandlish et al. 2018) measured in {len(self.points)} run(s) at "
                f"{horizons} horizon(s): {self.law()}")


def noise_scale_law(points: Sequence[tuple[float, float]]) -> NoiseScaleLaw | None:
    """Fit ``log2 B_noise = log2 k + gamma log2 D`` by least squares on (tokens, B_simple) points (non-finite or
    non-positive values dropped and counted); None when no point is usable."""
    good = [(d, b) for d, b in points if b is not None and math.isfinite(b) and b > 0 and d > 0]
    dropped = len(points) - len(good)
    if not good:
        return None
    x = np.log2([d for d, _ in good])
    y = np.log2([b for _, b in good])
    if len(set(x.tolist())) >= 2 and len(good) >= 3:
        X = np.column_stack([np.ones_like(x), x])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        s2 = float(resid @ resid) / max(1, len(y) - 2)
        cov = s2 * np.linalg.inv(X.T @ X)
        return NoiseScaleLaw(tuple(good), float(coef[0]), float(coef[1]),
                             ((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))), dropped)
    sd = float(np.std(y, ddof=1)) if len(y) > 1 else 1.0  # one run: its value give or take a factor of 2
    return NoiseScaleLaw(tuple(good), float(np.mean(y)), 0.0, ((sd * sd / len(y), 0.0), (0.0, 0.0)), dropped)


def batch_lr_factor(batch: np.ndarray | float, b_noise: np.ndarray | float, rule: str = "sqrt") -> np.ndarray:
    """log2 of the optimal LR's batch factor (up to a constant) at ``batch`` for a noise scale ``b_noise``, both in
    tokens: ``sqrt`` (Adam): ``1 / ((sqrt(Bn/B) + sqrt(B/Bn)) / 2)``, which grows as the square root of B well below
    Bn, peaks at Bn and falls beyond it (Li et al. 2024, "Surge Phenomenon in Optimal Learning Rate and Batch Size
    Scaling"); ``linear`` (SGD): ``1 / (1 + Bn/B)``, linear below Bn, flat beyond (McCandlish et al. 2018)."""
    r = np.asarray(b_noise, dtype=float) / np.asarray(batch, dtype=float)
    if rule == "linear":
        return -np.log2(1.0 + r)
    return -np.log2((np.sqrt(r) + 1.0 / np.sqrt(r)) / 2.0)


def _batch_rule(optimizer: str) -> str:
    return "linear" if BATCH_LR_OPTIMIZERS.get(optimizer.strip().lower().replace("_", "-")) == "linear" else "sqrt"


def _draw_matrix(optima: Sequence[Optimum], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([optimum_draws(o, n, rng)[0] for o in optima], axis=1)  # (draws, cells)


def lr_shift(cells: Sequence[Cell], reference: tuple[float, float], target: tuple[float, float], *,
             confidence: float = 0.9, noise: NoiseScaleLaw | None = None, optimizer: str = "adamw") -> LRShift:
    """The octaves the optimal LR moves from ``reference`` (D0, B0) to ``target`` (D, B), tokens both, from the law
    ``lr* = c D^a B^b`` fitted on ``cells`` (only the variables the cells vary; at least 2 more cells than
    variables). The law is extrapolated in D, and in B downwards; a target batch above the largest measured
    is taken at the largest (near the critical batch the optimal LR stops rising, and where that is was not
    measured).

    With ``noise`` (the measured gradient noise scale), the batch enters through the critical-batch form
    :func:`batch_lr_factor` instead, at the noise scale of each cell's tokens, and the fitted law is
    ``log2 lr* = c + a log2 S + factor(B, B_noise(D))`` with S = D / B the steps (:func:`lr_shift_critical`)."""
    if noise is not None:
        return lr_shift_critical(cells, reference, target, noise, confidence=confidence, optimizer=optimizer)
    finite = [c for c in cells if math.isfinite(c.optimum.value)]
    ok = [c for c in finite if c.optimum.edge is None]  # an optimum on its scan's edge is a bound, not a value
    names = [k for k, v in (("D", [c.tokens for c in ok]), ("B", [c.batch_tokens for c in ok])) if len(set(v)) >= 2]
    if not names or len(ok) < len(names) + 2:
        raise ValueError(f"a law of the optimal LR in {' and '.join(names) or 'D or B'} needs {len(names) + 2} or "
                         f"more cells with a finite optimum inside their LR scan, the stage has {len(ok)}")
    cols = {"D": np.log2([c.tokens for c in ok]), "B": np.log2([c.batch_tokens for c in ok])}
    b_max = max(c.batch_tokens for c in ok)
    clamped = "B" in names and target[1] > b_max * (1 + 1e-9)
    if clamped:  # above the batches measured the optimal LR may have stopped rising: not extrapolated
        target = (target[0], b_max)
    X = np.column_stack([np.ones(len(ok))] + [cols[k] for k in names])
    pinv = np.linalg.pinv(X)
    values = np.asarray([c.optimum.value for c in ok])
    delta = np.asarray([0.0] + [math.log2(t / r) for k, t, r in (("D", target[0], reference[0]),
                                                                   ("B", target[1], reference[1])) if k in names])
    beta = pinv @ values
    draws = _draw_matrix([c.optimum for c in ok], _N_DRAWS) @ pinv.T  # (draws, 1 + vars)
    tail = 50 * (1 - confidence)
    shift = float(delta @ beta)
    lo, hi = np.percentile(draws @ delta, [tail, 100 - tail])
    exps = {k: (float(beta[j + 1]), *map(float, np.percentile(draws[:, j + 1], [tail, 100 - tail])))
            for j, k in enumerate(names)}
    fit = fit_log_linear({k: [2.0 ** x for x in cols[k]] for k in names}, [2.0 ** v for v in values],
                         confidence=confidence, y_name="lr*")
    law = "lr* ∝ " + " ".join(f"{k}^{a:+.3f} ({100 * confidence:.0f}% {lo_:+.2f} .. {hi_:+.2f})"
                              for k, (a, lo_, hi_) in exps.items())
    unswept = [k for k in ("D", "B") if k not in names]
    source = (f"measured: the law {law}, fitted on {len(ok)} LR scans at the base width, from D {reference[0]:.3g}, "
              f"B {reference[1]:.3g} tokens to D {target[0]:.3g}, B {target[1]:.3g}")
    if unswept:
        source += f"; {', '.join(unswept)} not varied, so not moved"
    if clamped:
        source += (f"; the batch law is not extrapolated past the largest batch measured ({b_max:.3g} tokens): the "
                   "optimal LR stops rising with the batch near the critical batch (McCandlish et al. 2018, 'An "
                   "Empirical Model of Large-Batch Training'; Li et al. 2024, 'Surge Phenomenon in Optimal "
                   "Learning Rate and Batch Size Scaling'), and the proxies do not say where that is; add larger "
                   "horizon.batches to measure it")
    if len(finite) > len(ok):
        source += (f"; {len(finite) - len(ok)} cell(s) left out: their optimum is on the edge of their LR scan "
                   "(grow verify.max_extend)")
    return LRShift(shift, (float(min(lo, shift)), float(max(hi, shift))), law, exps, len(ok), source, fit)


def lr_shift_critical(cells: Sequence[Cell], reference: tuple[float, float], target: tuple[float, float],
                      noise: NoiseScaleLaw, *, confidence: float = 0.9, optimizer: str = "adamw") -> LRShift:
    """The LR shift from ``reference`` to ``target`` (tokens D, tokens per step B) under the law
    ``log2 lr* = c + a log2 S + factor(B, B_noise(D))``: the steps S = D / B carry the horizon (Bjorck et al. 2024
    measured theirs at a fixed batch, where D is proportional to S), and the batch acts through the measured noise
    scale (:func:`batch_lr_factor`): the square-root rule well below the critical batch, saturating near it. Only
    ``c`` and ``a`` are fitted to the cells' optima; the interval draws both the optima and the noise-scale law.
    The free log-linear law's batch exponent is reported beside it as a check."""
    finite = [c for c in cells if math.isfinite(c.optimum.value)]
    ok = [c for c in finite if c.optimum.edge is None]
    steps = np.log2([c.tokens / c.batch_tokens for c in ok])
    vary = len(set(np.round(steps, 9).tolist())) >= 2
    need = 3 if vary else 2
    if len(ok) < need:
        raise ValueError(f"a law of the optimal LR over the steps needs {need} or more cells with a finite optimum "
                         f"inside their LR scan, the stage has {len(ok)}")
    rule = _batch_rule(optimizer)
    rng = np.random.default_rng(1)
    d_all = [c.tokens for c in ok] + [reference[0], target[0]]
    bn = noise.draws(d_all, _N_DRAWS, rng)  # (draws, cells + 2), log2
    bn_point = np.asarray([noise.log2_at(d) for d in d_all])
    b_all = np.asarray([c.batch_tokens for c in ok] + [reference[1], target[1]])
    f_point = batch_lr_factor(b_all, 2.0 ** bn_point, rule)
    f_draws = batch_lr_factor(b_all[None, :], 2.0 ** bn, rule)
    X = np.column_stack([np.ones(len(ok))] + ([steps] if vary else []))
    pinv = np.linalg.pinv(X)
    values = np.asarray([c.optimum.value for c in ok])
    ds = math.log2((target[0] / target[1]) / (reference[0] / reference[1]))
    coef = pinv @ (values - f_point[:-2])
    a = float(coef[1]) if vary else 0.0
    shift = a * ds + float(f_point[-1] - f_point[-2])
    y_draws = _draw_matrix([c.optimum for c in ok], _N_DRAWS) - f_draws[:, :-2]
    coef_draws = y_draws @ pinv.T
    a_draws = coef_draws[:, 1] if vary else np.zeros(_N_DRAWS)
    shift_draws = a_draws * ds + f_draws[:, -1] - f_draws[:, -2]
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(shift_draws, [tail, 100 - tail])
    a_lo, a_hi = np.percentile(a_draws, [tail, 100 - tail])
    bn_t = 2.0 ** bn_point[-1]
    bn_lo, bn_hi = 2.0 ** np.percentile(bn[:, -1], [tail, 100 - tail])
    form = ("1 / ((sqrt(Bn/B) + sqrt(B/Bn)) / 2), Li et al. 2024" if rule == "sqrt"
            else "1 / (1 + Bn/B), McCandlish et al. 2018")
    law = f"lr* ∝ S^{a:+.3f} x factor(B, B_noise(D))"
    exps = {"S": (a, float(a_lo), float(a_hi))} if vary else {}
    far = target[0] / max(d for d, _ in noise.points)
    source = (f"measured: the law {law} ({100 * confidence:.0f}% S^{a_lo:+.2f} .. {a_hi:+.2f}; steps S = D / B; "
              f"batch factor {form}), fitted on {len(ok)} LR scans at the base width; {noise.line()}: "
              f"{noise.at(reference[0]):.3g} tokens at the proxies' D {reference[0]:.3g}, {bn_t:.3g} "
              f"({100 * confidence:.0f}% {bn_lo:.3g} .. {bn_hi:.3g}) at the target's D {target[0]:.3g}"
              + (f" (extrapolated {far:.3g}x past the longest probe)" if far > 1 + 1e-9 else "")
              + f"; steps {ds:+.2f} doublings: {a * ds:+.2f} octaves; batch {reference[1]:.3g} -> {target[1]:.3g} "
              f"tokens: {float(f_point[-1] - f_point[-2]):+.2f} octaves")
    if not vary:
        source += "; the steps were not varied, so the horizon does not move the LR"
    if target[1] > bn_t:
        source += (f"; the target's batch is above its critical batch ({bn_t:.3g} tokens): past it the optimal LR "
                   "falls, and each step buys less")
    try:
        free = lr_shift(cells, reference, target, confidence=confidence)
        if "B" in free.exponents:
            b, b_lo, b_hi = free.exponents["B"]
            source += f"; check: the free law's batch exponent is {b:+.2f} ({100 * confidence:.0f}% {b_lo:+.2f} .. {b_hi:+.2f})"
    except ValueError:
        pass
    if len(finite) > len(ok):
        source += (f"; {len(finite) - len(ok)} cell(s) left out: their optimum is on the edge of their LR scan "
                   "(grow verify.max_extend)")
    return LRShift(shift, (float(min(lo, shift)), float(max(hi, shift))), law, exps, len(ok), source)


def prior_lr_shift(reference: tuple[float, float], target: tuple[float, float], optimizer: str) -> LRShift:
    """The octaves the published rules move the LR from ``reference`` (D0, B0) to ``target`` (D, B): Bjorck et al.
    2024's horizon rule (``lr ∝ D^-0.32`` at fixed batch) and the batch rule of the optimizer (square root for Adam,
    Malladi et al. 2022; linear for SGD, Goyal et al. 2017). Not measured; no interval."""
    dd, db = math.log2(target[0] / reference[0]), math.log2(target[1] / reference[1])
    # the optimizer's batch rule where the rules table names one; square root (Adam's) otherwise
    b_exp = 1.0 if BATCH_LR_OPTIMIZERS.get(optimizer.strip().lower().replace("_", "-")) == "linear" else 0.5
    shift = TOKEN_HORIZON_EXP * dd + b_exp * db
    rule = "linear (Goyal et al. 2017)" if b_exp == 1.0 else "square-root (Malladi et al. 2022)"
    source = (f"not measured: the published rules, lr ∝ D^{TOKEN_HORIZON_EXP} at fixed batch (Bjorck et al. 2024, "
              f"measured on 50M-7B LLaMA-style models) and the {rule} batch rule, valid below the critical batch: "
              f"{TOKEN_HORIZON_EXP * dd:+.2f} octaves for the tokens ({2 ** dd:.3g}x), {b_exp * db:+.2f} for the "
              f"batch ({2 ** db:.3g}x)")
    return LRShift(shift, (shift, shift), f"lr* ∝ D^{TOKEN_HORIZON_EXP} B^{b_exp:g}",
                   {"D": (TOKEN_HORIZON_EXP,) * 3, "B": (b_exp,) * 3}, 0, source)


@dataclass(frozen=True)
class BatchOptimum(Record):
    """The optimal batch (tokens per step) at one horizon: ``value`` None when the best batch is an end of the
    batches tried (``edge`` says which); ``interval`` in tokens."""

    tokens: float
    value: float | None
    interval: tuple[float, float] | None
    edge: str | None
    batches: tuple[float, ...]
    losses: tuple[float, ...]


def batch_optima(cells: Sequence[Cell], *, confidence: float = 0.9, seed: int = 0) -> list[BatchOptimum]:
    """Per horizon with 3 or more batches: the minimum over log2 B of a parabola through the cells' best measured
    losses, with a bootstrap interval (each loss drawn from its standard error)."""
    rng = np.random.default_rng(seed)
    out = []
    tail = 50 * (1 - confidence)
    for d in sorted({c.tokens for c in cells}):
        row = sorted((c for c in cells if c.tokens == d and math.isfinite(c.optimum.best_grid_loss)),
                     key=lambda c: c.batch_tokens)
        if len(row) < 3:
            continue
        x = np.log2([c.batch_tokens for c in row])
        y = np.asarray([c.optimum.best_grid_loss for c in row])
        se = np.asarray([loss_se(c.optimum) for c in row])
        se = np.where(np.isfinite(se), se, 0.0)
        best = int(np.argmin(y))
        edge = "low" if best == 0 else "high" if best == len(row) - 1 else None
        value = interval = None
        if edge is None:
            xs = _parabola_minima(x, y[None, :])
            ys = y[None, :] + rng.normal(size=(_N_DRAWS, len(y))) * se[None, :]
            draws = _parabola_minima(x, ys)
            draws = np.clip(draws[np.isfinite(draws)], x[0], x[-1])
            if math.isfinite(xs[0]) and len(draws):
                value = float(2.0 ** xs[0])
                lo, hi = np.percentile(draws, [tail, 100 - tail])
                interval = (float(2.0 ** min(lo, xs[0])), float(2.0 ** max(hi, xs[0])))
        out.append(BatchOptimum(d, value, interval, edge, tuple(float(c.batch_tokens) for c in row),
                                tuple(map(float, y))))
    return out


def _parabola_minima(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The minimum of the least-squares parabola through each row of ``ys`` against ``x``; nan where not convex."""
    V = np.column_stack([np.ones_like(x), x, x ** 2])
    coef = ys @ np.linalg.pinv(V).T  # (rows, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = -coef[:, 1] / (2 * coef[:, 2])
    return np.where(coef[:, 2] > 0, m, np.nan)


def batch_answer(optima: Sequence[BatchOptimum], target_tokens: float, proxy_tokens: float,
                 proxy_batch: float, confidence: float = 0.9) -> TargetSetting:
    """The batch (tokens per step) the target should use: ``B_opt = k D^beta`` through the measured optima when 2
    or more horizons have one inside their batches; else the prior (Power Lines' exponent from the one measured
    optimum, or Step Law's formula), named and marked not measured."""
    inner = [o for o in optima if o.value is not None]
    edges = [o for o in optima if o.edge is not None]
    if len(inner) >= 2:
        x = np.log2([o.tokens for o in inner])
        y = np.log2([o.value for o in inner])
        half = np.log2([o.interval[1] / o.interval[0] for o in inner]) / 2  # ~ 1.64 sigma at 90%
        rng = np.random.default_rng(0)
        draws = y[None, :] + rng.normal(size=(_N_DRAWS, len(y))) * (half / 1.645)[None, :]
        X = np.column_stack([np.ones_like(x), x])
        coef = np.linalg.lstsq(X, y, rcond=None)[0]
        dcoef = draws @ np.linalg.pinv(X).T
        at = math.log2(target_tokens)
        value = float(coef[0] + coef[1] * at)
        tail = 50 * (1 - confidence)
        lo, hi = np.percentile(dcoef[:, 0] + dcoef[:, 1] * at, [tail, 100 - tail])
        return TargetSetting("batch_tokens", 2.0 ** value, (float(2.0 ** min(lo, value)), float(2.0 ** max(hi, value))),
                             True,
                             f"measured: B_opt ∝ D^{coef[1]:.3f} through the optimal batches of {len(inner)} horizons "
                             f"at the base width (Power Lines' exponent: {POWER_LINES_BOPT_EXP}, Step Law's: "
                             f"{STEPLAW_BATCH_D_EXP})", "tokens")
    if len(inner) == 1:
        o = inner[0]
        value = o.value * (target_tokens / o.tokens) ** POWER_LINES_BOPT_EXP
        return TargetSetting("batch_tokens", value, None, False,
                             f"partly measured: the optimal batch at one horizon ({o.value:.3g} tokens at D "
                             f"{o.tokens:.3g}), carried by Power Lines' B_opt ∝ D^{POWER_LINES_BOPT_EXP} (Bergsma et "
                             "al. 2025, 111M-3.3B parameters); not measured across horizons", "tokens")
    value = steplaw_batch_tokens(target_tokens)
    why = ""
    if edges:
        lows = sum(o.edge == "low" for o in edges)
        why = (f"; at {lows} of {len(edges)} horizons the smallest batch tried was the best, at "
               f"{len(edges) - lows} the largest: the optimum is outside the batches tried")
    return TargetSetting("batch_tokens", value, None, False,
                         f"not measured: Step Law's B* = {STEPLAW_BATCH_COEF} D^{STEPLAW_BATCH_D_EXP} tokens (Li et al. "
                         f"2025, dense LLMs up to 1B parameters and 100B tokens){why}", "tokens")


@dataclass(frozen=True)
class WeightDecayCheck(Record):
    """The AdamW timescale carried from one horizon to another and checked there.

    ``tau``: ``B / (lr wd D)`` at the tuned horizon; ``carried``: the wd that keeps that tau at the check horizon
    (at its own optimal LR); ``measured``: the wd optimum measured there (log2 units, interval); ``unchanged``: the
    tuned wd carried as is."""

    tuned_at: float
    log2_wd: float
    log2_wd_interval: tuple[float, float]
    tau: float
    check_at: float | None = None
    carried: float | None = None
    measured: float | None = None
    measured_interval: tuple[float, float] | None = None
    unchanged: float | None = None
    verdict: str = ""
    tuned_edge: str | None = None  # "low"/"high": the tuned wd is an end of its grid (a bound, not an optimum)


def timescale_wd(tau: float, lr: float, batch_tokens: float, tokens: float) -> float:
    """log2 of the weight decay that gives AdamW timescale ``tau`` (fraction of training) at ``lr``, B, D:
    ``wd = B / (lr tau D)``."""
    return math.log2(batch_tokens / (lr * tau * tokens))


def check_timescale(tuned: Optimum, tuned_cell: Cell, lr: float, check: Optimum | None = None,
                    check_cell: Cell | None = None, check_lr: float | None = None) -> WeightDecayCheck:
    """tau from the wd optimum ``tuned`` (log2 wd) at ``tuned_cell`` trained at ``lr``; with ``check`` (the wd
    optimum at another horizon, trained at ``check_lr``): the carried wd against the measured one."""
    tau = tuned_cell.batch_tokens / (lr * 2.0 ** tuned.value * tuned_cell.tokens)
    out = WeightDecayCheck(tuned_cell.tokens, tuned.value, tuned.interval, tau, tuned_edge=tuned.edge)
    if check is None or check_cell is None or check_lr is None or not math.isfinite(check.value):
        return out
    carried = timescale_wd(tau, check_lr, check_cell.batch_tokens, check_cell.tokens)
    lo, hi = check.interval
    inside = lo <= carried <= hi
    unchanged_inside = lo <= tuned.value <= hi
    verdict = (f"the timescale-carried wd (log2 {carried:.2f}) is {'inside' if inside else 'outside'} the measured "
               f"optimum's interval (log2 {check.value:.2f}, 90% {lo:.2f} .. {hi:.2f}); the unchanged wd (log2 "
               f"{tuned.value:.2f}) is {'inside' if unchanged_inside else 'outside'}")
    if check.edge:
        verdict += f" (the measured optimum is on the {check.edge} edge of the weight-decay grid: a bound)"
    return WeightDecayCheck(tuned_cell.tokens, tuned.value, tuned.interval, tau, check_cell.tokens, carried,
                            check.value, check.interval, tuned.value, verdict, tuned.edge)


@dataclass(frozen=True)
class HorizonStage(Record):
    """What stage 3 measured: the cells (tokens, batch tokens, LR optimum), the optimal batch per horizon, the
    weight-decay check, and the proxies' reference (tokens, batch tokens)."""

    reference: tuple[float, float]
    cells: tuple[Cell, ...]
    batch_optima: tuple[Any, ...]
    weight_decay: WeightDecayCheck | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    noise: NoiseScaleLaw | None = None

    def fields_for_dict(self) -> dict[str, Any]:
        out = super().fields_for_dict()
        out["cells"] = [{"tokens": c.tokens, "batch_tokens": c.batch_tokens, "log2_lr": c.optimum.value,
                         "interval": list(c.optimum.interval), "best_loss": c.optimum.best_grid_loss,
                         "edge": c.optimum.edge} for c in self.cells]
        return out

"""Laws across scale: fit a law on the proxies, read off the target.

Fits across scale, all deterministic, numpy only:

* :func:`fit_power_law` -- ``y = c * x^alpha``, by ordinary least squares on
  ``log y = log c + alpha log x`` (natural logs). Prediction intervals are the
  textbook OLS ones, computed in log space with a Student t quantile.
* :func:`fit_log2_hp` -- the "optimal HP vs size" law ``log2 hp* = a + b log2 x``
  (e.g. ``log2 lr* = a + b log2 N``): the same fit with base-2 logs, taking the
  optimal HP already in log2 units (as the sweep's ``log2_`` axes report it).
* :func:`fit_log_linear` -- several variables at once,
  ``log y = log c + sum_k alpha_k log X_k`` (e.g. optimal LR vs params N,
  tokens D and batch B).
* :func:`fit_saturating_power_law` -- ``L(N) = a N^b + c`` with ``b < 0`` and
  ``0 <= c < min L``, the law of Mu-scaling (Yao & Wang 2023, "Research without
  Re-search: Maximal Update Parametrization Yields Accurate Loss Prediction
  across Scales"); intervals from a residual bootstrap.
* :func:`fit_chinchilla` -- ``L(N, D) = E + A / N^alpha + B / D^beta``
  (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
  approach 3): Huber loss in log space, minimised from a grid of initialisations
  (batched Levenberg-Marquardt / IRLS in numpy instead of the paper's L-BFGS).

:func:`t_quantile` is the Student t quantile used by the intervals,
implemented here (no scipy): bisection on the t CDF, written with the
regularized incomplete beta function evaluated by its continued fraction
(modified Lentz's method, as in Press et al., "Numerical Recipes", sec. 6.4).

Every fitted law has ``predict``, ``interval`` (where it makes sense),
``to_dict()`` (JSON-safe) and a readable ``str()``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ChinchillaLaw",
    "LogLinearLaw",
    "PowerLaw",
    "SaturatingLaw",
    "fit_chinchilla",
    "fit_log2_hp",
    "fit_log_linear",
    "fit_power_law",
    "fit_saturating_power_law",
    "t_cdf",
    "t_quantile",
]

ArrayLike = float | Sequence[float] | np.ndarray


# ---------------------------------------------------------------------------
# Student t distribution (no scipy)
# ---------------------------------------------------------------------------

_FPMIN = 1e-300
_EPS = 1e-15


def _lentz_step(aa: float, c: float, d: float) -> tuple[float, float, float]:
    """One modified-Lentz update with coefficient ``aa``: returns (c, d, factor to multiply h by)."""
    d = 1.0 + aa * d
    if abs(d) < _FPMIN:
        d = _FPMIN
    c = 1.0 + aa / c
    if abs(c) < _FPMIN:
        c = _FPMIN
    d = 1.0 / d
    return c, d, d * c


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method).

    Press et al., "Numerical Recipes" (3rd ed.), eq. 6.4.5 / routine ``betacf``.
    Converges fast for ``x < (a + 1) / (a + b + 2)``.
    """
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _FPMIN:
        d = _FPMIN
    d = 1.0 / d
    h = d
    max_iter = 10_000 + int(20 * math.sqrt(max(a, b)))
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        c, d, factor = _lentz_step(m * (b - m) * x / ((qam + m2) * (a + m2)), c, d)  # even step
        h *= factor
        c, d, delta = _lentz_step(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)), c, d)  # odd step
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)``, for ``a, b > 0`` and ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """``P(T > t)`` for ``t >= 0``: ``0.5 * I_{df / (df + t^2)}(df / 2, 1 / 2)``."""
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom (``df > 0``, need not be an integer).

    ``P(T <= t) = 1 - 0.5 I_{df / (df + t^2)}(df / 2, 1 / 2)`` for ``t >= 0`` (symmetric for
    ``t < 0``), with the regularized incomplete beta function ``I`` from its continued fraction.
    """
    if not df > 0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    tail = _t_upper_tail(abs(t), df)
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)
def _t_quantile_cached(p: float, df: float) -> float:
    tail = 1.0 - p  # p > 0.5 here, so the target tail is in (0, 0.5)
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:  # bracket: tail(lo) >= target > tail(hi)
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * hi:
            break
    return 0.5 * (lo + hi)


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution: the ``t`` with ``P(T <= t) = p``.

    Method: bisection (to relative precision 1e-14) on the upper tail
    ``P(T > t) = 0.5 I_{df/(df+t^2)}(df/2, 1/2)``, the regularized incomplete beta
    function evaluated with its continued fraction (modified Lentz, Press et al.,
    "Numerical Recipes", sec. 6.4). Working with the tail (not ``1 - CDF``) keeps
    full relative precision far in the tails. ``df`` need not be an integer.
    Results are cached.

    >>> round(t_quantile(0.975, 10), 6)
    2.228139
    """
    p, df = float(p), float(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if not df > 0 or math.isnan(df):
        raise ValueError(f"t_quantile needs df > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -_t_quantile_cached(1.0 - p, df)
    return _t_quantile_cached(p, df)


def _two_sided_t(confidence: float, df: int) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return t_quantile(0.5 + 0.5 * confidence, df)


# ---------------------------------------------------------------------------
# Input checks and the OLS core
# ---------------------------------------------------------------------------


def _vector(v: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {float(a[i])!r} is not finite")
    return a


def _positive(v: ArrayLike, name: str, why: str = "a power law is fitted on logs") -> np.ndarray:
    a = _vector(v, name)
    bad = np.flatnonzero(a <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {float(a[i])!r} must be > 0 ({why})")
    return a


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError("inputs must have the same length, got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
    return next(iter(lengths.values()))


def _need_points(n: int, p: int, what: str) -> None:
    if n - p <= 0:
        raise ValueError(
            f"{what} has {p} parameters and needs at least {p + 1} points (n - p >= 1) to estimate "
            f"its error and intervals; got {n} point{'s' if n != 1 else ''}"
        )


def _weights(weights: ArrayLike | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = _positive(weights, "weights", "weights are relative precisions")
    if len(w) != n:
        raise ValueError(f"weights must have one entry per point ({n}), got {len(w)}")
    return w / w.mean()


@dataclass(frozen=True)
class _OLS:
    coef: np.ndarray  # (p,)
    cov: np.ndarray  # (p, p) covariance of coef: sigma^2 (X^T W X)^-1
    sigma: float  # residual std (weight-1 point)
    df: int


def _ols(X: np.ndarray, z: np.ndarray, w: np.ndarray, names: Sequence[str]) -> _OLS:
    """Weighted least squares ``z ~ X coef`` through a QR decomposition of ``sqrt(W) X``.

    ``sigma^2 = sum_i w_i r_i^2 / (n - p)`` and ``cov(coef) = sigma^2 (X^T W X)^{-1}``.
    """
    n, p = X.shape
    sw = np.sqrt(w)
    q, r = np.linalg.qr(X * sw[:, None])
    diag = np.abs(np.diag(r))
    scale = np.linalg.norm(X * sw[:, None], axis=0)
    degenerate = [names[j] for j in range(p) if diag[j] <= 1e-10 * max(scale[j], 1e-300)]
    if degenerate:
        raise ValueError(
            "the design is degenerate (a variable is constant or collinear with the others: "
            + ", ".join(degenerate) + "); vary each variable independently across the points"
        )
    coef = np.linalg.solve(r, q.T @ (z * sw))
    resid = z - X @ coef
    df = n - p
    sigma = math.sqrt(float(np.sum(w * resid**2)) / df)
    r_inv = np.linalg.solve(r, np.eye(p))
    cov = sigma**2 * (r_inv @ r_inv.T)
    return _OLS(coef=coef, cov=cov, sigma=sigma, df=df)


def _out(v: np.ndarray, scalar: bool) -> Any:
    return float(v.reshape(-1)[0]) if scalar else v


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}"


# ---------------------------------------------------------------------------
# Power law y = c x^alpha (and log2 hp* = a + b log2 x)
# ---------------------------------------------------------------------------


@dataclass
class PowerLaw:
    """``y = coefficient * x^exponent``, fitted by OLS on ``log_B y = log_B c + alpha log_B x``.

    ``log_base`` B is ``e`` for :func:`fit_power_law` and 2 for :func:`fit_log2_hp`
    (where the law reads ``log2 hp* = a + b log2 x`` with ``a = intercept``, ``b = exponent``).
    The exponent does not depend on the base; the intercept, its error, the residual
    std and ``cov`` are in base-B log units.

    Prediction interval at ``x0`` (OLS, in log space), with ``v = (1, log_B x0)``:
    ``log_B y0 in predict_log(x0) +- t_{(1+conf)/2, n-2} sqrt(s^2 + v^T cov v)``,
    where ``s`` is the residual std and ``cov`` the covariance of (intercept, exponent).
    """

    coefficient: float
    exponent: float
    se_intercept: float
    se_exponent: float
    resid_std: float
    n: int
    cov: list[list[float]]
    confidence: float = 0.9
    log_base: float = math.e
    x_name: str = "x"
    y_name: str = "y"

    # -- derived ----------------------------------------------------------
    @property
    def intercept(self) -> float:
        """``log_B coefficient`` (``a`` in ``log2 hp* = a + b log2 x``)."""
        return math.log(self.coefficient) / math.log(self.log_base)

    @property
    def alpha(self) -> float:
        return self.exponent

    @property
    def a(self) -> float:
        return self.intercept

    @property
    def b(self) -> float:
        return self.exponent

    @property
    def df(self) -> int:
        return self.n - 2

    def _log(self, x: ArrayLike) -> tuple[np.ndarray, bool]:
        scalar = np.ndim(x) == 0
        xs = _positive(x, self.x_name)
        return np.log(xs) / math.log(self.log_base), scalar

    # -- prediction -------------------------------------------------------
    def predict_log(self, x: ArrayLike) -> Any:
        """``log_B y`` at ``x`` (for :func:`fit_log2_hp`: the predicted log2 HP)."""
        lx, scalar = self._log(x)
        return _out(self.intercept + self.exponent * lx, scalar)

    def predict(self, x: ArrayLike) -> Any:
        """``y = coefficient * x^exponent`` (a float for a scalar ``x``, else an array)."""
        lx, scalar = self._log(x)
        return _out(self.log_base ** (self.intercept + self.exponent * lx), scalar)

    def log_interval(self, x: ArrayLike, confidence: float | None = None) -> tuple[Any, Any]:
        """Prediction interval of ``log_B y`` at ``x`` (OLS, Student t with ``n - 2`` df)."""
        lx, scalar = self._log(x)
        t = _two_sided_t(self.confidence if confidence is None else confidence, self.df)
        cov = np.asarray(self.cov)
        var_mean = cov[0, 0] + 2.0 * cov[0, 1] * lx + cov[1, 1] * lx**2
        half = t * np.sqrt(self.resid_std**2 + np.maximum(var_mean, 0.0))
        mid = self.intercept + self.exponent * lx
        return _out(mid - half, scalar), _out(mid + half, scalar)

    def interval(self, x: ArrayLike, confidence: float | None = None) -> tuple[Any, Any]:
        """Prediction interval of ``y`` at ``x``: :meth:`log_interval` mapped back with ``B ** .``."""
        lo, hi = self.log_interval(x, confidence)
        lo, hi = self.log_base ** np.asarray(lo), self.log_base ** np.asarray(hi)
        return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)

    def exponent_interval(self, confidence: float | None = None) -> tuple[float, float]:
        """Confidence interval of the exponent: ``alpha +- t_{(1+conf)/2, n-2} se(alpha)``."""
        t = _two_sided_t(self.confidence if confidence is None else confidence, self.df)
        return self.exponent - t * self.se_exponent, self.exponent + t * self.se_exponent

    # -- output -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.exponent_interval()
        return {
            "kind": "power_law",
            "formula": f"{self.y_name} = c * {self.x_name}^alpha",
            "coefficient": self.coefficient,
            "exponent": self.exponent,
            "intercept": self.intercept,
            "log_base": self.log_base,
            "se_intercept": self.se_intercept,
            "se_exponent": self.se_exponent,
            "exponent_interval": [lo, hi],
            "resid_std": self.resid_std,
            "n": self.n,
            "confidence": self.confidence,
            "cov": [list(map(float, row)) for row in self.cov],
            "x_name": self.x_name,
            "y_name": self.y_name,
        }

    def __str__(self) -> str:
        lo, hi = self.exponent_interval()
        pm = f"(±{_fmt(0.5 * (hi - lo), 2)})"
        if self.log_base == 2.0:
            sign = "-" if self.exponent < 0 else "+"
            return (f"log2 {self.y_name} = {self.intercept:.4g} {sign} {_fmt(abs(self.exponent))} "
                    f"* log2 {self.x_name} {pm}")
        return f"{self.y_name} = {self.coefficient:.4g} * {self.x_name}^{_fmt(self.exponent)} {pm}"


def _fit_line(lx: np.ndarray, ly: np.ndarray, w: np.ndarray, *, confidence: float, log_base: float,
              x_name: str, y_name: str) -> PowerLaw:
    n = _same_length(x=lx, y=ly, weights=w)
    _need_points(n, 2, "a power law")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    X = np.column_stack([np.ones(n), lx])
    fit = _ols(X, ly, w, ["intercept", f"log {x_name}"])
    return PowerLaw(
        coefficient=float(log_base ** fit.coef[0]),
        exponent=float(fit.coef[1]),
        se_intercept=float(math.sqrt(fit.cov[0, 0])),
        se_exponent=float(math.sqrt(fit.cov[1, 1])),
        resid_std=fit.sigma,
        n=n,
        cov=fit.cov.tolist(),
        confidence=confidence,
        log_base=log_base,
        x_name=x_name,
        y_name=y_name,
    )


def fit_power_law(x: ArrayLike, y: ArrayLike, *, weights: ArrayLike | None = None, confidence: float = 0.9,
                  x_name: str = "x", y_name: str = "y") -> PowerLaw:
    """Fit ``y = c * x^alpha`` by (weighted) OLS on ``log y = log c + alpha log x`` (natural logs).

    ``x`` and ``y`` must be > 0 (a ValueError names the first offending index); at least
    3 points are needed (2 parameters + 1 degree of freedom for the error).
    ``weights`` are relative precisions (e.g. number of seeds averaged); they are
    normalised to mean 1, so intervals are for a new point of average weight.
    ``confidence`` is the default level of :meth:`PowerLaw.interval` and of the ``±``
    in ``str()``.
    """
    xs, ys = _positive(x, "x"), _positive(y, "y")
    n = _same_length(x=xs, y=ys)
    return _fit_line(np.log(xs), np.log(ys), _weights(weights, n), confidence=confidence, log_base=math.e,
                     x_name=x_name, y_name=y_name)


def fit_log2_hp(x: ArrayLike, log2_hp: ArrayLike, *, weights: ArrayLike | None = None, confidence: float = 0.9,
                x_name: str = "N", hp_name: str = "hp*") -> PowerLaw:
    """The "optimal HP vs size" law: OLS of ``log2 hp* = a + b log2 x``.

    ``log2_hp`` are optimal HPs already in log2 units (any sign); ``x`` (size: params,
    width, tokens...) must be > 0. Same machinery as :func:`fit_power_law` with base-2
    logs: ``law.a`` / ``law.b`` are the intercept and slope, ``law.predict_log(x)`` the
    predicted log2 HP, ``law.log_interval(x)`` its prediction interval (log2 units),
    ``law.predict(x)`` / ``law.interval(x)`` the same in HP units (``2 ** .``).
    """
    xs = _positive(x, "x")
    lh = _vector(log2_hp, "log2_hp")
    n = _same_length(x=xs, log2_hp=lh)
    return _fit_line(np.log2(xs), lh, _weights(weights, n), confidence=confidence, log_base=2.0,
                     x_name=x_name, y_name=hp_name)


# ---------------------------------------------------------------------------
# Log-linear law in several variables
# ---------------------------------------------------------------------------


@dataclass
class LogLinearLaw:
    """``y = coefficient * prod_k X_k^{alpha_k}``, fitted by OLS on ``log y = log c + sum_k alpha_k log X_k``.

    Prediction interval at ``X0`` (natural-log space), with ``v = (1, log X0_1, ..., log X0_K)``:
    ``log y0 in predict_log(X0) +- t_{(1+conf)/2, n-K-1} sqrt(s^2 + v^T cov v)``.
    ``cov`` is the covariance of ``(log c, alpha_1, ..., alpha_K)`` in the order of ``names``.
    """

    coefficient: float
    exponents: dict[str, float]
    se_log_coefficient: float
    se_exponents: dict[str, float]
    resid_std: float
    n: int
    cov: list[list[float]]
    names: tuple[str, ...]
    confidence: float = 0.9
    y_name: str = "y"

    @property
    def log_coefficient(self) -> float:
        return math.log(self.coefficient)

    @property
    def df(self) -> int:
        return self.n - len(self.names) - 1

    def _design(self, X: Mapping[str, ArrayLike]) -> tuple[np.ndarray, bool]:
        if not isinstance(X, Mapping):
            raise TypeError(f"predict a LogLinearLaw from a mapping {{name: value}} with keys {list(self.names)}")
        missing = [k for k in self.names if k not in X]
        if missing:
            raise ValueError(f"missing variable(s) {missing}; this law needs {list(self.names)}")
        scalar = all(np.ndim(X[k]) == 0 for k in self.names)
        cols = np.broadcast_arrays(*[np.log(_positive(X[k], k)) for k in self.names])
        return np.column_stack([np.ones(len(cols[0]))] + list(cols)), scalar

    def predict_log(self, X: Mapping[str, ArrayLike]) -> Any:
        """``log y`` at the point(s) ``X`` (extra keys are ignored)."""
        V, scalar = self._design(X)
        beta = np.array([self.log_coefficient] + [self.exponents[k] for k in self.names])
        return _out(V @ beta, scalar)

    def predict(self, X: Mapping[str, ArrayLike]) -> Any:
        """``y = c * prod_k X_k^alpha_k`` (a float when every value is scalar)."""
        v = np.exp(np.asarray(self.predict_log(X)))
        return float(v) if v.ndim == 0 else v

    def log_interval(self, X: Mapping[str, ArrayLike], confidence: float | None = None) -> tuple[Any, Any]:
        """Prediction interval of ``log y`` at ``X`` (OLS, Student t with ``n - K - 1`` df)."""
        V, scalar = self._design(X)
        t = _two_sided_t(self.confidence if confidence is None else confidence, self.df)
        beta = np.array([self.log_coefficient] + [self.exponents[k] for k in self.names])
        var_mean = np.einsum("ij,jk,ik->i", V, np.asarray(self.cov), V)
        half = t * np.sqrt(self.resid_std**2 + np.maximum(var_mean, 0.0))
        mid = V @ beta
        return _out(mid - half, scalar), _out(mid + half, scalar)

    def interval(self, X: Mapping[str, ArrayLike], confidence: float | None = None) -> tuple[Any, Any]:
        """Prediction interval of ``y`` at ``X``: :meth:`log_interval` mapped back with ``exp``."""
        lo, hi = self.log_interval(X, confidence)
        lo, hi = np.exp(np.asarray(lo)), np.exp(np.asarray(hi))
        return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)

    def exponent_interval(self, name: str, confidence: float | None = None) -> tuple[float, float]:
        """Confidence interval of ``alpha_name``: ``alpha +- t_{(1+conf)/2, n-K-1} se(alpha)``."""
        if name not in self.exponents:
            raise KeyError(f"no variable {name!r}; this law has {list(self.names)}")
        t = _two_sided_t(self.confidence if confidence is None else confidence, self.df)
        a, se = self.exponents[name], self.se_exponents[name]
        return a - t * se, a + t * se

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "log_linear",
            "formula": f"{self.y_name} = c * " + " * ".join(f"{k}^alpha_{k}" for k in self.names),
            "coefficient": self.coefficient,
            "exponents": dict(self.exponents),
            "se_log_coefficient": self.se_log_coefficient,
            "se_exponents": dict(self.se_exponents),
            "exponent_intervals": {k: list(self.exponent_interval(k)) for k in self.names},
            "resid_std": self.resid_std,
            "n": self.n,
            "confidence": self.confidence,
            "cov": [list(map(float, row)) for row in self.cov],
            "names": list(self.names),
            "y_name": self.y_name,
        }

    def __str__(self) -> str:
        terms = []
        for k in self.names:
            lo, hi = self.exponent_interval(k)
            terms.append(f"{k}^{_fmt(self.exponents[k])} (±{_fmt(0.5 * (hi - lo), 2)})")
        return f"{self.y_name} = {self.coefficient:.4g} * " + " * ".join(terms)


def fit_log_linear(X: Mapping[str, ArrayLike], y: ArrayLike, *, weights: ArrayLike | None = None,
                   confidence: float = 0.9, y_name: str = "y") -> LogLinearLaw:
    """Fit ``log y = log c + sum_k alpha_k log X_k`` by (weighted) OLS (natural logs).

    ``X`` maps each variable name (e.g. ``"N"``, ``"D"``, ``"B"``) to its values, one per
    point; all values and ``y`` must be > 0. At least ``K + 2`` points are needed for
    ``K`` variables, and the variables must not be collinear in log space (e.g. a sweep
    where ``D = 20 N`` everywhere cannot separate the N and D exponents).
    """
    if not isinstance(X, Mapping) or not X:
        raise ValueError("X must be a non-empty mapping {name: values}")
    names = tuple(str(k) for k in X)
    ys = _positive(y, "y")
    cols = {k: _positive(v, str(k)) for k, v in X.items()}
    n = _same_length(y=ys, **{str(k): v for k, v in cols.items()})
    p = len(names) + 1
    _need_points(n, p, f"a log-linear law in {len(names)} variable{'s' if len(names) > 1 else ''}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    design = np.column_stack([np.ones(n)] + [np.log(cols[k]) for k in X])
    fit = _ols(design, np.log(ys), _weights(weights, n), ["intercept"] + [f"log {k}" for k in names])
    se = np.sqrt(np.diag(fit.cov))
    return LogLinearLaw(
        coefficient=float(math.exp(fit.coef[0])),
        exponents={k: float(fit.coef[j + 1]) for j, k in enumerate(names)},
        se_log_coefficient=float(se[0]),
        se_exponents={k: float(se[j + 1]) for j, k in enumerate(names)},
        resid_std=fit.sigma,
        n=n,
        cov=fit.cov.tolist(),
        names=names,
        confidence=confidence,
        y_name=y_name,
    )


# ---------------------------------------------------------------------------
# Saturating power law L(N) = a N^b + c (Mu-scaling)
# ---------------------------------------------------------------------------


@dataclass
class SaturatingLaw:
    """``L(N) = a * N^b + c`` with ``b < 0`` and ``0 <= c < min L`` (the irreducible loss).

    The law Mu-scaling extrapolates with (Yao & Wang 2023, "Research without Re-search:
    Maximal Update Parametrization Yields Accurate Loss Prediction across Scales").
    ``b`` and ``c`` do not depend on the unit of ``N``; ``a`` does (``a' = a k^-b`` for
    ``N' = N / k``). ``log_a`` is kept for numerical safety with large ``N``.

    :meth:`interval` comes from a residual bootstrap drawn at fit time (see
    :func:`fit_saturating_power_law`).
    """

    a: float
    b: float
    c: float
    log_a: float
    resid_std: float  # sqrt(SSE / (n - 3)), loss units
    n: int
    confidence: float = 0.9
    n_bootstrap: int = 200
    seed: int = 0
    x_name: str = "N"
    y_name: str = "L"
    _boot: np.ndarray = field(default_factory=lambda: np.empty((0, 4)), repr=False, compare=False)

    def predict(self, n: ArrayLike) -> Any:
        """``a * n^b + c`` (a float for scalar ``n``)."""
        scalar = np.ndim(n) == 0
        ln = np.log(_positive(n, self.x_name))
        return _out(np.exp(self.log_a + self.b * ln) + self.c, scalar)

    def interval(self, n: ArrayLike, confidence: float | None = None, *, noise: bool = True) -> tuple[Any, Any]:
        """Percentile interval at ``n`` from the residual bootstrap.

        Each resample's curve ``a* n^b* + c*`` is evaluated at ``n``; with ``noise=True``
        (a prediction interval, for one new measured loss) a resampled residual is added
        to each, with ``noise=False`` it is the confidence band of the curve itself.
        """
        conf = self.confidence if confidence is None else confidence
        if not 0.0 < conf < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {conf}")
        if len(self._boot) == 0:
            raise ValueError("no bootstrap resamples: refit with n_bootstrap > 0 to get intervals")
        scalar = np.ndim(n) == 0
        ln = np.log(_positive(n, self.x_name))
        boot = self._boot
        curves = np.exp(boot[:, 0:1] + boot[:, 1:2] * ln[None, :]) + boot[:, 2:3]
        if noise:
            curves = curves + boot[:, 3:4]
        q = 0.5 * (1.0 - conf)
        lo, hi = np.quantile(curves, [q, 1.0 - q], axis=0)
        return _out(lo, scalar), _out(hi, scalar)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "saturating_power_law",
            "formula": f"{self.y_name} = a * {self.x_name}^b + c",
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "log_a": self.log_a,
            "resid_std": self.resid_std,
            "n": self.n,
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "x_name": self.x_name,
            "y_name": self.y_name,
        }

    def __str__(self) -> str:
        return f"{self.y_name} = {self.a:.4g} * {self.x_name}^{_fmt(self.b)} + {self.c:.4g}"


def _sat_profile(xc: np.ndarray, loss: np.ndarray, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each ``c`` in ``cs``: OLS of ``log(L - c) = la + b xc``, and the SSE of that curve in L.

    Returns ``(sse, la, b)`` arrays; ``sse`` is ``inf`` where ``b >= 0``.
    """
    z = np.log(loss[None, :] - cs[:, None])
    zm = z.mean(axis=1)
    b = (z - zm[:, None]) @ xc / float(xc @ xc)
    pred = np.exp(zm[:, None] + b[:, None] * xc[None, :]) + cs[:, None]
    sse = np.sum((pred - loss[None, :]) ** 2, axis=1)
    sse = np.where(b < 0, sse, np.inf)
    return sse, zm, b


_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _fit_saturating_core(ln: np.ndarray, loss: np.ndarray, grid: int = 200) -> tuple[float, float, float, float]:
    """``(log_a, b, c, sse)`` of ``L = exp(log_a + b ln) + c``; see :func:`fit_saturating_power_law`."""
    m = float(ln.mean())
    xc = ln - m  # centring makes the fit invariant to the unit of N and well conditioned
    lmin = float(loss.min())
    c_max = lmin * (1.0 - 1e-9)
    # grid over c: uniform, plus geometric in the gap (min L - c) to resolve c close to min L
    gaps = lmin * np.geomspace(1.0, 1e-6, grid // 2)
    cs = np.unique(np.concatenate([np.linspace(0.0, c_max, grid), lmin - gaps]))
    cs = cs[(cs >= 0.0) & (cs <= c_max)]
    sse, _, _ = _sat_profile(xc, loss, cs)
    k = int(np.argmin(sse))
    if not np.isfinite(sse[k]):
        raise ValueError("the loss does not decrease with N: no saturating power law a N^b + c with b < 0 fits")

    # golden-section refinement of c between the grid neighbours of the best point
    lo, hi = cs[max(k - 1, 0)], cs[min(k + 1, len(cs) - 1)]

    def f(c: float) -> float:
        return float(_sat_profile(xc, loss, np.array([c]))[0][0])

    x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    f1, f2 = f(x1), f(x2)
    for _ in range(40):
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - _GOLDEN * (hi - lo)
            f1 = f(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + _GOLDEN * (hi - lo)
            f2 = f(x2)
    best_c, best = (cs[k], float(sse[k]))
    for cc, ff in ((x1, f1), (x2, f2)):
        if ff < best:
            best_c, best = cc, ff
    s, zz, bb = _sat_profile(xc, loss, np.array([best_c]))
    theta = np.array([zz[0], bb[0], best_c])
    cur = float(s[0])

    # Levenberg-Marquardt on (log a_centred, b, c) for the squared error in L
    lam = 1e-3
    for _ in range(50):
        e = np.exp(theta[0] + theta[1] * xc)
        r = e + theta[2] - loss
        J = np.column_stack([e, e * xc, np.ones_like(xc)])
        g = J.T @ r
        H = J.T @ J
        improved = False
        for _ in range(10):
            step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), -g)
            cand = theta + step
            cand[2] = min(max(cand[2], 0.0), c_max)
            if cand[1] < 0:
                new = float(np.sum((np.exp(cand[0] + cand[1] * xc) + cand[2] - loss) ** 2))
                if new < cur:
                    rel = (cur - new) / max(cur, 1e-300)
                    theta, cur, lam = cand, new, max(lam / 10.0, 1e-12)
                    improved = True
                    break
            lam *= 10.0
        if not improved or rel < 1e-12:
            break
    return float(theta[0] - theta[1] * m), float(theta[1]), float(theta[2]), cur


def fit_saturating_power_law(n: ArrayLike, loss: ArrayLike, *, confidence: float = 0.9, n_bootstrap: int = 200,
                             seed: int = 0, x_name: str = "N", y_name: str = "L") -> SaturatingLaw:
    """Fit ``L(N) = a N^b + c`` (``b < 0``, ``0 <= c < min L``), as in Mu-scaling.

    Yao & Wang 2023, "Research without Re-search: Maximal Update Parametrization Yields
    Accurate Loss Prediction across Scales": train muP proxies at several sizes, fit
    this law to their losses, extrapolate to the target.

    Method (deterministic): ``c`` is profiled out -- for each ``c`` on a grid over
    ``[0, min L)`` (uniform plus geometric near ``min L``), ``log(L - c) = log a + b log N``
    is fitted by OLS and scored by its squared error in ``L``; the best grid point is
    refined by golden-section search, then ``(log a, b, c)`` by Levenberg-Marquardt on the
    squared error in ``L`` (``log N`` centred, so the fit is invariant to the unit of ``N``:
    params in millions or in counts give the same ``b``, ``c`` and predictions).

    Intervals: residual bootstrap with ``n_bootstrap`` resamples (``seed`` fixed): the
    centred residuals, inflated by ``sqrt(n / (n - 3))``, are resampled onto the fitted
    curve and the law refitted; each resample also draws one residual as the noise of a
    new measurement. ``n_bootstrap=0`` skips it (no :meth:`SaturatingLaw.interval`).
    At least 4 points are needed.
    """
    ns = _positive(n, "n", "N enters through log N")
    ls = _positive(loss, "loss", "the law's floor c is >= 0")
    npts = _same_length(n=ns, loss=ls)
    _need_points(npts, 3, "a saturating power law a N^b + c")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    ln = np.log(ns)
    log_a, b, c, sse = _fit_saturating_core(ln, ls)
    fitted = np.exp(log_a + b * ln) + c
    resid = ls - fitted
    boot_rows: list[tuple[float, float, float, float]] = []
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        pool = (resid - resid.mean()) * math.sqrt(npts / (npts - 3))
        for _ in range(n_bootstrap):
            idx = rng.integers(0, npts, size=npts + 1)
            y_star = fitted + pool[idx[:-1]]
            if np.any(y_star <= 0):
                continue
            try:
                la_b, b_b, c_b, _ = _fit_saturating_core(ln, y_star, grid=80)
            except ValueError:
                continue
            boot_rows.append((la_b, b_b, c_b, float(pool[idx[-1]])))
    return SaturatingLaw(
        a=float(math.exp(log_a)),
        b=b,
        c=c,
        log_a=log_a,
        resid_std=math.sqrt(sse / (npts - 3)),
        n=npts,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        x_name=x_name,
        y_name=y_name,
        _boot=np.array(boot_rows, dtype=float).reshape(-1, 4),
    )


# ---------------------------------------------------------------------------
# Chinchilla L(N, D) = E + A / N^alpha + B / D^beta
# ---------------------------------------------------------------------------


@dataclass
class ChinchillaLaw:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, "Training
    Compute-Optimal Large Language Models", eq. 2 / approach 3).

    ``objective`` is the Huber objective of the best start (sum over points, see
    :func:`fit_chinchilla`).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n: int
    objective: float
    huber_delta: float = 1e-3
    n_starts: int = 0
    x_names: tuple[str, str] = ("N", "D")

    def predict(self, n: ArrayLike, d: ArrayLike) -> Any:
        """``E + A / n^alpha + B / d^beta`` (numpy broadcasting; a float for scalars)."""
        scalar = np.ndim(n) == 0 and np.ndim(d) == 0
        nn = np.log(_positive(n, "n"))
        dd = np.log(_positive(d, "d"))
        v = self.E + np.exp(math.log(self.A) - self.alpha * nn) + np.exp(math.log(self.B) - self.beta * dd)
        return _out(v, scalar)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """Loss-minimising ``(N, D)`` under ``C = 6 N D`` (Hoffmann et al. 2022, eq. 4):
        ``N_opt = G (C/6)^{beta/(alpha+beta)}``, ``D_opt = G^-1 (C/6)^{alpha/(alpha+beta)}``,
        ``G = (alpha A / (beta B))^{1/(alpha+beta)}``. Needs ``alpha, beta > 0``."""
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError("compute_optimal needs alpha > 0 and beta > 0")
        if not flops > 0:
            raise ValueError(f"flops must be > 0, got {flops}")
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        c6 = flops / 6.0
        return g * c6 ** (self.beta / s), c6 ** (self.alpha / s) / g

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "chinchilla",
            "formula": "L = E + A / N^alpha + B / D^beta",
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
            "n": self.n,
            "objective": self.objective,
            "huber_delta": self.huber_delta,
            "n_starts": self.n_starts,
        }

    def __str__(self) -> str:
        nn, dd = self.x_names
        return (f"L({nn}, {dd}) = {self.E:.4g} + {self.A:.4g} / {nn}^{_fmt(self.alpha)} "
                f"+ {self.B:.4g} / {dd}^{_fmt(self.beta)}")


def _chinchilla_grid() -> np.ndarray:
    """The initialisation grid of Hoffmann et al. 2022 (appendix D.2), as rows ``(a, b, e, alpha, beta)``:
    ``alpha, beta in {0, 0.5, ..., 2}``, ``e in {-1, -0.5, ..., 1}``, ``a, b in {0, 5, ..., 25}``."""
    ab = np.arange(0.0, 25.0 + 1e-9, 5.0)
    e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
    ex = np.arange(0.0, 2.0 + 1e-9, 0.5)
    g = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
    return np.stack([x.reshape(-1) for x in g], axis=1)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _chinchilla_terms(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``LSE(a - alpha log N, b - beta log D, e)`` per start and point, and its softmax weights (K, n, 3)."""
    t = np.stack([theta[:, 0:1] - theta[:, 3:4] * ln[None, :],
                  theta[:, 1:2] - theta[:, 4:5] * ld[None, :],
                  np.broadcast_to(theta[:, 2:3], (len(theta), len(ln)))], axis=-1)
    mx = t.max(axis=-1, keepdims=True)
    ex = np.exp(t - mx)
    tot = ex.sum(axis=-1, keepdims=True)
    return (mx + np.log(tot))[..., 0], ex / tot


def _chinchilla_objective_np(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray, ll: np.ndarray,
                             delta: float) -> np.ndarray:
    """Huber objective (sum over points) for each row of ``theta`` = ``(a, b, e, alpha, beta)``."""
    lse, _ = _chinchilla_terms(theta, ln, ld)
    with np.errstate(invalid="ignore"):
        obj = _huber(lse - ll[None, :], delta).sum(axis=1)
    return np.where(np.isfinite(obj), obj, np.inf)


def _chinchilla_lm(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray, ll: np.ndarray, delta: float,
                   max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the Huber objective from every row of ``theta`` at once (batched, numpy).

    Levenberg-Marquardt on the iteratively reweighted least-squares majoriser of the Huber
    loss: with residuals ``r``, ``psi(r) = clip(r, -delta, delta)`` and IRLS weights
    ``w = min(1, delta / |r|)``, each step solves ``(J^T W J + lam diag(J^T W J)) s = -J^T psi``
    and is kept only if the objective decreases (else ``lam`` grows), so every start
    descends monotonically. ``J`` is the Jacobian of the LSE prediction: softmax weights
    ``(p1, p2, p3)`` give ``d/da = p1``, ``d/db = p2``, ``d/de = p3``,
    ``d/dalpha = -p1 log N``, ``d/dbeta = -p2 log D``.
    """
    th = theta.copy()
    k = len(th)
    obj = _chinchilla_objective_np(th, ln, ld, ll, delta)
    lam = np.full(k, 1e-3)
    active = np.isfinite(obj)
    eye = np.eye(5)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        t = th[idx]
        lse, p = _chinchilla_terms(t, ln, ld)
        r = lse - ll[None, :]
        psi = np.clip(r, -delta, delta)
        w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        J = np.stack([p[..., 0], p[..., 1], p[..., 2], -p[..., 0] * ln[None, :], -p[..., 1] * ld[None, :]], axis=-1)
        g = np.einsum("kni,kn->ki", J, psi)
        H = np.einsum("kni,kn,knj->kij", J, w, J)
        dg = np.einsum("kii->ki", H) + 1e-12
        A = H + lam[idx, None, None] * (dg[:, :, None] * eye[None])
        try:
            step = np.linalg.solve(A, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -g / dg
        cand = t + step
        new = _chinchilla_objective_np(cand, ln, ld, ll, delta)
        old = obj[idx]
        better = new < old
        acc = idx[better]
        th[acc] = cand[better]
        obj[acc] = new[better]
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
        lam[idx[~better]] *= 4.0
        # converged: tiny relative decrease on an accepted step, or a step nobody can take
        done = np.zeros(k, dtype=bool)
        done[acc] = (old[better] - new[better]) <= 1e-13 * np.maximum(old[better], 1e-300)
        done[idx[~better]] = lam[idx[~better]] > 1e12
        active &= ~done
    return th, obj


def fit_chinchilla(n: ArrayLike, d: ArrayLike, loss: ArrayLike, *, inits: Iterable[Sequence[float]] | None = None,
                   huber_delta: float = 1e-3, n_starts: int | None = 256, max_iter: int = 300) -> ChinchillaLaw:
    """Fit ``L(N, D) = E + A / N^alpha + B / D^beta`` as in Hoffmann et al. 2022 (approach 3).

    With ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, minimise over ``(a, b, e, alpha, beta)``
    ``sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )``
    (``delta = 1e-3``) from several initialisations and keep the best by objective.
    The paper minimises with L-BFGS; here every start is optimised at once by a batched
    Levenberg-Marquardt / IRLS descent written in numpy (same objective, monotone
    decrease; fast and thread-free for these small problems).

    ``inits`` are rows ``(a, b, e, alpha, beta)``; by default the paper's grid
    (``alpha, beta in {0, .5, .., 2}``, ``e in {-1, -.5, .., 1}``, ``a, b in {0, 5, .., 25}``;
    4500 starts). To keep the fit fast, the objective is evaluated at every start and only
    the ``n_starts`` best are optimised (``n_starts=None`` optimises all of them).
    At least 6 points are needed (5 parameters), and ``N`` and ``D`` must both vary.
    """
    ns = _positive(n, "n", "N enters through log N")
    ds = _positive(d, "d", "D enters through log D")
    ls = _positive(loss, "loss", "the fit is on log L")
    npts = _same_length(n=ns, d=ds, loss=ls)
    _need_points(npts, 5, "the Chinchilla law E + A/N^alpha + B/D^beta")
    if np.ptp(np.log(ns)) == 0 or np.ptp(np.log(ds)) == 0:
        raise ValueError("N and D must both vary across the points to fit the Chinchilla law")
    if not huber_delta > 0:
        raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
    ln, ld, ll = np.log(ns), np.log(ds), np.log(ls)

    starts = _chinchilla_grid() if inits is None else np.asarray([list(map(float, r)) for r in inits], dtype=float)
    if starts.ndim != 2 or starts.shape[1] != 5 or len(starts) == 0:
        raise ValueError("inits must be rows (a, b, e, alpha, beta)")
    obj0 = _chinchilla_objective_np(starts, ln, ld, ll, huber_delta)
    order = np.argsort(obj0, kind="stable")
    if n_starts is not None:
        if n_starts < 1:
            raise ValueError(f"n_starts must be >= 1 or None, got {n_starts}")
        order = order[:n_starts]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        theta, obj = _chinchilla_lm(starts[order], ln, ld, ll, huber_delta, max_iter)
    ok = np.isfinite(obj) & np.all(np.isfinite(theta), axis=1)
    if not ok.any():
        raise ValueError("the Chinchilla fit diverged from every initialisation")
    best = int(np.argmin(np.where(ok, obj, np.inf)))
    a, b, e, alpha, beta = (float(v) for v in theta[best])
    return ChinchillaLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, n=npts,
                         objective=float(obj[best]), huber_delta=huber_delta, n_starts=len(order))

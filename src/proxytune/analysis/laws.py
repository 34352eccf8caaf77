"""Laws across scale: fit a law on the proxies, read off the target.

Fits across scale, all deterministic, with numpy and scipy:

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
  across Scales"): ``c`` profiled on a grid and refined with
  ``scipy.optimize.minimize_scalar`` (bounded), then all three parameters by
  ``scipy.optimize.least_squares`` (trust-region reflective, with bounds);
  intervals from a residual bootstrap.
* :func:`fit_chinchilla` -- ``L(N, D) = E + A / N^alpha + B / D^beta``
  (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
  approach 3): Huber loss in log space, minimised as in the paper with L-BFGS
  (``scipy.optimize.minimize``, ``method="L-BFGS-B"``, analytic gradient) from the
  best-scoring points of the paper's grid of initialisations.

:func:`t_cdf` and :func:`t_quantile` (Student t, used by the intervals) are thin,
input-checking wrappers over ``scipy.special.stdtr`` / ``scipy.special.stdtrit``.

Every fitted law has ``predict``, ``interval`` (where it makes sense),
``to_dict()`` (JSON-safe) and a readable ``str()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special

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
# Student t distribution (scipy.special)
# ---------------------------------------------------------------------------


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom (``df > 0``, need not be an integer).

    A thin wrapper over :func:`scipy.special.stdtr` that checks its input.
    """
    if not df > 0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    return float(special.stdtr(float(df), float(t)))


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution: the ``t`` with ``P(T <= t) = p``.

    A thin wrapper over :func:`scipy.special.stdtrit` that checks its input. The quantile
    is computed from the smaller tail ``min(p, 1 - p)`` (exact in floating point for
    ``p >= 0.5``), which keeps full relative precision far in the tails and makes the
    result exactly antisymmetric about ``p = 0.5``. ``df`` need not be an integer.

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
    q = -float(special.stdtrit(df, min(p, 1.0 - p)))  # >= 0: the upper-tail quantile
    return q if p > 0.5 else -q


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


_B_MAX = -1e-12  # upper bound on b: the law must decrease with N (b < 0)


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

    # refine c between the grid neighbours of the best point (1-D profile, bounded Brent)
    lo, hi = float(cs[max(k - 1, 0)]), float(cs[min(k + 1, len(cs) - 1)])
    best_c, best = float(cs[k]), float(sse[k])
    if hi > lo:
        def f(c: float) -> float:
            v = float(_sat_profile(xc, loss, np.array([c]))[0][0])
            return v if math.isfinite(v) else 1e300  # Brent's parabolic steps need finite values

        res = optimize.minimize_scalar(f, bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-12 * max(hi, 1e-300), "maxiter": 200})
        if res.fun < best:
            best_c, best = float(res.x), float(res.fun)
    _, zz, bb = _sat_profile(xc, loss, np.array([best_c]))
    start = np.array([zz[0], min(bb[0], _B_MAX), best_c])

    # joint least squares in L on (log a_centred, b, c): trust-region reflective keeps
    # b < 0 and 0 <= c <= c_max through bounds
    def resid(th: np.ndarray) -> np.ndarray:
        return np.exp(th[0] + th[1] * xc) + th[2] - loss

    def jac(th: np.ndarray) -> np.ndarray:
        e = np.exp(th[0] + th[1] * xc)
        return np.column_stack([e, e * xc, np.ones_like(xc)])

    theta, cur = start, float(np.sum(resid(start) ** 2))
    with np.errstate(over="ignore", invalid="ignore"):
        sol = optimize.least_squares(resid, start, jac=jac, method="trf",
                                     bounds=([-np.inf, -np.inf, 0.0], [np.inf, _B_MAX, c_max]),
                                     ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=200)
    new = float(np.sum(sol.fun**2))
    if np.all(np.isfinite(sol.x)) and new < cur:  # never return worse than the profile start
        theta, cur = sol.x, new
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
    refined by bounded Brent search (:func:`scipy.optimize.minimize_scalar`), then
    ``(log a, b, c)`` jointly by :func:`scipy.optimize.least_squares` (trust-region
    reflective, bounds ``b < 0`` and ``0 <= c < min L``) on the squared error in ``L``
    (``log N`` centred, so the fit is invariant to the unit of ``N``:
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


def _chinchilla_lbfgs(start: np.ndarray, xn: np.ndarray, xd: np.ndarray, ll: np.ndarray, delta: float,
                      max_iter: int) -> tuple[np.ndarray, float]:
    """Minimise the Huber objective from one start with L-BFGS-B and its analytic gradient.

    Works in the centred parameters ``(a', b', e, alpha, beta)`` with ``a' = a - alpha mean(log N)``
    (likewise ``b'``) on ``xn = log N - mean``, ``xd = log D - mean``: the same objective, but
    ``a`` and ``alpha`` are no longer nearly collinear, which L-BFGS needs to converge quickly.
    With ``p`` the softmax weights of the three LSE terms and ``psi = clip(r, -delta, delta)``,
    the gradient is ``sum psi * (p1, p2, p3, -p1 xn, -p2 xd)``.
    """

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        t1 = u[0] - u[3] * xn
        t2 = u[1] - u[4] * xd
        mx = np.maximum(np.maximum(t1, t2), u[2])  # stable log-sum-exp
        e1, e2, e3 = np.exp(t1 - mx), np.exp(t2 - mx), np.exp(u[2] - mx)
        tot = e1 + e2 + e3
        r = mx + np.log(tot) - ll
        a = np.abs(r)
        obj = float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())
        w = np.clip(r, -delta, delta) / tot  # psi / tot: times e_k gives psi * softmax_k
        g1, g2 = e1 * w, e2 * w
        return obj, np.array([g1.sum(), g2.sum(), (e3 * w).sum(), -(g1 @ xn), -(g2 @ xd)])

    # the objective is ~1e-5 here and L-BFGS-B's ftol is relative to max(|f|, 1), so the
    # defaults would stop far too early: tighten both, maxiter bounds the work
    res = optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-10})
    return res.x, float(res.fun)


def fit_chinchilla(n: ArrayLike, d: ArrayLike, loss: ArrayLike, *, inits: Iterable[Sequence[float]] | None = None,
                   huber_delta: float = 1e-3, n_starts: int | None = 32,
                   max_iter: int = 300) -> ChinchillaLaw:
    """Fit ``L(N, D) = E + A / N^alpha + B / D^beta`` as in Hoffmann et al. 2022 (approach 3).

    With ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, minimise over ``(a, b, e, alpha, beta)``
    ``sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )``
    (``delta = 1e-3``) from several initialisations and keep the best by objective.
    As in the paper, each start is minimised with L-BFGS (:func:`scipy.optimize.minimize`,
    ``method="L-BFGS-B"``, analytic gradient, at most ``max_iter`` iterations).

    ``inits`` are rows ``(a, b, e, alpha, beta)``; by default the paper's grid
    (``alpha, beta in {0, .5, .., 2}``, ``e in {-1, -.5, .., 1}``, ``a, b in {0, 5, .., 25}``;
    4500 starts). The objective is evaluated at every start and only the ``n_starts`` best
    are optimised (``n_starts=None`` optimises all of them). The default is 32, not more:
    one L-BFGS run (~100 evaluations of a Python objective) costs 5-10 ms, so 256 starts take
    1.5-3 s per fit against 0.2-0.4 s for 32, and on synthetic problems (8-49 points, 0.1-1% noise)
    the best of the 16 best-scored starts already reached the same minimum as the best of 256.
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
    mn, md = float(ln.mean()), float(ld.mean())
    best_theta, best_obj = None, math.inf
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in order:
            if not np.isfinite(obj0[i]):
                continue
            u0 = starts[i].copy()
            u0[0] -= u0[3] * mn  # a' = a - alpha mean(log N)
            u0[1] -= u0[4] * md  # b' = b - beta mean(log D)
            theta, _ = _chinchilla_lbfgs(u0, ln - mn, ld - md, ll, huber_delta, max_iter)
            theta[0] += theta[3] * mn
            theta[1] += theta[4] * md
            # score on the original parametrisation, as reported in ``objective``
            obj = float(_chinchilla_objective_np(theta[None, :], ln, ld, ll, huber_delta)[0])
            if np.all(np.isfinite(theta)) and obj < best_obj:  # strict: ties keep the earlier start
                best_theta, best_obj = theta, obj
    if best_theta is None:
        raise ValueError("the Chinchilla fit diverged from every initialisation")
    a, b, e, alpha, beta = (float(v) for v in best_theta)
    return ChinchillaLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, n=npts,
                         objective=best_obj, huber_delta=huber_delta, n_starts=len(order))

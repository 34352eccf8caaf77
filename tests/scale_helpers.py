"""Scale assertions shared by the rules, u-muP, unit-scale, coordinate-check and model-zoo tests.

What the tests measure is nearly always one of: the RMS of a tensor (is it of unit scale, or within a band?), a
log-log slope across widths or depths (does a quantity scale as ``width^e``?), or a rule's value at one size
ratio (is this multiplier ``ratio^e``?). These helpers compute those numbers one way and fail with a message that
says what was measured and what was expected.

Tolerances keep the meaning they had as ``pytest.approx`` comparisons: ``tol`` of :func:`assert_exponent` and
:func:`assert_slope` is ``pytest.approx(expected, abs=tol)`` (pytest's default relative 1e-6 of ``expected`` also
applies), ``rel`` of :func:`assert_power` is ``pytest.approx(base ** exponent, rel=rel)``; the unit and band checks
are plain inclusive comparisons. Each assert helper raises ``AssertionError`` (also under ``python -O``) and
returns the number it checked.

Imported by the tests as ``from scale_helpers import ...`` (pytest puts ``tests/`` on ``sys.path``, as for
``sweep_helpers`` and ``zoo``).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import pytest
import torch

Number = Union[int, float]
RmsLike = Union[torch.Tensor, Number]


def rms(t: torch.Tensor) -> float:
    """Root mean square of ``t``, in float64, detached: ``sqrt(mean(t^2))``."""
    return float(t.detach().double().pow(2).mean().sqrt())


def _as_rms(x: RmsLike) -> float:
    """The RMS of a tensor, or an RMS already measured (a number) as is."""
    return rms(x) if isinstance(x, torch.Tensor) else float(x)


def _label(what: str) -> str:
    return f"{what}: " if what else ""


def loglog_slope(xs: Sequence[Number], ys: Sequence[Number]) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the exponent ``e`` of ``y ~ x^e``.

    Needs at least two points, all positive (a zero or negative value has no logarithm: that is an error here,
    not a slope)."""
    xs_, ys_ = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs_) != len(ys_) or len(xs_) < 2:
        raise ValueError(f"loglog_slope needs two or more (x, y) pairs of equal length, got {len(xs_)} x and "
                         f"{len(ys_)} y")
    bad = [(x, y) for x, y in zip(xs_, ys_) if not (x > 0 and y > 0)]
    if bad:
        raise ValueError(f"loglog_slope needs positive x and y, got {bad}")
    return float(np.polyfit(np.log(xs_), np.log(ys_), 1)[0])


def slopes_by_key(xs: Sequence[Number], rows: Sequence[Mapping[str, Number]]) -> dict[str, float]:
    """Per key, the log-log slope of ``rows[i][key]`` against ``xs[i]`` (one row per size; keys of the first row)."""
    if len(rows) != len(xs):
        raise ValueError(f"slopes_by_key: {len(xs)} sizes but {len(rows)} rows")
    return {k: loglog_slope(xs, [r[k] for r in rows]) for k in rows[0]}


def exponent_at(value: Number, ratio: Number) -> float:
    """The exponent ``e`` with ``value = ratio^e`` (a rule's multiplier at one size ratio, as an exponent)."""
    return math.log(value) / math.log(ratio)


def assert_exponent(measured: float, expected: float, tol: float, what: str = "") -> float:
    """``measured == pytest.approx(expected, abs=tol)`` for an exponent (a slope); returns ``measured``."""
    if measured != pytest.approx(expected, abs=tol):
        raise AssertionError(f"{_label(what)}measured exponent {measured:+.4g}, expected {expected:+.4g} +- {tol:g} "
                             f"(off by {measured - expected:+.3g})")
    return measured


def assert_exponent_outside(measured: float, expected: float, margin: float, what: str = "") -> float:
    """``|measured - expected| >= margin``: a measured exponent is clearly NOT ``expected`` (mutation checks)."""
    if not abs(measured - expected) >= margin:
        raise AssertionError(f"{_label(what)}measured exponent {measured:+.4g} is within {margin:g} of "
                             f"{expected:+.4g} (off by {measured - expected:+.3g}); expected it at least "
                             f"{margin:g} away")
    return measured


def assert_slope(xs: Sequence[Number], ys: Sequence[Number], expected: float, tol: float, what: str = "") -> float:
    """``ys`` scales as ``xs^expected``: the log-log slope is within ``tol`` of ``expected`` (as
    :func:`assert_exponent`); returns the slope."""
    slope = loglog_slope(xs, ys)
    if slope != pytest.approx(expected, abs=tol):
        ys_ = ", ".join(f"{float(y):.4g}" for y in ys)
        raise AssertionError(f"{_label(what)}measured log-log slope {slope:+.4g} over x={list(xs)}, y=[{ys_}]; "
                             f"expected {expected:+.4g} +- {tol:g} (off by {slope - expected:+.3g})")
    return slope


def assert_power(value: Number, base: Number, exponent: float, rel: float = 1e-6, what: str = "") -> float:
    """``value == pytest.approx(base ** exponent, rel=rel)``: a rule's value at size ratio ``base`` is
    ``base^exponent`` (``rel`` defaults to pytest.approx's own 1e-6); returns ``value``."""
    want = base ** exponent
    if value != pytest.approx(want, rel=rel):
        got = f" = {base:g}^{exponent_at(value, base):+.4g}" if value > 0 and base > 0 and base != 1 else ""
        raise AssertionError(f"{_label(what)}measured {value:.6g}{got}, expected {base:g}^{exponent:+.4g} = "
                             f"{want:.6g} within rel {rel:g}")
    return float(value)


def assert_unit_rms(x: RmsLike, tol: float, what: str = "") -> float:
    """Unit scale: ``|RMS - 1| <= tol`` (``x`` a tensor, or an RMS already measured); returns the RMS.

    Same as ``rms == pytest.approx(1.0, rel=tol)`` for any ``tol >= 1e-12``."""
    r = _as_rms(x)
    if not abs(r - 1.0) <= tol:
        raise AssertionError(f"{_label(what)}RMS {r:.4g}, expected 1 +- {tol:g} (off by {r - 1.0:+.3g})")
    return r


def assert_rms_in(x: RmsLike, low: float, high: float, what: str = "") -> float:
    """``low <= RMS <= high`` (``x`` a tensor, or an RMS already measured); returns the RMS."""
    r = _as_rms(x)
    if not low <= r <= high:
        raise AssertionError(f"{_label(what)}RMS {r:.4g}, expected within [{low:g}, {high:g}]")
    return r


def assert_all_in(values: Mapping[str, Number] | Iterable[Number], low: float, high: float, what: str = "") -> None:
    """Every value (RMS already measured) within ``[low, high]``, i.e. ``low <= min`` and ``max <= high``; the
    message lists the smallest, the largest and those outside (by name for a mapping)."""
    named = dict(values) if isinstance(values, Mapping) else dict(enumerate(values))
    if not named:
        raise ValueError(f"{_label(what)}assert_all_in got no values")
    outside = {k: v for k, v in named.items() if not low <= v <= high}
    if outside:
        raise AssertionError(f"{_label(what)}{len(outside)} of {len(named)} outside [{low:g}, {high:g}] "
                             f"(min {min(named.values()):.4g}, max {max(named.values()):.4g}): "
                             + ", ".join(f"{k}={v:.4g}" for k, v in list(outside.items())[:10]))

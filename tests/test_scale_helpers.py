"""The shared scale assertions (tests/scale_helpers.py): what they compute, and that each one fails on a wrong
input with a message naming what was measured and what was expected."""

from __future__ import annotations

import math

import pytest
import torch

from scale_helpers import (
    assert_all_in, assert_exponent, assert_exponent_outside, assert_power, assert_rms_in, assert_slope,
    assert_unit_rms, exponent_at, loglog_slope, rms, slopes_by_key,
)

WIDTHS = [64, 128, 256, 512]


def test_rms_is_root_mean_square_in_float64_and_detached():
    assert rms(torch.tensor([3.0, -4.0])) == pytest.approx(math.sqrt(12.5), rel=1e-15)
    assert rms(torch.full((7, 3), -2.0)) == 2.0
    x = torch.tensor([1.0, 1.0 + 2 ** -20], dtype=torch.float32, requires_grad=True)
    assert rms(x) == math.sqrt((1.0 + (1.0 + 2 ** -20) ** 2) / 2)  # no float32 rounding of the squares
    assert isinstance(rms(x * 2), float)


def test_loglog_slope_recovers_the_exponent_for_any_base_and_noise_free_powers():
    for e in (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0):
        assert loglog_slope(WIDTHS, [3.0 * w ** e for w in WIDTHS]) == pytest.approx(e, abs=1e-12)
    assert loglog_slope([2, 8], [1.0, 4.0]) == pytest.approx(1.0)
    # least squares: the middle point above the line does not move the fit's slope in this symmetric case
    assert loglog_slope([1, 2, 4], [1.0, 4.0, 4.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("xs, ys", [([1], [1.0]), ([1, 2], [1.0]), ([1, 2], [1.0, 0.0]), ([0, 2], [1.0, 2.0]),
                                    ([1, 2], [1.0, -2.0])])
def test_loglog_slope_refuses_what_has_no_slope(xs, ys):
    with pytest.raises(ValueError, match="loglog_slope needs"):
        loglog_slope(xs, ys)


def test_slopes_by_key_fits_each_key():
    rows = [{"a": w ** 0.5, "b": 7.0, "c": 1 / w} for w in WIDTHS]
    got = slopes_by_key(WIDTHS, rows)
    assert got.keys() == {"a", "b", "c"}
    assert got["a"] == pytest.approx(0.5) and got["c"] == pytest.approx(-1)
    assert got["b"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="4 sizes but 3 rows"):
        slopes_by_key(WIDTHS, rows[:3])


def test_exponent_at():
    assert exponent_at(0.125, 2) == pytest.approx(-3)
    assert exponent_at(8 ** 0.5, 8) == pytest.approx(0.5)
    assert exponent_at(1.0, 8) == 0.0


def test_assert_slope_passes_the_right_exponent_and_fails_a_wrong_one():
    ys = [w ** 0.5 for w in WIDTHS]
    assert assert_slope(WIDTHS, ys, 0.5, 1e-9, what="sqrt") == pytest.approx(0.5)
    assert_slope(WIDTHS, ys, 0.45, 0.05)  # the tolerance is inclusive (as pytest.approx's)
    with pytest.raises(AssertionError, match=r"hidden LR: measured log-log slope \+0\.5 .*expected \+1 \+- 0\.1"):
        assert_slope(WIDTHS, ys, 1.0, 0.1, what="hidden LR")
    with pytest.raises(AssertionError, match="off by"):
        assert_slope(WIDTHS, [w ** -0.5 for w in WIDTHS], 0.0, 0.15)
    with pytest.raises(AssertionError):
        assert_slope(WIDTHS, ys, 0.5 + 1e-6, 1e-9)  # a tiny tolerance is kept (no loose default)


def test_assert_exponent_and_its_opposite():
    assert assert_exponent(-0.95, -1.0, 0.1) == -0.95
    assert_exponent(0.3, 0.0, 0.3)  # inclusive
    with pytest.raises(AssertionError, match=r"branch: measured exponent -0\.5, expected -1 \+- 0\.1"):
        assert_exponent(-0.5, -1.0, 0.1, what="branch")
    with pytest.raises(AssertionError):
        assert_exponent(0.31, 0.0, 0.3)
    with pytest.raises(AssertionError):
        assert_exponent(float("nan"), 0.0, 1.0)
    assert assert_exponent_outside(-0.5, -1.0, 0.2) == -0.5
    assert_exponent_outside(-0.8, -1.0, 0.2 - 1e-12)
    with pytest.raises(AssertionError, match=r"mutated: measured exponent -0\.95 is within 0\.2 of -1"):
        assert_exponent_outside(-0.95, -1.0, 0.2, what="mutated")


def test_assert_power_checks_a_rule_value_at_one_ratio():
    assert assert_power(0.25, 4.0, -1.0) == 0.25
    assert_power(0.5, 4.0, -0.5)
    assert_power(4.0 ** 0.5 * (1 + 5e-7), 4.0, 0.5)  # pytest.approx's default rel 1e-6
    assert_power(128 ** -0.5 * 1.25, 128, -0.5, rel=0.25)
    with pytest.raises(AssertionError, match=r"in-block lr: measured 0\.5 = 4\^-0\.5, expected 4\^-1 = 0\.25"):
        assert_power(0.5, 4.0, -1.0, what="in-block lr")
    with pytest.raises(AssertionError):
        assert_power(4.0 ** 0.5 * (1 + 2e-6), 4.0, 0.5)
    with pytest.raises(AssertionError):
        assert_power(128 ** -0.5 * 1.3, 128, -0.5, rel=0.25)
    with pytest.raises(AssertionError, match="measured 0, expected"):
        assert_power(0.0, 4.0, -1.0)


def test_assert_unit_rms_on_tensors_and_measured_values():
    torch.manual_seed(0)
    assert assert_unit_rms(torch.randn(100_000), 0.02, what="normal") == pytest.approx(1.0, abs=0.02)
    assert_unit_rms(1.015, 0.02)
    assert_unit_rms(torch.ones(3) * -1, 0.0)
    with pytest.raises(AssertionError, match=r"doubled: RMS 2, expected 1 \+- 0\.1"):
        assert_unit_rms(2 * torch.ones(10), 0.1, what="doubled")
    with pytest.raises(AssertionError):
        assert_unit_rms(0.97, 0.02)
    with pytest.raises(AssertionError):
        assert_unit_rms(float("nan"), 0.5)


def test_assert_rms_in_and_assert_all_in():
    assert assert_rms_in(torch.full((4,), 0.5), 0.5, 2) == 0.5  # inclusive
    assert_rms_in(2.0, 0.5, 2)
    with pytest.raises(AssertionError, match=r"stream: RMS 3, expected within \[0\.5, 2\]"):
        assert_rms_in(3 * torch.ones(5), 0.5, 2, what="stream")
    with pytest.raises(AssertionError):
        assert_rms_in(0.49, 0.5, 2)
    assert_all_in({"a": 0.125, "b": 32.0}, 1 / 8, 32)
    assert_all_in([1.0, 2.0], 1, 2)
    with pytest.raises(AssertionError, match=r"grads: 1 of 3 outside \[0\.125, 4\] \(min 0\.1, max 2\): q=0\.1"):
        assert_all_in({"q": 0.1, "k": 1.0, "v": 2.0}, 1 / 8, 4, what="grads")
    with pytest.raises(AssertionError, match="1=5"):
        assert_all_in([1.0, 5.0], 1, 4)
    with pytest.raises(ValueError, match="no values"):
        assert_all_in([], 0, 1)

"""Laws across scale: power laws, log-linear laws, Mu-scaling's saturating law, Chinchilla."""

import json
import math
import re

import numpy as np
import pytest

from proxytune.analysis.laws import (
    ChinchillaLaw,
    LogLinearLaw,
    PowerLaw,
    SaturatingLaw,
    fit_chinchilla,
    fit_log2_hp,
    fit_log_linear,
    fit_power_law,
    fit_saturating_power_law,
    t_cdf,
    t_quantile,
)

# Mu-scaling reference numbers (Yao & Wang 2023): params in millions, loss.
MU_PARAMS = [8.53, 21.56, 39.09, 61.12, 87.65, 118.68, 154.21, 194.24, 676.48, 1446.72]
MU_LOSS = [3.9181, 3.6054, 3.4431, 3.3542, 3.2902, 3.2478, 3.224, 3.1797, 3.0854, 3.0425]


# ---------------------------------------------------------------------------
# Student t quantile
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.95, 1, 6.313752),
        (0.995, 1, 63.656741),
        (0.95, 2, 2.919986),
        (0.975, 3, 3.182446),
        (0.95, 5, 2.015048),
        (0.975, 10, 2.228139),
        (0.9, 30, 1.310415),
        (0.05, 4, -2.131847),
        (0.95, 1e6, 1.644855),
    ],
)
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_t_quantile_symmetry_and_errors():
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.2, 3.5) == pytest.approx(-t_quantile(0.8, 3.5), rel=1e-12)
    # heavier tails than the normal for small df, decreasing towards it as df grows
    assert t_quantile(0.95, 2) > t_quantile(0.95, 5) > t_quantile(0.95, 50) > 1.6448
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="0 < p < 1"):
            t_quantile(bad, 3)
    with pytest.raises(ValueError, match="df > 0"):
        t_quantile(0.9, 0)


def test_t_cdf_values_inverse_and_errors():
    # tables: P(T <= 2.228139) = 0.975 at 10 df; Cauchy (1 df): 1/2 + atan(t)/pi
    assert t_cdf(2.228139, 10) == pytest.approx(0.975, abs=1e-7)
    for t in (-30.0, -1.0, 0.3, 5.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12)
    assert t_cdf(0.0, 3.5) == 0.5
    assert t_cdf(-1.7, 2.5) == pytest.approx(1.0 - t_cdf(1.7, 2.5), rel=1e-12)
    for p, df in ((0.9, 2), (0.01, 4.5), (0.999, 30)):
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, rel=1e-10)
    assert math.isnan(t_cdf(float("nan"), 3))
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="df > 0"):
            t_cdf(1.0, bad)


def test_t_quantile_far_tails_keep_relative_precision():
    # Cauchy quantile in closed form: -cot(pi p) for the lower tail
    for p in (1e-10, 1e-6, 0.01):
        expected = -1.0 / math.tan(math.pi * p)
        assert t_quantile(p, 1) == pytest.approx(expected, rel=1e-12)
        assert t_quantile(1.0 - p, 1) == pytest.approx(-expected, rel=1e-6)  # 1 - p is rounded
    assert t_cdf(t_quantile(1e-10, 3.0), 3.0) == pytest.approx(1e-10, rel=1e-9)


# ---------------------------------------------------------------------------
# Power law
# ---------------------------------------------------------------------------


def _synthetic_power(rng, n=8, c=0.0123, alpha=-0.52, sigma=0.05):
    x = np.geomspace(1e6, 1e9, n)
    y = c * x**alpha * np.exp(sigma * rng.standard_normal(n))
    return x, y


def test_power_law_recovers_exponent_and_coefficient():
    rng = np.random.default_rng(1)
    x, y = _synthetic_power(rng, n=10, sigma=0.03)
    law = fit_power_law(x, y, x_name="N", y_name="lr*")
    assert isinstance(law, PowerLaw)
    lo, hi = law.exponent_interval(0.9)
    assert lo < -0.52 < hi
    assert law.exponent == pytest.approx(-0.52, abs=0.03)
    assert hi - lo < 0.1  # the interval is informative, not just wide
    assert law.coefficient == pytest.approx(0.0123, rel=0.5)
    # predictions follow c x^alpha (not alpha log x, not a wrong sign)
    truth = 0.0123 * 1e10**-0.52
    assert law.predict(1e10) == pytest.approx(truth, rel=0.1)
    plo, phi = law.interval(1e10)
    assert plo < law.predict(1e10) < phi and plo < truth < phi
    assert law.predict_log(1e10) == pytest.approx(math.log(law.predict(1e10)), rel=1e-12)
    arr = law.predict(np.array([1e6, 1e7]))
    assert arr.shape == (2,) and arr[0] > arr[1]
    # the prediction interval widens away from the data (extrapolation)
    w_in = np.diff(law.log_interval(3e7))[0]
    w_out = np.diff(law.log_interval(1e12))[0]
    assert w_out > w_in
    # a wider confidence gives a wider interval
    assert np.diff(law.log_interval(1e10, 0.99))[0] > np.diff(law.log_interval(1e10, 0.8))[0]
    s = str(law)
    assert s.startswith("lr* = 0.0") and "* N^-0.5" in s and "(±" in s
    d = law.to_dict()
    json.dumps(d)
    assert d["exponent"] == law.exponent and d["n"] == 10


def test_power_law_exact_data_and_weights():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    y = 3.0 * x**0.75
    law = fit_power_law(x, y, weights=[1, 2, 3, 4, 5])
    assert law.exponent == pytest.approx(0.75, abs=1e-12)
    assert law.coefficient == pytest.approx(3.0, rel=1e-12)
    assert law.resid_std == pytest.approx(0.0, abs=1e-10)
    # weights pull the fit towards the heavily weighted points
    y2 = y.copy()
    y2[0] *= 1.5
    light = fit_power_law(x, y2, weights=[0.01, 1, 1, 1, 1])
    heavy = fit_power_law(x, y2, weights=[100, 1, 1, 1, 1])
    assert abs(light.exponent - 0.75) < abs(heavy.exponent - 0.75)
    # weights are relative: scaling them all changes nothing
    a = fit_power_law(x, y2, weights=[1, 2, 3, 4, 5])
    b = fit_power_law(x, y2, weights=[10, 20, 30, 40, 50])
    assert a.exponent == pytest.approx(b.exponent, rel=1e-12)
    assert a.interval(100.0) == pytest.approx(b.interval(100.0), rel=1e-12)


def test_power_law_interval_coverage():
    """Over 200 synthetic repetitions, the 90% intervals cover the truth ~90% of the time.

    n=4 points (2 df): a normal quantile instead of Student's t would cover ~76%, and a
    prediction interval without the residual noise term far less at the interior point.
    """
    rng = np.random.default_rng(2024)
    alpha, c, sigma, n = -0.3, 2.0, 0.1, 4
    x = np.geomspace(10.0, 1e4, n)
    x_new = {"interior": 316.0, "extrapolated": 1e5}
    reps = 200
    cover_exp = 0
    cover_pred = dict.fromkeys(x_new, 0)
    for _ in range(reps):
        y = c * x**alpha * np.exp(sigma * rng.standard_normal(n))
        law = fit_power_law(x, y, confidence=0.9)
        lo, hi = law.exponent_interval()
        cover_exp += lo < alpha < hi
        for k, xn in x_new.items():
            y_new = c * xn**alpha * math.exp(sigma * rng.standard_normal())
            plo, phi = law.interval(xn)
            cover_pred[k] += plo < y_new < phi
    rates = {"exponent": cover_exp / reps, **{k: v / reps for k, v in cover_pred.items()}}
    print("coverage:", rates)
    for k, rate in rates.items():
        assert 0.80 <= rate <= 0.97, f"{k} coverage {rate}"


def test_log2_hp_law():
    rng = np.random.default_rng(3)
    n = np.geomspace(1e6, 1e9, 7)
    log2_lr = -3.0 - 0.5 * np.log2(n) + 0.05 * rng.standard_normal(7)
    law = fit_log2_hp(n, log2_lr, x_name="N", hp_name="lr*")
    assert law.b == pytest.approx(-0.5, abs=0.03)
    assert law.a == pytest.approx(-3.0, abs=0.6)
    lo, hi = law.exponent_interval()
    assert lo < -0.5 < hi
    pred = law.predict_log(1e10)
    assert pred == pytest.approx(-3.0 - 0.5 * math.log2(1e10), abs=0.2)
    assert law.predict(1e10) == pytest.approx(2.0**pred, rel=1e-12)
    llo, lhi = law.log_interval(1e10)
    assert llo < pred < lhi
    assert str(law).startswith("log2 lr* = ") and "- 0.5" in str(law) and "log2 N" in str(law)
    # the same law as a natural-log power law on hp = 2^log2_hp
    pw = fit_power_law(n, 2.0**log2_lr)
    assert pw.exponent == pytest.approx(law.exponent, rel=1e-10)
    assert pw.se_exponent == pytest.approx(law.se_exponent, rel=1e-10)
    assert pw.interval(1e10) == pytest.approx(law.interval(1e10), rel=1e-9)
    # log2 HPs may be negative; sizes may not
    with pytest.raises(ValueError, match=r"x\[1\]"):
        fit_log2_hp([1e6, 0.0, 1e8], [-10, -11, -12])


# ---------------------------------------------------------------------------
# Log-linear law
# ---------------------------------------------------------------------------


def test_log_linear_recovers_exponents():
    rng = np.random.default_rng(5)
    m = 30
    N = np.exp(rng.uniform(np.log(1e6), np.log(1e9), m))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), m))
    y = 3.0 * N**-0.3 * D**0.1 * np.exp(0.02 * rng.standard_normal(m))
    law = fit_log_linear({"N": N, "D": D}, y, y_name="lr*")
    assert isinstance(law, LogLinearLaw)
    assert law.exponents["N"] == pytest.approx(-0.3, abs=0.02)
    assert law.exponents["D"] == pytest.approx(0.1, abs=0.02)
    for k, true in (("N", -0.3), ("D", 0.1)):
        lo, hi = law.exponent_interval(k, 0.95)
        assert lo < true < hi
    truth = 3.0 * 1e10**-0.3 * 1e12**0.1
    assert law.predict({"N": 1e10, "D": 1e12}) == pytest.approx(truth, rel=0.1)
    lo, hi = law.interval({"N": 1e10, "D": 1e12, "ignored": 1.0})
    assert lo < truth < hi
    arr = law.predict({"N": np.array([1e6, 1e7]), "D": 1e9})
    assert arr.shape == (2,) and arr[0] > arr[1]
    assert re.fullmatch(r"lr\* = 3\.\d+ \* N\^-0\.(29|30)\d* \(±[\d.]+\) \* D\^0\.(09|10)\d* \(±[\d.]+\)", str(law))
    json.dumps(law.to_dict())
    with pytest.raises(ValueError, match="missing"):
        law.predict({"N": 1e10})
    # one variable: the same as fit_power_law
    one = fit_log_linear({"N": N}, y)
    pw = fit_power_law(N, y)
    assert one.exponents["N"] == pytest.approx(pw.exponent, rel=1e-10)
    assert one.interval({"N": 1e10}) == pytest.approx(pw.interval(1e10), rel=1e-9)


def test_log_linear_collinear_is_an_error():
    N = np.geomspace(1e6, 1e9, 6)
    with pytest.raises(ValueError, match="collinear"):
        fit_log_linear({"N": N, "D": 20 * N}, N**-0.3)


# ---------------------------------------------------------------------------
# Saturating power law (Mu-scaling)
# ---------------------------------------------------------------------------


def test_mu_scaling_predicts_last_three_points_within_one_percent():
    """SCIENCE.md: fit the first 7 Mu-scaling points, predict the last 3 within 1%."""
    law = fit_saturating_power_law(MU_PARAMS[:7], MU_LOSS[:7])
    assert isinstance(law, SaturatingLaw)
    preds = law.predict(np.array(MU_PARAMS[7:]))
    errors = np.abs(preds - np.array(MU_LOSS[7:])) / np.array(MU_LOSS[7:])
    print(f"{law}\npredictions {preds}\nrelative errors {errors}")
    assert np.all(errors < 0.01), f"relative errors {errors} (predictions {preds}, law {law})"
    assert law.b < 0 and 0 <= law.c < min(MU_LOSS[:7])
    # the bootstrap intervals bracket the prediction and the measured loss
    lo, hi = law.interval(np.array(MU_PARAMS[7:]))
    assert np.all(lo < preds) and np.all(preds < hi)
    assert np.all(lo < np.array(MU_LOSS[7:])) and np.all(np.array(MU_LOSS[7:]) < hi)
    clo, chi = law.interval(np.array(MU_PARAMS[7:]), noise=False)
    assert np.all(chi - clo <= hi - lo + 1e-12)
    json.dumps(law.to_dict())
    assert str(law).startswith("L = ") and "N^-0.4" in str(law)


def test_mu_scaling_fit_is_invariant_to_units():
    millions = fit_saturating_power_law(MU_PARAMS[:7], MU_LOSS[:7], n_bootstrap=20)
    counts = fit_saturating_power_law(np.array(MU_PARAMS[:7]) * 1e6, MU_LOSS[:7], n_bootstrap=20)
    assert counts.b == pytest.approx(millions.b, rel=1e-6)
    assert counts.c == pytest.approx(millions.c, rel=1e-6)
    assert counts.a == pytest.approx(millions.a * 1e6**-millions.b, rel=1e-6)
    big = np.array(MU_PARAMS[7:])
    assert counts.predict(big * 1e6) == pytest.approx(millions.predict(big), rel=1e-8)
    for mine, theirs in zip(counts.interval(big * 1e6), millions.interval(big)):
        assert mine == pytest.approx(theirs, rel=1e-6)


def test_saturating_law_recovers_synthetic_parameters():
    n = np.geomspace(1e7, 1e9, 8)
    loss = 40.0 * n**-0.2 + 1.6
    law = fit_saturating_power_law(n, loss, n_bootstrap=0)
    assert law.b == pytest.approx(-0.2, abs=1e-4)
    assert law.c == pytest.approx(1.6, abs=1e-3)
    assert law.a == pytest.approx(40.0, rel=1e-2)
    assert law.predict(1e11) == pytest.approx(40.0 * 1e11**-0.2 + 1.6, rel=1e-4)
    with pytest.raises(ValueError, match="n_bootstrap"):
        law.interval(1e11)


def test_saturating_law_floor_at_its_bound():
    """A pure power law (c = 0) puts the floor on its lower bound, and the fit stays exact."""
    n = np.geomspace(1e6, 1e9, 6)
    loss = 5.0 * n**-0.1
    law = fit_saturating_power_law(n, loss, n_bootstrap=0)
    assert law.b == pytest.approx(-0.1, rel=1e-8)
    assert 0.0 <= law.c < 1e-10
    assert law.resid_std < 1e-12


def test_saturating_law_errors():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_saturating_power_law([1, 2, 3], [3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match=r"n\[2\]"):
        fit_saturating_power_law([1, 2, -3, 4], [3.0, 2.5, 2.2, 2.1])
    with pytest.raises(ValueError, match="does not decrease"):
        fit_saturating_power_law([1, 2, 3, 4, 5], [2.0, 2.1, 2.2, 2.3, 2.4])


# ---------------------------------------------------------------------------
# Chinchilla
# ---------------------------------------------------------------------------

TRUE_CHINCHILLA = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}


def _true_loss(n, d):
    p = TRUE_CHINCHILLA
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def test_chinchilla_recovers_synthetic_law():
    rng = np.random.default_rng(0)
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, 7), np.geomspace(1e8, 1e11, 7))
    N, D = N.ravel(), D.ravel()
    loss = _true_loss(N, D) * (1.0 + 0.002 * rng.standard_normal(N.size))
    law = fit_chinchilla(N, D, loss)
    assert isinstance(law, ChinchillaLaw)
    print(law)
    truth = _true_loss(1e10, 2e11)
    assert law.predict(1e10, 2e11) == pytest.approx(truth, rel=0.02)
    assert law.alpha == pytest.approx(0.34, abs=0.05)
    assert law.beta == pytest.approx(0.28, abs=0.05)
    assert law.E == pytest.approx(1.7, rel=0.1)
    # the fitted law reproduces the data to about the noise level
    rel = np.abs(law.predict(N, D) / loss - 1.0)
    assert rel.max() < 0.01
    # compute-optimal allocation: on the iso-FLOP line C = 6ND, moving away raises the loss
    c = 1e21
    n_opt, d_opt = law.compute_optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-9)
    best = law.predict(n_opt, d_opt)
    for k in (0.5, 2.0):
        assert law.predict(n_opt * k, d_opt / k) > best
    assert str(law).startswith("L(N, D) = 1.")
    json.dumps(law.to_dict())


def test_chinchilla_custom_inits_and_errors():
    N = np.array([1e6, 1e7, 1e8, 1e6, 1e7, 1e8, 1e9])
    D = np.array([1e9, 1e9, 1e9, 1e10, 1e10, 1e10, 1e11])
    loss = _true_loss(N, D)
    law = fit_chinchilla(N, D, loss, inits=[(6.0, 6.0, 0.5, 0.3, 0.3)])
    assert law.n_starts == 1
    assert law.predict(N, D) == pytest.approx(loss, rel=2e-3)
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_chinchilla(N[:5], D[:5], loss[:5])
    with pytest.raises(ValueError, match=r"d\[3\]"):
        fit_chinchilla(N, np.where(np.arange(7) == 3, 0.0, D), loss)
    with pytest.raises(ValueError, match="both vary"):
        fit_chinchilla(N, np.full(7, 1e10), loss)


def test_chinchilla_is_deterministic_and_reports_its_objective():
    N = np.array([1e6, 1e7, 1e8, 1e6, 1e7, 1e8, 1e9, 3e7])
    D = np.array([1e9, 1e9, 1e9, 1e10, 1e10, 1e10, 1e11, 3e9])
    loss = _true_loss(N, D) * (1.0 + 0.003 * np.sin(np.arange(8)))
    a = fit_chinchilla(N, D, loss, n_starts=8)
    b = fit_chinchilla(N, D, loss, n_starts=8)
    assert a.to_dict() == b.to_dict()
    assert a.n_starts == 8
    # ``objective`` is the Huber objective (delta = 1e-3) of the returned parameters
    r = np.log(a.predict(N, D)) - np.log(loss)
    huber = np.where(np.abs(r) <= 1e-3, 0.5 * r**2, 1e-3 * (np.abs(r) - 0.5e-3))
    assert a.objective == pytest.approx(float(huber.sum()), rel=1e-9)
    with pytest.raises(ValueError, match="n_starts"):
        fit_chinchilla(N, D, loss, n_starts=0)


# ---------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------


def test_non_positive_inputs_name_the_index():
    with pytest.raises(ValueError, match=r"x\[2\] = 0\.0 must be > 0"):
        fit_power_law([1, 2, 0, 4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"y\[1\] = -2\.0 must be > 0"):
        fit_power_law([1, 2, 3, 4], [1, -2, 3, 4])
    with pytest.raises(ValueError, match=r"y\[3\].*not finite"):
        fit_power_law([1, 2, 3, 4], [1, 2, 3, float("nan")])
    with pytest.raises(ValueError, match=r"D\[0\]"):
        fit_log_linear({"N": [1, 2, 3, 4, 5], "D": [-1, 2, 3, 4, 5]}, [1, 2, 3, 4, 5])
    law = fit_power_law([1, 2, 4, 8], [1, 2, 4, 9])
    with pytest.raises(ValueError, match=r"x\[0\]"):
        law.predict(-1.0)


def test_too_few_points():
    with pytest.raises(ValueError, match="needs at least 3 points.*got 2 points"):
        fit_power_law([1, 2], [1, 2])
    with pytest.raises(ValueError, match="needs at least 4 points.*got 3"):
        fit_log_linear({"N": [1, 2, 3], "D": [3, 1, 2]}, [1, 2, 3])
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="constant or collinear"):
        fit_power_law([2, 2, 2, 2], [1, 2, 3, 4])

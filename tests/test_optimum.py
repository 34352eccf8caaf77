"""Optimum per size and the transfer verdict, on synthetic sweeps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxytune.analysis.optimum import find_optimum, optima_by_group
from proxytune.analysis.verdict import transfer_verdict


def bowl(x: float, opt: float, floor: float = 3.0, curv: float = 0.05) -> float:
    return floor + curv * (x - opt) ** 2


def rows(width: int, opt: float, grid=range(-10, -3), seeds=(0,), noise=0.0, floor=3.0, rng=None):
    out = []
    for x in grid:
        for s in seeds:
            eps = rng.normal(0, noise) if rng is not None else 0.0
            out.append({"width": width, "log2_lr": float(x), "seed": s, "val_loss": bowl(x, opt, floor) + eps,
                        "status": "complete"})
    return out


def test_subgrid_optimum_and_interval():
    opt = find_optimum(rows(64, -7.3), "log2_lr")
    assert opt.method == "quadratic" and opt.ok
    assert opt.value == pytest.approx(-7.3, abs=1e-6)
    assert opt.group == {"width": 64}
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for rep in range(40):
        noisy = find_optimum(rows(64, -7.3, seeds=(0, 1, 2), noise=0.02, rng=rng), "log2_lr", n_boot=200, seed=rep)
        lo, hi = noisy.interval
        assert lo <= noisy.value <= hi and noisy.n_seeds == 3
        covered += lo <= -7.3 <= hi
        widths.append(hi - lo)
    assert 0.7 <= covered / 40 <= 1.0, covered  # a 90% interval, roughly calibrated
    assert 0.02 < float(np.median(widths)) < 1.0


def test_edge_flat_and_diverged_points():
    edge = find_optimum(rows(64, -2.0), "log2_lr")
    assert edge.edge == "high" and not edge.ok
    assert any("extend the grid by at least 2 points" in n and "higher" in n for n in edge.notes)
    flat = find_optimum([{"log2_lr": float(x), "val_loss": 3.0 + 1e-5 * x} for x in range(-10, -3)], "log2_lr")
    assert flat.flat and any("flat optimum" in n for n in flat.notes)
    div = rows(64, -6.0)
    for r in div:
        if r["log2_lr"] >= -5:
            r["val_loss"] = math.inf
            r["status"] = "diverged"
    d = find_optimum(div, "log2_lr")
    assert d.value == pytest.approx(-6.0, abs=0.3) and math.isfinite(d.loss)
    # one seed diverging makes that point unusable
    mixed = rows(64, -6.0, seeds=(0, 1))
    mixed[0]["val_loss"] = math.inf
    assert math.isinf(find_optimum(mixed, "log2_lr").mean_losses[0])


def test_verdict_pass_and_fail():
    stable = [r for w in (32, 64, 128, 256) for r in rows(w, -7.0, floor=3.0 - 0.1 * math.log2(w))]
    v = transfer_verdict(optima_by_group(stable, "log2_lr"), "width")
    assert v.passed and abs(v.drift) < 1e-6 and v.line.startswith("PASS")
    assert v.wider_is_better == "unresolved"  # one seed: the seed-to-seed spread of the loss is unknown
    drifting = [r for i, w in enumerate((32, 64, 128, 256)) for r in rows(w, -5.0 - i, grid=range(-12, -2))]
    v = transfer_verdict(optima_by_group(drifting, "log2_lr"), "width")
    assert not v.passed and v.drift == pytest.approx(-3.0, abs=1e-6)
    assert v.drift_per_doubling == pytest.approx(-1.0, abs=1e-6)
    assert v.regret == pytest.approx(0.05 * 9, rel=1e-6)  # 3 octaves off a 0.05-curvature bowl
    assert "limit" in v.line and v.line.startswith("FAIL")
    with pytest.raises(ValueError, match="2 or more"):
        transfer_verdict(optima_by_group(rows(32, -7.0), "log2_lr"), "width")


# Noise of real sweeps, measured by bench/optimum_noise.py (2-core CPU; reference GPT depth 2, AdamW, 4-seed grid
# sweeps of presets cpu / quick / quick2, muP and SP): medians over the 13 distinct widths with a convex 4-seed fit.
MEASURED_NOISE = 0.0518  # residual std of the per-seed-intercept parabola (Optimum.noise), nats
MEASURED_SEED_OFFSET = 0.0369  # std of the per-seed intercepts, nats
MEASURED_CURVATURE = 0.031  # quadratic coefficient of the 4-seed fits, nats per octave^2
# Bin(150, 0.9) puts P(< 120) = 7.5e-5 and P(> 147) = 2.1e-5: a calibrated interval fails this band with
# probability ~1e-4 per bootstrap / noise seed, so a failure means miscalibration, not bad luck.
COVERAGE_REPS, COVERAGE_LO, COVERAGE_HI = 150, 120, 147


def _coverage_study(low_side_steepness: float, refine: bool = False) -> tuple[int, list[str]]:
    """Covered count over COVERAGE_REPS 2-seed, 7-point one-octave sweeps; bracket and window violations as
    messages.

    The curve is ``curvature * (x - opt)^2``, times ``low_side_steepness`` below the optimum, with the optimum
    drawn uniformly between grid points -8 and -6, so every window of best point +-2 lies inside the grid.
    ``refine``: run the estimate's ``Optimum.refine`` points (same seed offsets, fresh noise) and count the
    re-estimate instead, as a sweep's second pass would.
    """
    rng = np.random.default_rng(2024)
    grid = [float(x) for x in range(-10, -3)]
    covered, outside = 0, []
    for rep in range(COVERAGE_REPS):
        opt = rng.uniform(-8.0, -6.0)
        offsets = rng.normal(0.0, MEASURED_SEED_OFFSET, size=2)

        def sample(xs, opt=opt, offsets=offsets):
            return [{"log2_lr": x, "seed": s, "status": "complete",
                     "val_loss": 3.0 + MEASURED_CURVATURE * (low_side_steepness if x < opt else 1.0) * (x - opt) ** 2
                     + offsets[s] + rng.normal(0, MEASURED_NOISE)} for x in xs for s in (0, 1)]

        data = sample(grid)
        o = find_optimum(data, "log2_lr", n_boot=200, seed=rep)
        if refine and o.refine:
            first = o
            data += sample(o.refine)
            o = find_optimum(data, "log2_lr", n_boot=200, seed=rep)
            outside += _window_violations(rep, first, o)
        covered += o.interval[0] <= opt <= o.interval[1]
        # the bracket from the data itself, not from o.bracket: the neighbours of the lowest seed-mean point
        xs = sorted({r["log2_lr"] for r in data})
        means = [np.mean([r["val_loss"] for r in data if r["log2_lr"] == x]) for x in xs]
        best = int(np.argmin(means))
        lo, hi = xs[max(best - 1, 0)], xs[min(best + 1, len(xs) - 1)]
        if not lo <= o.value <= hi:
            outside.append(f"rep {rep}: estimate {o.value:.3f} outside bracket [{lo}, {hi}]")
    return covered, outside


def _window_violations(rep: int, first, refined) -> list[str]:
    """The refined fit must reach the same +-2 coarse (1-octave) steps around its best point as the first one,
    so the half-step points add to it instead of narrowing it."""
    if first.fit is None or refined.fit is None:
        return []
    best = refined.best_grid_value
    # every measured point within 2 octaves of the best one is in the fit window, and nothing beyond
    want = [x for x in refined.grid if abs(x - best) <= 2 + 1e-9]
    got = [x for x in refined.grid if refined.fit.covers(x)]
    if got != want:
        return [f"rep {rep}: refined fit window {got}, want {want}"]
    if best == first.best_grid_value and (refined.fit.lo, refined.fit.hi) != (first.fit.lo, first.fit.hi):
        return [f"rep {rep}: same best point, but the fit span moved from [{first.fit.lo}, {first.fit.hi}] to "
                f"[{refined.fit.lo}, {refined.fit.hi}]"]
    return []


def test_interval_coverage_at_measured_noise():
    """The 90% interval covers the true optimum of a parabola at its stated rate, at real sweeps' noise."""
    covered, outside = _coverage_study(low_side_steepness=1.0)
    assert not outside, outside
    assert COVERAGE_LO <= covered <= COVERAGE_HI, \
        f"coverage {covered}/{COVERAGE_REPS} outside [{COVERAGE_LO}, {COVERAGE_HI}]"


def test_interval_coverage_on_asymmetric_curve():
    """Real loss-vs-lr curves are steeper on one side; at 2x steeper below the optimum the interval still covers
    at its stated rate (the cubic term takes the skew that biased a plain parabola toward the flat side)."""
    covered, outside = _coverage_study(low_side_steepness=2.0)
    assert not outside, outside
    assert COVERAGE_LO <= covered <= COVERAGE_HI, \
        f"coverage {covered}/{COVERAGE_REPS} outside [{COVERAGE_LO}, {COVERAGE_HI}]"


def test_refinement_keeps_window_and_coverage_on_asymmetric_curve():
    """After one refinement pass the fit still reaches +-2 coarse steps (the half-step points add to it) and the
    interval still covers at its stated rate on the 2x-skewed curve."""
    covered, outside = _coverage_study(low_side_steepness=2.0, refine=True)
    assert not outside, outside
    assert COVERAGE_LO <= covered <= COVERAGE_HI, \
        f"coverage {covered}/{COVERAGE_REPS} outside [{COVERAGE_LO}, {COVERAGE_HI}]"


def test_refined_grid_keeps_coarse_window_and_asks_no_second_pass():
    """Noise-free: the half-step points join the same +-2-octave fit, the estimate stays in the bracket of the
    nearest measured neighbours, and a best point with half-step neighbours asks for no further refinement."""
    def curve(x):  # 2x steeper below the optimum at -7.3
        return 3.0 + 0.031 * (2.0 if x < -7.3 else 1.0) * (x + 7.3) ** 2

    grid = [float(x) for x in range(-10, -3)]
    first = find_optimum([{"log2_lr": x, "val_loss": curve(x)} for x in grid], n_boot=20)
    assert first.best_grid_value == -7.0 and (first.fit.lo, first.fit.hi) == (-9.0, -5.0)
    assert first.fit.cubic != 0.0  # 5 distinct values: the skew term is on
    refined = find_optimum([{"log2_lr": x, "val_loss": curve(x)} for x in grid + [-7.5, -6.5]], n_boot=20)
    assert refined.best_grid_value == -7.5 and refined.bracket == (-8.0, -7.0)
    assert refined.bracket[0] <= refined.value <= refined.bracket[1]
    assert (refined.fit.lo, refined.fit.hi) == (-9.0, -6.0)  # +-2 octaves of -7.5 that hold points
    assert refined.refine == []  # its neighbours are half steps away: one pass only
    # the skew term cuts the plain parabola's noise-free bias toward the flat side (+0.31 octave here) to ~0.1
    assert abs(first.value + 7.3) < 0.15 and abs(refined.value + 7.3) < 0.15


def _scan(width: int, opt: float, noise: float, rng, seeds=(0, 1), centre: float = -7.0) -> list[dict]:
    """A verification-style scan: 3 points half an octave apart, a per-seed offset, per-run noise."""
    out = []
    for s in seeds:
        offset = 0.01 * s
        for x in (centre - 0.5, centre, centre + 0.5):
            eps = rng.normal(0, noise) if noise else 0.0
            out.append({"width": width, "log2_lr": x, "seed": s, "val_loss": bowl(x, opt, curv=0.03) + offset + eps,
                        "status": "complete"})
    return out


def test_pooled_noise_gives_a_scan_whose_residuals_vanished_by_luck_the_sweeps_noise():
    """Width 8's scan fits its parabola exactly (no residual): on its own noise its interval is a point away from
    the truth; pooled with the other widths' residuals, it is as wide as the noise makes it and holds the truth.
    A width whose own residuals are above the pool's keeps them."""
    rng = np.random.default_rng(3)
    recs = _scan(8, -6.85, 0.0, rng) + _scan(16, -7.0, 0.012, rng) + _scan(32, -7.0, 0.012, rng)
    own = {o.group["width"]: o for o in optima_by_group(recs, "log2_lr", size_axes=["width"], n_boot=200)}
    pooled = {o.group["width"]: o for o in optima_by_group(recs, "log2_lr", size_axes=["width"], n_boot=200,
                                                            pool_noise=True)}
    assert own[8].noise == pytest.approx(0.0, abs=1e-9) and own[8].width < 1e-6
    assert own[16].noise_df == 2
    # width 8 borrows the noise of all three fits, with their degrees of freedom
    rss = sum(own[w].noise ** 2 * own[w].noise_df for w in (16, 32))
    assert pooled[8].noise_df == 6 and pooled[8].noise == pytest.approx(math.sqrt(rss / 6)) and rss > 0.0001
    # a width noisier than the pool keeps its own noise: pooling never makes an interval rest on less noise
    noisier = max((16, 32), key=lambda w: own[w].noise)
    assert pooled[noisier].noise == own[noisier].noise and pooled[noisier].noise_df == 2
    assert all(pooled[w].noise >= own[w].noise for w in (8, 16, 32))
    assert pooled[8].width > 0.2 and pooled[8].interval[0] <= -6.85 <= pooled[8].interval[1]
    # the point estimates do not move: only the intervals draw on the pooled noise
    assert all(pooled[w].value == pytest.approx(own[w].value) for w in (8, 16, 32))


def test_residual_noise_and_pooled_noise_checks():
    from proxytune.optimum_fit import residual_noise

    rng = np.random.default_rng(4)
    recs = _scan(16, -7.0, 0.02, rng)
    rss, df = residual_noise(recs)
    o = find_optimum(recs, n_boot=50)
    assert df == o.noise_df == 2 and rss == pytest.approx(o.noise ** 2 * 2)
    # a one-seed scan has no residual freedom of its own: pooled noise gives it an interval, not the bracket
    one = [r for r in _scan(16, -7.0, 0.001, rng) if r["seed"] == 0]
    assert residual_noise(one) == (0.0, 0)
    alone = find_optimum(one, n_boot=100)
    assert any("too few points and seeds" in n for n in alone.notes)
    helped = find_optimum(one, n_boot=100, pooled_noise=(rss, df))
    assert not any("too few points and seeds" in n for n in helped.notes) and helped.noise_df == 2
    assert len(helped.draws) > 10 and not alone.draws
    with pytest.raises(ValueError, match="pooled_noise"):
        find_optimum(recs, pooled_noise=(-1.0, 2))

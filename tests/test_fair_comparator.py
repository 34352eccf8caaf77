"""Fair comparators (issue 29, items 5 and 7): the demo and B1 compare best *measured* seed-mean grid losses, report
the fitted ones beside them, and do not claim a gain against a comparator whose optimum is on its grid's edge."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from proxytune import demo
from proxytune.optimum_fit import Optimum
from proxytune.sweep import SweepConfig

GRID = [-11.0, -10.0, -9.0, -8.0, -7.0, -6.0, -5.0]


def _optimum(width: int, *, fitted: float, measured: float, value: float, best: float, edge: str | None = None,
             grid: list[float] = GRID) -> Optimum:
    """An optimum whose fitted minimum (``fitted`` at ``value``) and best grid point (``measured`` at ``best``)
    differ, with 2 seeds and a known noise."""
    means = [measured + 0.05 * abs(x - best) for x in grid]
    return Optimum(group={"width": width}, hp="log2_lr", value=value, interval=(value - 0.5, value + 0.5),
                   loss=fitted, best_grid_value=best, best_grid_loss=measured, grid=list(grid), mean_losses=means,
                   n_seeds=2, method="quadratic", edge=edge, noise=0.02, noise_df=5, level_se=0.01)


def _tuned(opt: Optimum, recipe: str = "sp-perlayer") -> SimpleNamespace:
    """The parts of a TuneResult that the gain reads."""
    return SimpleNamespace(recipe=recipe, constants={"attn_mult": 2.0},
                           candidates=[SimpleNamespace(recipe=recipe, optima=[opt])])


def _gain(sp: Optimum, mup: Optimum, tuned: Optimum) -> tuple[dict, SimpleNamespace]:
    result = _tuned(tuned)
    small = {"sp": _optimum(32, fitted=2.7, measured=2.7, value=-7, best=-7),
             "mup": _optimum(32, fitted=2.7, measured=2.7, value=-7, best=-7)}
    return demo.tuned_gain(result, {"sp": [small["sp"], sp], "mup": [small["mup"], mup]}), result


def test_the_gain_compares_measured_losses_and_reports_the_fitted_beside_them():
    tuned = _optimum(256, fitted=2.150, measured=2.138, value=-6.6, best=-6.5)
    sp = _optimum(256, fitted=2.470, measured=2.460, value=-9.3, best=-9.0)
    mup = _optimum(256, fitted=2.529, measured=2.526, value=-7.9, best=-7.5)
    gain, result = _gain(sp, mup, tuned)
    assert gain["width"] == 256 and gain["loss"] == 2.138 and gain["loss_fitted"] == 2.150
    g = gain["sp"]
    assert g["loss"] == 2.460 and g["loss_fitted"] == 2.470
    assert g["gain"] == pytest.approx(2.460 - 2.138) and g["gain_fitted"] == pytest.approx(2.470 - 2.150)
    assert g["relative"] == pytest.approx((2.460 - 2.138) / 2.460)
    assert g["log2_lr"] == -9.0 and g["log2_lr_fitted"] == -9.3
    assert g["fair"] and g["edge"] is None and g["extend_to"] is None
    # the measured gap's noise: each point's seed-mean standard error (level and residual), both sides
    point_se = math.hypot(0.01, 0.02 / math.sqrt(2))
    assert g["se"] == pytest.approx(math.hypot(point_se, point_se))
    assert gain["mup"]["gain"] == pytest.approx(2.526 - 2.138)
    line = demo.gain_line(result, gain)
    assert "at width 256" in line and "loss 2.138 measured, 2.150 fitted with sp-perlayer" in line
    assert "(2.460 measured, 2.470 fitted): +0.322 ± 0.024 nats/byte (+13.1%; fitted +0.320)" in line
    assert "(2.526 measured, 2.529 fitted): +0.388" in line
    assert "NOT a fair" not in line and "extend" not in line
    table = "\n".join(demo.gain_table(gain))
    assert "| SP with its LR tuned at width 256 | 2.4600 (-9) | 2.4700 (-9.30) | +0.3220" in table
    assert "| yes |" in table and "**no**" not in table


def test_a_comparator_on_its_grid_edge_is_not_called_a_fair_comparison():
    tuned = _optimum(256, fitted=2.144, measured=2.144, value=-6.5, best=-6.5)
    sp = _optimum(256, fitted=2.460, measured=2.460, value=-11.0, best=-11.0, edge="low")
    mup = _optimum(256, fitted=2.529, measured=2.526, value=-7.9, best=-7.5)
    gain, result = _gain(sp, mup, tuned)
    assert not gain["sp"]["fair"] and gain["sp"]["edge"] == "low"
    assert gain["sp"]["extend_to"] == -13.0 and gain["sp"]["grid"] == [-11.0, -5.0]
    assert gain["mup"]["fair"]
    line = demo.gain_line(result, gain)
    sp_part = line.split("against SP", 1)[1]
    assert "NOT a fair comparison" in sp_part and "lowest of its grid (-11 .. -5)" in sp_part
    assert "extend its grid to log2 lr -13" in sp_part and "may be lower" in sp_part
    assert "NOT a fair" not in line.split("against SP", 1)[0]  # muP's comparison stands
    table = "\n".join(demo.gain_table(gain))
    assert "**no**: its best point is on the low edge of its grid (-11 .. -5)" in table
    assert "extend the grid to log2 lr -13" in table


def test_the_grid_extension_goes_two_steps_past_the_edge_and_the_tuned_side_edge_is_said():
    high = _optimum(256, fitted=2.2, measured=2.2, value=-5.0, best=-5.0, edge="high", grid=[-9.0, -8.0, -7.5, -7.0,
                                                                                                   -6.0, -5.0])
    assert demo.grid_extension(high) == -3.0
    assert demo.grid_extension(_optimum(256, fitted=2.2, measured=2.2, value=-7, best=-7)) is None
    sp = _optimum(256, fitted=2.47, measured=2.46, value=-9.3, best=-9.0)
    gain, result = _gain(sp, sp, high)
    assert gain["edge"] == "high"
    assert "its own best LR is on the high edge of its scan" in demo.gain_line(result, gain)
    assert "its best LR is on the high edge of its scan" in "\n".join(demo.gain_table(gain))


def test_one_seed_has_no_standard_error_and_a_grid_fallback_uses_the_level_alone():
    o = _optimum(256, fitted=2.4, measured=2.4, value=-8, best=-8)
    o.level_se, o.noise = math.nan, math.nan
    assert math.isnan(demo.measured_se(o))
    o.level_se = 0.01
    assert demo.measured_se(o) == pytest.approx(0.01)


def test_sp_sweeps_reach_lower_than_the_shared_grid_and_the_trial_counts_follow(tmp_path):
    # SP's optimum falls with width, so its grid reaches lower than muP's; on the cpu preset it also stops an
    # octave lower (-5: SP's best point sat at -7.5 at the base and lower at every wider proxy, 2026-12-06)
    for preset in demo.PRESETS:
        sweeps = demo.demo_sweeps(tmp_path, preset, workers=2)
        sp, mup = (sweeps[r].axes["log2_lr"].values() for r in ("sp", "mup"))
        assert sp[0] <= mup[0] and {x for x in mup if x <= sp[-1]} <= set(sp)
        widths = len(demo.PRESETS[preset]["widths"])
        seeds = demo.PRESETS[preset]["seeds"]
        assert demo.preset_trials(preset, "sp") == len(sp) * widths * seeds
        assert demo.preset_trials(preset, "mup") == demo.preset_trials(preset) == len(mup) * widths * seeds
    cpu = demo.demo_sweeps(tmp_path, "cpu", workers=2)
    sp, mup = cpu["sp"].axes["log2_lr"].values(), cpu["mup"].axes["log2_lr"].values()
    assert (sp[0], sp[-1], mup[0], mup[-1]) == (-12, -5, -10, -4)
    # the tune run searches the shared grid: the SP extension costs it nothing
    assert demo.demo_tune_config(tmp_path, "cpu", 2).search.lr.values() == mup
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def transfer(bench_script):
    return bench_script("transfer")


def test_b1_compares_with_measured_best_losses_and_flags_a_reference_on_its_edge(transfer):
    at = {"sp": {256: _optimum(256, fitted=2.310, measured=2.3044, value=-10.54, best=-10.5)},
          "mup": {256: _optimum(256, fitted=2.335, measured=2.330, value=-7.84, best=-8.0)},
          "tune": {256: _optimum(256, fitted=2.062, measured=2.0628, value=-5.5, best=-5.5)}}
    ref = transfer.comparators(at, 256)
    assert ref["best"] == 2.0628 and ref["best_row"] == "tune" and ref["best_fitted"] == 2.062
    assert ref["sp"] == 2.3044 and ref["sp_fitted"] == 2.310 and ref["edge"] == {}
    regret, fitted = (2.0734 - 2.0628) / 2.0628, (2.0734 - 2.062) / 2.062
    assert transfer.regret_cell(2.0734, ref) == f"{regret:+.2%} (fitted {fitted:+.2%})"
    goal = transfer.goal_line(ref, 2.0734, 256, "yes", 0.92)
    assert f"{(2.3044 - 2.0734) / 2.3044:+.2%} (fitted {(2.310 - 2.0734) / 2.310:+.2%}) -> met" in goal
    assert "not judged" not in goal and "Not fair" not in transfer.reference_line(ref, 256)
    # SP's best point on the low end of its grid: its best loss may be lower, the goal against it is not judged
    at["sp"][256] = _optimum(256, fitted=2.31, measured=2.31, value=-11, best=-11, edge="low")
    ref = transfer.comparators(at, 256)
    assert list(ref["edge"]) == ["sp"]
    line = transfer.reference_line(ref, 256)
    assert "Not fair: sp's best measured log2 lr at width 256, -11, is the low end of its grid (-11 .. -5)" in line
    assert "extend its grid to log2 lr -13" in line
    goal = transfer.goal_line(ref, 2.0734, 256, "yes", 0.92)
    assert goal.count("not judged (sp on the grid edge at 256, see above)") == 2 and "-> met" not in goal.split(";")[0]


def test_b1_sp_row_reaches_lower_on_the_gpu_only(tmp_path, bench_script):
    b1_rows = bench_script("b1_rows")
    for preset, low in (("cpu", -12), ("gpu", -16)):
        sp = SweepConfig.from_dict(b1_rows.row_sweep(preset, "sp", "sp", tmp_path))
        mup = SweepConfig.from_dict(b1_rows.row_sweep(preset, "mup", "mup", tmp_path))
        assert sp.axes["log2_lr"].values()[0] == low
        assert mup.axes["log2_lr"].values()[0] == b1_rows.PRESETS[preset]["lr"]["start"]

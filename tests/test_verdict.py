"""The transfer verdict's three states, its intervals and its shared thresholds, on synthetic sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxytune.analysis.optimum import optima_by_group
from proxytune.analysis.verdict import transfer_verdict
from proxytune.thresholds import THRESHOLDS


def bowl_rows(width, opt, *, seeds=(0, 1), noise=0.0, floor=3.0, curv=0.05, grid=range(-12, -1), rng=None,
              offsets=None):
    out = []
    for s in seeds:
        shift = 0.0 if offsets is None else offsets[s]
        for x in grid:
            eps = rng.normal(0, noise) if rng is not None else 0.0
            out.append({"width": width, "log2_lr": float(x), "seed": s, "status": "complete",
                        "val_loss": floor + shift + curv * (x - opt) ** 2 + eps})
    return out


WIDTHS = (32, 64, 128, 256)


def test_still_optimum_passes_and_wider_is_better():
    recs = [r for w in WIDTHS for r in bowl_rows(w, -7.0, floor=3.0 - 0.1 * math.log2(w), offsets={0: 0.0, 1: 0.01})]
    v = transfer_verdict(optima_by_group(recs, "log2_lr"), "width")
    assert v.state == "PASS" and v.passed and v.line.startswith("PASS")
    assert abs(v.drift_per_doubling) < 1e-6 and v.drift_interval[0] <= 0 <= v.drift_interval[1]
    assert v.wider_is_better == "yes" and v.relative_regret == pytest.approx(0.0, abs=1e-9)
    # the line states the limits it judged by, which are the shared ones
    assert f"limit +-{THRESHOLDS.max_drift_per_doubling:g}" in v.line
    assert f"limit {THRESHOLDS.max_relative_regret:.1%}" in v.line


def test_drifting_optimum_fails_with_the_least_squares_slope():
    # -1 octave per doubling, but the last width's optimum is 0.5 octave off the line: the verdict's drift is
    # the least-squares slope over all widths, not (last - first) / doublings
    opts = [-5.0, -6.0, -7.0, -7.5]
    recs = [r for w, o in zip(WIDTHS, opts) for r in bowl_rows(w, o)]
    v = transfer_verdict(optima_by_group(recs, "log2_lr"), "width")
    x = np.log2(WIDTHS)
    expected = float(np.polyfit(x, opts, 1)[0])
    assert v.drift_per_doubling == pytest.approx(expected, abs=1e-6)
    assert v.state == "FAIL" and v.failed and v.line.startswith("FAIL")
    assert v.regret == pytest.approx(0.05 * 2.5 ** 2, rel=1e-6)  # 2.5 octaves off a 0.05-curvature bowl


def test_noisy_small_sweep_is_unresolved_with_advice():
    # 2 widths, heavy noise: a still optimum cannot be told from a drifting one
    rng = np.random.default_rng(3)
    recs = [r for w in (32, 64) for r in bowl_rows(w, -7.0, noise=0.15, curv=0.02, grid=range(-10, -3), rng=rng)]
    v = transfer_verdict(optima_by_group(recs, "log2_lr"), "width")
    lo, hi = v.drift_interval
    assert lo <= v.drift_per_doubling <= hi
    assert v.state == "UNRESOLVED", v.line
    assert any("more seeds" in a for a in v.advice), v.advice


def test_unresolved_instead_of_pass_when_an_optimum_is_on_the_grid_edge():
    recs = [r for w in WIDTHS for r in bowl_rows(w, -7.0, grid=range(-7, -1))]  # the optimum is the lowest point
    v = transfer_verdict(optima_by_group(recs, "log2_lr"), "width")
    assert v.state == "UNRESOLVED" and any("extend" in a for a in v.advice)


def test_thresholds_can_be_overridden_and_are_checked():
    opts = [-7.0, -7.3, -7.6, -7.9]  # -0.3 octave per doubling
    recs = [r for w, o in zip(WIDTHS, opts) for r in bowl_rows(w, o)]
    optima = optima_by_group(recs, "log2_lr")
    assert transfer_verdict(optima, "width").state == "FAIL"
    loose = transfer_verdict(optima, "width", {"max_drift_per_doubling": 0.5, "max_relative_regret": 0.05})
    assert loose.state == "PASS" and "limit +-0.5" in loose.line
    with pytest.raises(ValueError, match="unknown thresholds"):
        transfer_verdict(optima, "width", {"max_drift": 1.0})
    with pytest.raises(ValueError, match="2 or more"):
        transfer_verdict(optima[:1], "width")

"""One learning rate per question (issue 29, item 3): a width drift is carried to the target only when the transfer
verdict resolved it; otherwise the proxies' optima are pooled (the recipe's claim), and the answer says which."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxytune.analysis.carry import carry_lr
from proxytune.analysis.optimum import optima_by_group

WIDTHS = (32, 64, 128, 256)


def _optima(slope: float, noise: float, seed: int = 0, seeds: int = 2):
    """Optima per width from parabolas whose minimum moves ``slope`` octaves per doubling, with seed noise."""
    rng = np.random.default_rng(seed)
    recs = []
    for w in WIDTHS:
        opt = -7.0 + slope * math.log2(w / WIDTHS[0])
        for s in range(seeds):
            for x in range(-14, -1):
                loss = 3.0 + 0.05 * (x - opt) ** 2 + rng.normal(0, noise)
                recs.append({"width": w, "log2_lr": float(x), "seed": s, "val_loss": loss, "status": "complete"})
    return optima_by_group(recs, "log2_lr")


def _log2w(optima):
    return [math.log2(o.group["width"]) for o in optima]


def test_a_resolved_drift_is_extrapolated_to_the_target():
    optima = _optima(slope=-1.0, noise=0.001)
    c = carry_lr(optima, _log2w(optima), math.log2(1024), target_size=1024, size_name="width")
    assert c.verdict is not None and c.verdict.failed
    assert c.extrapolated and c.slope == pytest.approx(-1.0, abs=0.05)
    # the line carried 2 doublings past 256, where the optimum is -10: about -12
    assert c.value == pytest.approx(-12.0, abs=0.15)
    assert c.interval[0] <= c.value <= c.interval[1]
    assert c.source.startswith("the measured drift, extrapolated") and "FAIL" in c.source


def test_an_unresolved_drift_is_not_extrapolated_and_says_why():
    # a drift of -0.3 per doubling in seed noise of 0.08: the verdict cannot resolve it at 4 widths and 2 seeds
    optima = _optima(slope=-0.3, noise=0.08, seed=1)
    c = carry_lr(optima, _log2w(optima), math.log2(4096), target_size=4096, recipe="mup", size_name="width")
    assert c.verdict is not None and c.verdict.state == "UNRESOLVED", c.verdict.line
    assert not c.extrapolated and c.slope == 0.0
    assert c.value == pytest.approx(float(np.mean([o.value for o in optima])))
    assert c.fitted_slope < -0.1  # a line was fitted, and not used
    assert "not extrapolated" in c.source and "mup's claim that the optimum does not move" in c.source
    # how far the unresolved drift could move the optimum at the target: 4 doublings x its interval
    lo, hi = c.verdict.drift_interval
    assert f"4.0 doublings past the largest proxy would move the optimum {4 * lo:+.1f} .. {4 * hi:+.1f}" in c.source


def test_a_pass_uses_the_pooled_optimum():
    optima = _optima(slope=0.0, noise=0.0005)
    c = carry_lr(optima, _log2w(optima), math.log2(2048), target_size=2048, size_name="width")
    assert c.verdict.passed and not c.extrapolated
    assert c.value == pytest.approx(-7.0, abs=0.05)
    assert "PASS" in c.source and "within the limit" in c.source


def test_without_a_target_a_resolved_drift_gives_the_largest_proxys_optimum():
    optima = _optima(slope=-1.0, noise=0.001)
    c = carry_lr(optima, _log2w(optima), None, size_name="width")
    big = max(optima, key=lambda o: o.group["width"])
    assert c.value == big.value and not c.extrapolated
    assert "largest proxy" in c.source and "no target" in c.source


def test_one_size_is_its_own_optimum():
    optima = [o for o in _optima(slope=0.0, noise=0.001) if o.group["width"] == 64]
    c = carry_lr(optima, _log2w(optima), math.log2(512), target_size=512)
    assert c.verdict is None and c.value == optima[0].value and "one size" in c.source

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
    assert v.passed and abs(v.drift) < 1e-6 and v.wider_is_better and v.line.startswith("PASS")
    drifting = [r for i, w in enumerate((32, 64, 128, 256)) for r in rows(w, -5.0 - i, grid=range(-12, -2))]
    v = transfer_verdict(optima_by_group(drifting, "log2_lr"), "width")
    assert not v.passed and v.drift == pytest.approx(-3.0, abs=1e-6)
    assert v.drift_per_doubling == pytest.approx(-1.0, abs=1e-6)
    assert v.regret == pytest.approx(0.05 * 9, rel=1e-6)  # 3 octaves off a 0.05-curvature bowl
    assert "limit" in v.line and v.line.startswith("FAIL")
    with pytest.raises(ValueError, match="2 or more"):
        transfer_verdict(optima_by_group(rows(32, -7.0), "log2_lr"), "width")

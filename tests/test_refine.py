"""The refinement pass of grid sweeps: half-step points around each size's optimum, run once, after the grid."""

from __future__ import annotations

import numpy as np

from proxytune.analysis.optimum import optima_by_group
from proxytune.sweep import Sweep

TRAIN = {"depth": 1, "steps": 16, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 2}


def config(tmp_path, **strategy):
    return {"name": "r", "model": "gpt", "data_options": {"max_bytes": 200_000}, "base": {"width": 32, "depth": 1},
            "axes": {"width": [32, 48], "log2_lr": {"start": -11, "stop": -3, "step": 2}, "seed": [0, 1]},
            "train": dict(TRAIN), "strategy": {"kind": "grid", **strategy},
            "executor": {"workers": 1, "threads": 1, "batch": 5}, "runs_dir": str(tmp_path / "runs")}


def noisy_records(rng):
    out = []
    for w in (32, 48):
        for s in (0, 1):
            for x in range(-11, -2, 2):
                out.append({"width": w, "log2_lr": float(x), "seed": s, "status": "complete",
                            "val_loss": 3.0 + 0.01 * (x + 7.3) ** 2 + rng.normal(0, 0.05)})
    return out


def test_refinement_points_are_half_steps_around_each_optimum_with_every_seed(tmp_path):
    sw = Sweep.from_dict(config(tmp_path))
    recs = noisy_records(np.random.default_rng(0))
    optima = {o.group["width"]: o for o in optima_by_group(recs, "log2_lr", size_axes=["width"])}
    points = sw.refinement_points(recs)
    assert points, "a 2-octave grid with this noise leaves intervals wider than a step"
    for w, o in optima.items():
        mine = [p for p in points if p["width"] == w]
        assert sorted({p["log2_lr"] for p in mine}) == sorted(o.refine)
        assert all(abs(p["log2_lr"] - o.best_grid_value) == 1.0 for p in mine)  # half of the 2-octave step
        assert sorted({p["seed"] for p in mine}) == ([0, 1] if o.refine else [])
    assert Sweep.from_dict(config(tmp_path / "off", refine=False)).refinement_points(recs) == []


def test_sweep_runs_the_refinement_pass_once_after_the_grid(tmp_path):
    sw = Sweep.from_dict(config(tmp_path))
    counts = sw.run()
    records = sw.records()
    stage0 = [r for r in records if r["stage"] == 0]
    stage1 = [r for r in records if r["stage"] == 1]
    assert len(stage0) == 2 * 5 * 2
    assert sorted((r["width"], r["log2_lr"], r["seed"]) for r in stage1) == sorted(
        (p["width"], p["log2_lr"], p["seed"]) for p in sw.refinement_points(stage0))
    assert all(r["log2_lr"] % 2 != 1 for r in stage1)  # off the coarse (odd) grid: the half steps
    assert counts["complete"] + counts["diverged"] == len(records)
    # resuming adds nothing: the pass runs once
    again = Sweep.open(tmp_path / "runs" / "r").run()
    assert sum(again.values()) == sum(counts.values())

"""The B1 and B2 benchmark presets build valid sweeps and tune configs, so `python bench/transfer.py --preset gpu`
does not first fail on a config error on the day a GPU is there (CI has none, so it is never run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from proxytune.sweep import SweepConfig

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        import b1_rows
        import transfer
        yield b1_rows, transfer
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_every_b1_row_and_the_tune_config_validate(bench_modules, preset, tmp_path):
    b1_rows, transfer = bench_modules
    p = b1_rows.PRESETS[preset]
    configs = [SweepConfig.from_dict(b1_rows.row_sweep(preset, name, recipe, tmp_path))
               for name, recipe in [("sp", "sp"), ("mup", "mup"), ("mup-tuned", "mup"),
                                    ("sp-perlayer-tuned", "sp-perlayer")]]
    # the rows differ only in recipe and constants: same widths, seeds and training settings; SP's grid may
    # reach lower (its optimum falls with width) and the tuned rows' higher (their constants move it up), each
    # holding every point of muP's
    sp, first = configs[0], configs[1]
    for c in configs:
        assert c.train == first.train and c.axes["width"] == first.axes["width"]
        assert c.axes["seed"] == first.axes["seed"]
        assert set(first.axes["log2_lr"].values()) <= set(c.axes["log2_lr"].values())
    assert min(sp.axes["log2_lr"].values()) <= min(first.axes["log2_lr"].values())
    assert all(max(c.axes["log2_lr"].values()) >= max(first.axes["log2_lr"].values()) for c in configs[2:])
    tcfg = transfer.tune_config(preset, str(tmp_path))
    assert tcfg.base["width"] == p["widths"][0]
    assert list(tcfg.widths) == p["widths"][1:]
    assert max(p["widths"]) >= 8 * p["widths"][0]  # stage 2 verifies at 8x the base at least
    assert not any(tmp_path.iterdir())  # validating writes nothing


def test_the_cpu_preset_is_the_issue_grid(bench_modules):
    b1_rows, _ = bench_modules
    p = b1_rows.PRESETS["cpu"]
    assert p["widths"] == [32, 64, 128, 256] and p["seeds"] == 2 and p["train"]["steps"] == 300
    assert b1_rows.PRESETS["gpu"]["widths"] == [128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_every_b2_row_validates(bench_modules, preset, tmp_path):
    """B2 (bench/depth.py): every row is a valid sweep over depth at one width, from the shallowest as base."""
    sys.path.insert(0, str(BENCH))
    try:
        import depth
    finally:
        sys.path.remove(str(BENCH))
    p = depth.PRESETS[preset]
    configs = {row: SweepConfig.from_dict(depth.row_sweep(preset, row, str(tmp_path))) for row in depth.ROWS}
    for row, c in configs.items():
        assert c.axes["depth"] == p["depths"] and c.base["depth"] == p["depths"][0]
        assert c.axes == configs["mup"].axes and c.train == configs["mup"].train
    assert configs["completep-muon"].optimizer == "muon" and configs["completep"].recipe == "completep"

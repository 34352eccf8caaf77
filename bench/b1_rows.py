"""The sweeps behind B1 (width transfer): one grid sweep per row, same model, data, steps, grid and seeds (SP's
grid may reach lower, so that its optimum at the largest width is inside it).

Shared by ``bench/transfer.py`` (which runs and analyses them) so a row's stored
sweep is found again by name and identity, and resumes instead of rerunning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# widths 8x apart; 300 steps, 2 seeds, 1-octave grid refined by half octaves near each optimum. ``row_lr``
# overrides ``lr`` for one row: B1 compares every row with SP swept at the largest width, which is fair only when
# SP's optimum there is inside its grid (issue 29, item 7). On the CPU it is (-10.54 at 256, grid from -12). On
# the GPU preset it is extrapolated: SP's optimum fell 0.85..1.3 octaves per doubling on the CPU (B1, B6), and
# 2048 is 4 doublings above 128, so it may fall below -14; the SP row reaches 2 octaves lower. The tuned rows
# reach 2 octaves higher: with the constants tune found on 2026-12-06 their optimum was the old grid's top, -4.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"widths": [32, 64, 128, 256], "lr": {"start": -12, "stop": -4, "step": 1}, "depth": 2, "seeds": 2,
            "workers": 2, "threads": 1, "row_lr": {"mup-tuned": {"stop": -2}, "sp-perlayer-tuned": {"stop": -2}},
            "train": {"steps": 300, "batch_size": 16, "seq_len": 64, "eval_every": 300, "eval_batches": 8}},
    "gpu": {"widths": [128, 256, 512, 1024, 2048], "lr": {"start": -14, "stop": -4, "step": 1}, "depth": 4,
            "seeds": 2, "workers": 1, "threads": 4,
            "row_lr": {"sp": {"start": -16}, "mup-tuned": {"stop": -2}, "sp-perlayer-tuned": {"stop": -2}},
            "train": {"steps": 2000, "batch_size": 32, "seq_len": 256, "eval_every": 500, "eval_batches": 16,
                      "device": "cuda", "precision": "bf16"}},
}


def train_fields(preset: str) -> dict[str, Any]:
    """The fixed training settings of every row of ``preset``."""
    p = PRESETS[preset]
    return {"depth": p["depth"], "warmup": 0.1, "schedule": "cosine", "final_lr_frac": 0.1, "betas": [0.9, 0.95],
            "weight_decay": 0.0, **p["train"]}


def row_lr(preset: str, name: str) -> dict[str, float]:
    """The log2 LR grid (``{start, stop, step}``) of row ``name`` in ``preset``: the preset's ``lr`` with the
    row's own ``row_lr`` fields over it."""
    p = PRESETS[preset]
    return {**p["lr"], **p.get("row_lr", {}).get(name, {})}


def row_sweep(preset: str, name: str, recipe: str, runs_dir: str | Path,
              constants: dict[str, Any] | None = None, lr: dict[str, float] | None = None) -> dict[str, Any]:
    """The sweep dict of one B1 row: ``recipe`` with fixed ``constants`` (TrainConfig fields such as
    ``role_lr``, ``role_init``, ``output_mult``), a log2 LR grid at every width (``lr``, else the row's own,
    :func:`row_lr`), ``seeds`` seeds."""
    p = PRESETS[preset]
    gpu = p["train"].get("device") == "cuda"
    return {
        "name": f"b1-{preset}-{name}", "model": "gpt", "data": "stdlib", "recipe": recipe, "optimizer": "adamw",
        "base": {"width": p["widths"][0], "depth": p["depth"]},
        "axes": {"width": p["widths"], "log2_lr": dict(lr or row_lr(preset, name)), "seed": list(range(p["seeds"]))},
        "train": {**train_fields(preset), **(constants or {})},
        "executor": {"workers": p["workers"], "threads": p["threads"], "batch": 8 if gpu else 1},
        "runs_dir": str(runs_dir),
    }

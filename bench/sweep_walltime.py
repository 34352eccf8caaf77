"""Wall time of one small grid sweep under four executor settings.

3 widths x 6 learning rates of the reference GPT (18 trials), run with the
local executor: 1 or 2 worker processes, batched trials off (batch 1) or on
(the 6 LRs of a width train together). Each setting runs the same sweep into
a fresh directory; the ratios are measured in one run of this script.

    python bench/sweep_walltime.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _common import ROOT, provenance, write_section

from proxytune.sweep import Sweep

SETTINGS = [
    ("1 worker x 2 threads, batched off", dict(workers=1, threads=2, batch=1)),
    ("2 workers x 1 thread, batched off", dict(workers=2, threads=1, batch=1)),
    ("1 worker x 2 threads, batched on (K = 6)", dict(workers=1, threads=2, batch=6)),
    ("2 workers x 1 thread, batched on (K = 6)", dict(workers=2, threads=1, batch=6)),
]


def sweep_dict(runs_dir: str, steps: int, executor: dict) -> dict:
    return {
        "name": "walltime",
        "model": "gpt",
        "base": {"width": 32, "depth": 2},
        "axes": {"width": [32, 64, 128], "log2_lr": {"start": -10, "stop": -5, "step": 1}},
        "train": {"depth": 2, "steps": steps, "batch_size": 16, "seq_len": 64, "warmup": 0.1,
                  "eval_every": steps, "eval_batches": 4, "betas": [0.9, 0.95]},
        "executor": dict(executor, lease_seconds=120),
        "runs_dir": runs_dir,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for label, executor in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            sweep = Sweep.from_dict(sweep_dict(tmp, args.steps, executor))
            t0 = time.perf_counter()
            counts = sweep.run(poll_seconds=0.5)
            wall = time.perf_counter() - t0
            losses = {(r["width"], r["log2_lr"]): r["val_loss"] for r in sweep.records()}
        rows.append((label, wall, counts, losses))
        print(f"{label}: {wall:.1f}s {counts}", flush=True)
    ref = rows[0][1]
    worst = max(abs(a - rows[0][3][k]) for _, _, _, losses in rows[1:] for k, a in losses.items())
    lines = [
        provenance("sweep_walltime.py", "cpu", 2),
        f"Sweep: reference GPT depth 2, widths 32, 64, 128 x log2 lr -10 .. -5 (18 trials), {args.steps} steps, "
        "batch 16, seq 64, mup + AdamW; local executor, journal-file store. Wall time includes starting the "
        "worker processes (spawn + import torch) and the store's polling.",
        "",
        "| executor | wall time (s) | vs 1 worker, batched off | trials complete |",
        "|---|---|---|---|",
    ] + [f"| {label} | {wall:.1f} | {ref / wall:.2f}x | {counts['complete']} of 18 |"
         for label, wall, counts, _ in rows] + [
        "",
        f"Largest val-loss difference of a trial across the four settings: {worst:.2e}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", "B4b. Sweep wall time, executors (CPU)", text)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

"""What starting local workers costs a sweep: the fork server against spawned workers.

``proxytune tune`` runs many short sweeps (one per stage), each of which starts its
worker processes. This runs the same tiny sweep (2 trials of a few steps, 2
workers) ``--repeats`` times in one process, alternating between workers forked
from the fork server (the default) and workers spawned afresh (each imports
torch and proxytune), and reports the wall time per sweep. The first forked
sweep starts the fork server itself and is reported apart. The trials'
losses must agree across the two start methods.

    python bench/worker_start.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time

from _common import emit, provenance

import proxytune.sweep.runner as runner
from proxytune.sweep import Sweep


def sweep_dict(runs_dir: str) -> dict:
    return {"name": "start", "model": "gpt", "data_options": {"max_bytes": 200_000},
            "base": {"width": 32, "depth": 1}, "axes": {"width": [32], "log2_lr": [-8, -7]},
            "train": {"depth": 1, "steps": 5, "batch_size": 4, "seq_len": 32, "eval_every": 5, "eval_batches": 1},
            "strategy": {"kind": "grid", "refine": False},
            "executor": {"kind": "local", "workers": 2, "threads": 1}, "runs_dir": runs_dir}


def one_sweep(method: str) -> tuple[float, dict]:
    """Wall time of one fresh sweep with workers started by ``method``, and its losses."""
    forked = runner._context
    if method == "spawn":
        runner._context = lambda: mp.get_context("spawn")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sweep = Sweep.from_dict(sweep_dict(tmp))
            t0 = time.perf_counter()
            counts = sweep.run()
            wall = time.perf_counter() - t0
            if counts["complete"] != 2:
                raise RuntimeError(f"{method}: {counts}")
            return wall, {r["log2_lr"]: r["val_loss"] for r in sweep.records()}
    finally:
        runner._context = forked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    first, _ = one_sweep("forkserver")  # starts the fork server
    print(f"first forked sweep (starts the fork server): {first:.2f} s", flush=True)
    walls: dict[str, list[float]] = {"forkserver": [], "spawn": []}
    losses: dict[str, dict] = {}
    for k in range(args.repeats):
        for method in ("spawn", "forkserver") if k % 2 else ("forkserver", "spawn"):
            wall, loss = one_sweep(method)
            walls[method].append(wall)
            losses[method] = loss
            print(f"{method}: {wall:.2f} s", flush=True)
    diff = max(abs(losses["spawn"][x] - losses["forkserver"][x]) for x in losses["spawn"])
    med = {m: statistics.median(w) for m, w in walls.items()}
    lines = [
        provenance("worker_start.py", "cpu", 1),
        "A sweep of 2 trials (reference GPT width 32, depth 1, 5 steps), 2 local workers x 1 thread, journal store, "
        f"run {args.repeats} times per start method in one process, the two methods alternating.",
        "",
        "| workers started by | wall time per sweep, median (min .. max) |",
        "|---|---|",
        *(f"| {m} | {med[m]:.2f} s ({min(w):.2f} .. {max(w):.2f}) |" for m, w in walls.items()),
        "",
        f"The first forked sweep, which also starts the fork server: {first:.2f} s. Saved per sweep: "
        f"{med['spawn'] - med['forkserver']:.2f} s ({med['spawn'] / med['forkserver']:.1f}x). Largest loss "
        f"difference between the two methods: {diff:.1e}.",
    ]
    emit(lines, "B4f. Starting workers: fork server vs spawn (CPU)", write=not args.no_write)


if __name__ == "__main__":
    main()

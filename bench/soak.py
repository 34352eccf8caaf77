"""Soak: a CLI sweep killed with SIGKILL at random moments, resumed each time, then checked exactly-once.

Each cycle starts ``proxytune sweep`` (the first time) or ``proxytune resume`` in a process group of its
own, waits a random time, and kills the whole group (the sweep and its workers) with SIGKILL, as a node
failure or the OOM killer would. After every kill the finished results are read back; at the end one last
resume runs the sweep to completion. Checked:

- every point complete exactly once (``lost``: points with no complete trial; ``duplicated``: points with
  two or more);
- no finished result ever changed after it was first seen (``changed``), across all snapshots;
- torn journal records cut off on the way (``torn``: the side files the repair left).

    python bench/soak.py --cycles 20 --out bench/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

SWEEP = {
    "name": "soak", "model": "gpt", "data_options": {"max_bytes": 200_000}, "model_options": {"head_dim": 8},
    "base": {"width": 16, "depth": 1},
    "axes": {"width": [16, 32], "log2_lr": [-11, -10, -9, -8, -7, -6, -5, -4], "seed": [0, 1, 2, 3, 4, 5]},
    "train": {"depth": 1, "steps": 200, "batch_size": 4, "seq_len": 16, "eval_every": 100, "eval_batches": 1},
    "strategy": {"kind": "grid", "refine": False},
    "executor": {"kind": "local", "workers": 2, "threads": 1, "batch": 1, "lease_seconds": 10},
}


def finished(run_dir: Path) -> tuple[dict[str, float], Counter]:
    """{point_id: val_loss} of the complete trials, and how many complete trials each point has."""
    from optuna.trial import TrialState

    from proxytune.sweep import Sweep

    store = Sweep.open(run_dir).store()
    done = store.trials((TrialState.COMPLETE,))
    per_point = Counter(t.user_attrs["point_id"] for t in done)
    return {t.user_attrs["point_id"]: t.values[0] for t in done}, per_point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--min-wait", type=float, default=1.0, help="seconds before a kill, at least")
    ap.add_argument("--max-wait", type=float, default=8.0, help="seconds before a kill, at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="proxytune-soak-"))
    cfg = work / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({**SWEEP, "runs_dir": str(work / "runs")}))
    run_dir = work / "runs" / "soak"
    exe = [sys.executable, "-m", "proxytune.cli"]
    seen: dict[str, float] = {}
    changed = 0
    duplicated_ever = 0
    snapshots = 0
    mid_sweep = 0  # kills that landed while points were still left to run
    n_points = 1
    for v in SWEEP["axes"].values():
        n_points *= len(v)
    t0 = time.time()
    for cycle in range(args.cycles):
        cmd = exe + (["sweep", str(cfg)] if cycle == 0 else ["resume", str(run_dir)])
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(args.min_wait, args.max_wait))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if not (run_dir / "trials.journal").exists():
            continue
        values, per_point = finished(run_dir)
        snapshots += 1
        mid_sweep += len(values) < n_points
        duplicated_ever = max(duplicated_ever, sum(1 for n in per_point.values() if n > 1))
        for pid, v in values.items():
            if pid in seen and seen[pid] != v:
                changed += 1
            seen.setdefault(pid, v)
        print(f"cycle {cycle + 1}/{args.cycles}: {len(values)} points complete", flush=True)
    final = subprocess.run(exe + ["resume", str(run_dir)], cwd=work, capture_output=True, text=True)
    values, per_point = finished(run_dir)
    for pid, v in values.items():
        if pid in seen and seen[pid] != v:
            changed += 1
    torn = len(list(run_dir.glob("trials.journal.torn-*")))
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(), "cycles": args.cycles, "kills_mid_sweep": mid_sweep, "snapshots": snapshots, "points": n_points,
        "complete": len(values), "lost": n_points - len(values),
        "duplicated": sum(1 for n in per_point.values() if n > 1), "duplicated_in_any_snapshot": duplicated_ever,
        "changed": changed, "torn_records_repaired": torn, "final_resume_exit": final.returncode,
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Soak: a CLI sweep stopped at random moments, resumed each time, then checked exactly-once.

Each cycle starts ``proxytune sweep`` (the first time) or ``proxytune resume`` in a process group of its
own, waits a random time, and stops it one of these ways (``--kills``, one picked at random per cycle):

- ``group``: SIGKILL to the whole group (the sweep and its workers), as a node failure or the OOM killer would;
- ``sweep``: SIGKILL to the sweep process alone: its workers must notice and stop on their own;
- ``term`` / ``hup``: SIGTERM / SIGHUP to the sweep process alone (a scheduler, systemd, a closed terminal):
  a clean stop, like Ctrl-C.

After every stop the finished results are read back; at the end one last resume runs the sweep to completion.
``--program command`` sweeps a shell command instead of the built-in trainer: each trial sleeps, leaves a child
in its process group and one in a session of its own (``setsid``), and reports a result that depends only on
its point. Checked:

- every point complete exactly once (``lost``: points with no complete trial; ``duplicated``: points with
  two or more);
- no finished result ever changed after it was first seen (``changed``), across all snapshots;
- torn journal records cut off on the way (``torn``: the side files the repair left);
- a clean stop exits 143 (SIGTERM) or 129 (SIGHUP), prints the ``stopped;`` line and leaves no trial running;
- processes left behind: any process of the soak (a worker, a command, a child it left) still alive after a
  clean stop, 15 s after a SIGKILL of the sweep alone, or after the last resume. Must be 0. (After a SIGKILL
  of the whole group a dead worker's command children stay until the next resume re-queues its trial: counted
  apart, and they must be gone at the end.)

    python bench/soak.py --cycles 20 --out bench/results/soak.json
    python bench/soak.py --program command --kills term,hup,sweep,group --cycles 30 --out bench/results/soak_stop.json
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
from typing import Any

import yaml

from proxytune.sweep.program import processes_with_env

SWEEP = {
    "name": "soak", "model": "gpt", "data_options": {"max_bytes": 200_000}, "model_options": {"head_dim": 8},
    "base": {"width": 16, "depth": 1},
    "axes": {"width": [16, 32], "log2_lr": [-11, -10, -9, -8, -7, -6, -5, -4], "seed": [0, 1, 2, 3, 4, 5]},
    "train": {"depth": 1, "steps": 200, "batch_size": 4, "seq_len": 16, "eval_every": 100, "eval_batches": 1},
    "strategy": {"kind": "grid", "refine": False},
    "executor": {"kind": "local", "workers": 2, "threads": 1, "batch": 1, "lease_seconds": 10},
}


# A command trial: sleeps 1 to 3 s (by seed), leaves two children that would sleep for an hour, and reports a
# result that depends only on its point (so a changed result is a real change).
TRIAL_SH = """sleep 3600 &
setsid sleep 3600 &
sleep $(( 1 + $3 % 3 ))
printf '{"final": %s, "metrics": {"tokens": %s}}\\n' "$2" "$4" >> "$1/reports.jsonl"
"""
COMMAND = {"command": ["sh", "trial.sh", "{trial_dir}", "{lr}", "{seed}", "{width}"], "kill_grace": 2}
TAG = "PROXYTUNE_SOAK"  # an environment variable every process of the soak inherits: how its leftovers are found
SIGNALS = {"term": signal.SIGTERM, "hup": signal.SIGHUP, "sweep": signal.SIGKILL, "group": signal.SIGKILL}


def tagged(tag: str) -> list[int]:
    """Live (not zombie) processes that carry this soak's tag."""
    return processes_with_env(TAG, tag)


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            continue
    return out


def wait_gone(tag: str, exclude: set[int], seconds: float) -> tuple[list[int], float]:
    """Wait up to ``seconds`` for the tagged processes (but ``exclude``) to end: those left, and the time taken."""
    t0 = time.time()
    while True:
        left = [p for p in tagged(tag) if p not in exclude]
        if not left or time.time() - t0 > seconds:
            return left, time.time() - t0
        time.sleep(0.1)


def sweep_config(program: str, work: Path, steps: int) -> dict[str, Any]:
    if program == "gpt":
        return {**SWEEP, "train": {**SWEEP["train"], "steps": steps}, "runs_dir": str(work / "runs")}
    (work / "trial.sh").write_text(TRIAL_SH)
    cfg = {k: v for k, v in SWEEP.items() if k not in ("model", "data_options", "model_options", "train")}
    return {**cfg, "program": {**COMMAND, "cwd": str(work)}, "runs_dir": str(work / "runs")}


def finished(run_dir: Path) -> tuple[dict[str, float], Counter]:
    """{point_id: val_loss} of the complete trials, and how many complete trials each point has."""
    from optuna.trial import TrialState

    from proxytune.sweep import Sweep

    store = Sweep.open(run_dir).store()
    done = store.trials((TrialState.COMPLETE,))
    per_point = Counter(t.user_attrs["point_id"] for t in done)
    return {t.user_attrs["point_id"]: t.values[0] for t in done}, per_point


def running(run_dir: Path) -> int:
    from optuna.trial import TrialState

    from proxytune.sweep import Sweep

    return len(Sweep.open(run_dir).store().trials((TrialState.RUNNING,)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--min-wait", type=float, default=1.0, help="seconds before a kill, at least")
    ap.add_argument("--max-wait", type=float, default=8.0, help="seconds before a kill, at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--program", choices=("gpt", "command"), default="gpt",
                    help="the built-in trainer, or a shell command that leaves children behind")
    ap.add_argument("--steps", type=int, default=SWEEP["train"]["steps"], help="training steps of a gpt trial")
    ap.add_argument("--kills", default="group", help="how a cycle stops the sweep, one picked at random: "
                                                     "group, sweep, term, hup (comma-separated)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kills.split(",")]
    if not kinds or any(k not in SIGNALS for k in kinds):
        ap.error(f"--kills: choose from {', '.join(SIGNALS)}")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="proxytune-soak-"))
    cfg = work / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(sweep_config(args.program, work, args.steps)))
    run_dir = work / "runs" / "soak"
    exe = [sys.executable, "-m", "proxytune.cli"]
    env = {**os.environ, TAG: str(work)}
    kills: Counter = Counter()
    clean = {"stops": 0, "exit_as_expected": 0, "stopped_line": 0, "done_before_the_signal": 0,
             "before_the_handlers": 0, "running_after": 0}
    left_behind = 0  # processes alive after a clean stop, or 15 s after a SIGKILL of the sweep alone
    left_by_group_kill = 0  # a dead worker's command children, until the next resume re-queues its trial
    left_what: list[str] = []  # the command lines of those, to see what they were
    workers_gone_s: list[float] = []  # after a SIGKILL of the sweep alone: until its last worker was gone
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
        kind = rng.choice(kinds)
        # Children a group kill left: the resume below must end them (checked at the end), they are not this cycle's.
        before = set(tagged(str(work)))
        cmd = exe + (["sweep", str(cfg)] if cycle == 0 else ["resume", str(run_dir)])
        log = work / f"cycle-{cycle:03d}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, cwd=work, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env)
        time.sleep(rng.uniform(args.min_wait, args.max_wait))
        done_already = proc.poll() is not None
        kills[kind] += 1
        try:
            if kind == "group":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, SIGNALS[kind])
        except ProcessLookupError:
            pass
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a clean stop that does not end is a finding: record it, go on
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        if kind in ("term", "hup"):
            clean["stops"] += 1
            if done_already:
                clean["done_before_the_signal"] += 1
            elif rc == -SIGNALS[kind]:  # still importing: Python's default action, nothing had started
                clean["before_the_handlers"] += 1
            else:
                clean["exit_as_expected"] += rc == 128 + SIGNALS[kind]
                clean["stopped_line"] += "stopped; `proxytune resume" in log.read_text(errors="replace")
            left, _ = wait_gone(str(work), before, 5.0)  # the sweep waited for its workers: nothing may be left
            left_behind += len(left)
            left_what += describe(left)
        elif kind == "sweep":
            left, took = wait_gone(str(work), before, 15.0)
            left_behind += len(left)
            left_what += describe(left)
            workers_gone_s.append(took)
        else:
            left, _ = wait_gone(str(work), before, 2.0)
            left_by_group_kill += len(left)
        if not (run_dir / "trials.journal").exists():
            print(f"cycle {cycle + 1}/{args.cycles} ({kind}): stopped before the sweep started", flush=True)
            continue
        if kind in ("term", "hup") and rc == 128 + SIGNALS[kind]:
            clean["running_after"] += running(run_dir)
        values, per_point = finished(run_dir)
        snapshots += 1
        mid_sweep += len(values) < n_points
        duplicated_ever = max(duplicated_ever, sum(1 for n in per_point.values() if n > 1))
        for pid, v in values.items():
            if pid in seen and seen[pid] != v:
                changed += 1
            seen.setdefault(pid, v)
        print(f"cycle {cycle + 1}/{args.cycles} ({kind}, exit {rc}): {len(values)} points complete", flush=True)
    final = subprocess.run(exe + ["resume", str(run_dir)], cwd=work, capture_output=True, text=True, env=env)
    left_at_end, _ = wait_gone(str(work), set(), 5.0)
    left_what += describe(left_at_end)
    for pid in left_at_end:  # report them, then do not leave them running on the machine
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
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
        "final_running": running(run_dir), "program": args.program, "kills": dict(kills),
        "clean_stops": clean, "processes_left_behind": left_behind + len(left_at_end),
        "logs_with_a_traceback": sum(1 for f in work.glob("cycle-*.log")
                                     if "Traceback" in f.read_text(errors="replace")),
        "left_at_end": len(left_at_end), "left_behind_were": sorted(set(left_what))[:10],
        "left_by_group_kills_until_next_resume": left_by_group_kill,
        "workers_gone_after_sweep_kill_max_s": round(max(workers_gone_s), 1) if workers_gone_s else None,
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

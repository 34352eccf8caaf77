"""Per-trial overhead of a ``program`` sweep: ``function`` and ``command`` trials vs the bare training call.

The same user training loop (examples/mytrain.py, ``train(width, depth, lr, steps=S)``) runs three ways,
all in one run of this script, with one torch thread each:

- direct: ``mytrain.train(...)`` called in this process (one warm-up call, then ``--n`` timed calls, half
  of them before the sweeps and half after);
- direct with a trial (a reference): the same calls with an in-process ``proxytune.Trial`` (no sweep, no
  store), so the loop builds the mup plan and its optimizer as it does under a sweep;
- script (a reference for the command form, unless ``--no-script``): ``python train_script.py ...`` run
  ``--n`` times as a plain subprocess, no sweep, so the interpreter's start and ``import torch`` are counted;
- function: a sweep with ``program: {function: "mytrain:run"}`` (one local worker process, ``--n`` points);
- command: a sweep with ``program: {command: ["{python}", "train_script.py", ...]}`` (a process per trial).

The ``--n`` points differ only in their seed (width, depth, LR and steps fixed), and the direct calls use the
same seeds. For each sweep the per-trial time is measured three ways: from the store (each trial's
``datetime_complete - datetime_start``: claim to stored result), end to end (the sweep's wall time / n,
which also pays the worker's spawn and imports once, and up to one poll of the runner at the end), and the
time inside the program as stored (``wall_time``).

Note: under a sweep, mytrain builds its optimizer through ``trial.parameterize`` (the sweep's recipe at this
width, the plan saved once per shape) where the direct call uses plain ``torch.optim.AdamW``: that cost is
part of the measured overhead.

    python bench/program_overhead.py --out bench/results/program_overhead.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, machine, provenance

EXAMPLES = ROOT / "examples"


def direct_times(args, seeds: range, warm_up: bool) -> tuple[list[float], list[float]]:
    """Wall time of each direct ``mytrain.train`` call (after one warm-up call): plain (``trial=None``, AdamW),
    and with an in-process :class:`proxytune.Trial` (no sweep, no store: the mup plan and its optimizer, the
    reports going nowhere), alternating, so machine noise hits both alike."""
    sys.path.insert(0, str(EXAMPLES))
    import mytrain

    from proxytune.sweep.trial import DirectChannel, Trial

    lr = 2.0 ** args.log2_lr

    def trial(seed: int) -> Trial:
        info = {"sweep": "direct", "number": seed, "trial_id": seed, "point": {}, "recipe": "mup",
                "optimizer": "adamw", "params": {"lr": lr, "steps": args.steps, "seed": seed},
                "width": args.width, "depth": args.depth, "base_width": args.base_width, "base_depth": args.depth,
                "dir": "", "plans_dir": None, "pruning": False}
        return Trial(info, DirectChannel(None))

    if warm_up:
        mytrain.train(args.width, args.depth, lr, steps=args.steps, seed=0)
        mytrain.train(args.width, args.depth, lr, steps=args.steps, seed=0, trial=trial(0))
    plain, with_trial = [], []
    for seed in seeds:
        t0 = time.perf_counter()
        mytrain.train(args.width, args.depth, lr, steps=args.steps, seed=seed)
        plain.append(time.perf_counter() - t0)
        t = trial(seed)
        t0 = time.perf_counter()
        mytrain.train(args.width, args.depth, lr, steps=args.steps, seed=seed, trial=t)
        with_trial.append(time.perf_counter() - t0)
    return plain, with_trial


def script_times(args) -> list[float]:
    """Wall time of each ``python train_script.py ...`` run on its own (a process per run, no sweep): what a
    command trial costs before proxytune adds anything (the interpreter's start, importing torch)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PROXYTUNE_TRIAL"}
    env["OMP_NUM_THREADS"] = str(args.threads)
    times = []
    for seed in range(args.n):
        argv = [sys.executable, "train_script.py", "--width", str(args.width), "--depth", str(args.depth),
                "--lr", repr(2.0 ** args.log2_lr), "--seed", str(seed), "--steps", str(args.steps)]
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=EXAMPLES, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def sweep_times(kind: str, args, runs_dir: Path) -> dict:
    """Run an ``n``-point program sweep of ``kind`` ('function' or 'command'); its per-trial times."""
    from optuna.trial import TrialState

    from proxytune.sweep import Sweep

    if kind == "function":
        program = {"function": "mytrain:run"}
    else:
        program = {"command": ["{python}", "train_script.py", "--width", "{width}", "--depth", "{depth}",
                               "--lr", "{lr}", "--seed", "{seed}", "--steps", "{steps}"],
                   # the command's own process: one torch (OpenMP) thread, as the worker and the direct calls
                   "env": {"OMP_NUM_THREADS": str(args.threads)}}
    d = {
        "name": f"program-overhead-{kind}",
        "program": {**program, "cwd": str(EXAMPLES), "params": {"steps": args.steps}},
        "recipe": "mup", "optimizer": "adamw",
        "base": {"width": args.base_width, "depth": args.depth},
        "axes": {"width": [args.width], "log2_lr": [args.log2_lr], "seed": list(range(args.n))},
        "strategy": {"kind": "grid", "refine": False},
        "executor": {"kind": "local", "workers": 1, "threads": args.threads},
        "runs_dir": str(runs_dir),
    }
    sweep = Sweep.from_dict(d)
    t0 = time.perf_counter()
    wall0 = datetime.datetime.now()
    counts = sweep.run()
    total = time.perf_counter() - t0
    trials = sweep.store().trials((TrialState.COMPLETE,))
    records = [r for r in sweep.records() if r["status"] == "complete"]
    if len(trials) != args.n or len(records) != args.n:
        raise SystemExit(f"{kind} sweep: expected {args.n} completed trials, got {counts}; see {sweep.cfg.run_dir}")
    trials.sort(key=lambda t: t.datetime_start)
    store = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    gaps = [(b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(trials, trials[1:])]
    return {
        "sweep_wall_s": total,
        "end_to_end_per_trial_s": total / args.n,
        "store_s": store,
        "store_median_s": statistics.median(store),
        "program_wall_s": [r["wall_time"] for r in records],
        "program_wall_median_s": statistics.median(r["wall_time"] for r in records),
        # per trial, the same time window: claim to stored result minus the time inside the program
        "bookkeeping_median_s": statistics.median(
            (t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["result"]["wall_time"]
            for t in trials),
        "first_start_after_s": (trials[0].datetime_start - wall0).total_seconds(),
        "between_trials_median_s": statistics.median(gaps) if gaps else None,
        "first_start_to_last_complete_s": (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds(),
        "val_loss_median": statistics.median(r["val_loss"] for r in records),
    }


def ms(seconds: float) -> str:
    """'+123 ms' (no '-0')."""
    return f"{round(1000 * seconds):+d} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--base-width", type=int, default=32, help="the sweep's base width (muP)")
    ap.add_argument("--steps", type=int, default=250, help="about 1 s a direct call on a busy 2-core CPU")
    ap.add_argument("--log2-lr", type=float, default=-8.0)
    ap.add_argument("--n", type=int, default=10, help="direct calls / trials per sweep (medians over these)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads: direct, worker and command alike")
    ap.add_argument("--no-script", action="store_true", help="skip the plain-subprocess reference runs")
    ap.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    # The direct calls bracket the sweeps (the first half of the seeds before, the rest after), so a change in
    # the machine's load during the run hits the reference as well.
    half = args.n // 2
    direct, direct_trial = direct_times(args, range(half), warm_up=True)
    with tempfile.TemporaryDirectory(prefix="proxytune-program-overhead-") as tmp:
        func = sweep_times("function", args, Path(tmp) / "runs")
        cmd = sweep_times("command", args, Path(tmp) / "runs")
    script = None if args.no_script else script_times(args)
    after, after_trial = direct_times(args, range(half, args.n), warm_up=False)
    direct, direct_trial = direct + after, direct_trial + after_trial
    elapsed = time.perf_counter() - t_start

    d_med = statistics.median(direct)
    d_mean = statistics.fmean(direct)
    dt_med = statistics.median(direct_trial)
    dt_mean = statistics.fmean(direct_trial)
    rows = []
    for label, r in (("function trial", func), ("command trial", cmd)):
        rows.append({
            "mode": label,
            "store_median_s": r["store_median_s"], "store_ratio": r["store_median_s"] / d_med,
            "store_overhead_ms": 1000 * (r["store_median_s"] - d_med),
            "end_to_end_s": r["end_to_end_per_trial_s"], "end_to_end_ratio": r["end_to_end_per_trial_s"] / d_mean,
            "end_to_end_overhead_ms": 1000 * (r["end_to_end_per_trial_s"] - d_mean),
            "program_wall_median_s": r["program_wall_median_s"], "bookkeeping_median_s": r["bookkeeping_median_s"],
        })

    lines = [
        provenance("program_overhead.py", "cpu", args.threads)
        + f" The machine was shared with other jobs (load average {os.getloadavg()[0]:.2f} at the end).",
        f"Program: examples/mytrain.py `train(width={args.width}, depth={args.depth}, lr=2**{args.log2_lr:g}, "
        f"steps={args.steps})`; {args.n} seeds each; sweeps: local executor, 1 worker, {args.threads} torch "
        f"thread(s), recipe mup from base {args.base_width}x{args.depth}. Whole script: {elapsed:.0f} s.",
        "",
        "| mode | per trial, median (store) | / direct | overhead | per trial, end to end | / direct | "
        "overhead | inside the program (median) | store minus inside (median) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| direct call | {d_med:.3f} s | 1.00x | - | {d_mean:.3f} s (mean) | 1.00x | - | - | - |",
        f"| direct call with a trial, no sweep (reference) | {dt_med:.3f} s | {dt_med / d_med:.2f}x | "
        f"{ms(dt_med - d_med)} | {dt_mean:.3f} s (mean) | {dt_mean / d_mean:.2f}x | "
        f"{ms(dt_mean - d_mean)} | - | - |",
    ] + ([
        f"| script, no sweep (reference) | {statistics.median(script):.3f} s | "
        f"{statistics.median(script) / d_med:.2f}x | {ms(statistics.median(script) - d_med)} | "
        f"{statistics.fmean(script):.3f} s (mean) | {statistics.fmean(script) / d_mean:.2f}x | "
        f"{ms(statistics.fmean(script) - d_mean)} | - | - |"] if script else []) + [
        f"| {r['mode']} | {r['store_median_s']:.3f} s | {r['store_ratio']:.2f}x | {ms(r['store_overhead_ms'] / 1000)} "
        f"| {r['end_to_end_s']:.3f} s | {r['end_to_end_ratio']:.2f}x | {ms(r['end_to_end_overhead_ms'] / 1000)} "
        f"| {r['program_wall_median_s']:.3f} s | {1000 * r['bookkeeping_median_s']:.0f} ms |" for r in rows
    ] + [
        "",
        "Store: `datetime_complete - datetime_start` of each trial (claim to stored result), median; its overhead "
        "is that minus the median direct call. End to end: the sweep's wall time / "
        f"{args.n} (includes spawning the worker and its imports once, and the runner's last 1 s poll), against "
        "the mean direct call. Inside the program: the stored `wall_time`; store minus inside: per trial, the "
        "sweep's own work around the program (claim, trial info, storing the result), the same time window for both, "
        "so the figure least moved by the machine's load. Script, no sweep: "
        "`python train_script.py ...` as a plain subprocess per run (what any command pays: the interpreter, "
        "`import torch`). Direct call with a trial: `train(..., trial=Trial(...))` in this process, no sweep "
        "(the mup plan, its per-tensor optimizer groups, three reports).",
        f"Sweep machinery alone (store median minus the with-trial direct median): function "
        f"{ms(func['store_median_s'] - dt_med)}"
        + (f", command {ms(cmd['store_median_s'] - dt_med - (statistics.median(script) - d_med))} "
           "(also minus the script reference's start-up)" if script else "") + ".",
        f"Sweep wall time: function {func['sweep_wall_s']:.1f} s (first trial started after "
        f"{func['first_start_after_s']:.1f} s), command {cmd['sweep_wall_s']:.1f} s (first trial started after "
        f"{cmd['first_start_after_s']:.1f} s); median gap between trials: function "
        f"{1000 * func['between_trials_median_s']:.0f} ms, command {1000 * cmd['between_trials_median_s']:.0f} ms.",
    ]
    print("\n".join(lines))

    if args.out:
        out = {
            "command": "python bench/program_overhead.py " + " ".join(sys.argv[1:]),
            "argv": sys.argv, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "machine": machine("cpu", args.threads), "loadavg_end": os.getloadavg(),
            "note": "machine shared with other jobs", "args": vars(args), "elapsed_s": elapsed,
            "direct_s": direct, "direct_median_s": d_med, "direct_mean_s": d_mean,
            "direct_trial_s": direct_trial, "direct_trial_median_s": dt_med, "direct_trial_mean_s": dt_mean,
            "script_s": script, "script_median_s": statistics.median(script) if script else None,
            "function": func, "command_trial": cmd, "rows": rows,
        }
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Stopping a sweep from outside: SIGTERM / SIGHUP to the sweep process, kill -9 of the sweep process alone,
and the processes a command trial leaves behind.

Every CLI here runs in a process group of its own, and the signal goes to the sweep process only (not to the
group, as a terminal's Ctrl-C would): what a scheduler, systemd or ``kill PID`` does. The workers are found by
an environment variable the test gives the sweep, which they inherit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from proxytune.sweep import Sweep
from proxytune.sweep.program import processes_with_env
from sweep_helpers import completes_per_point, wait_for

CLI = [sys.executable, "-m", "proxytune.cli"]

# A function trial with no torch in it, slow enough to be caught running.
PROGRAM = textwrap.dedent('''
    import math, time

    def run(trial):
        p = trial.params
        for step in range(1, int(p["steps"]) + 1):
            time.sleep(float(p["sleep"]))
            trial.report(step, (math.log2(p["lr"]) + 7) ** 2 / 10 + 1.0 / step)
        return (math.log2(p["lr"]) + 7) ** 2 / 10
''')

# A command that leaves a child in its process group and one in a session of its own (setsid), writes their
# pids, reports its result through the reports file (what Trial.current().finish() writes, without importing
# proxytune: a second of start-up saved per trial) and ends as asked: ok (exit 0), fail (exit 3) or hang.
LEAVER = textwrap.dedent('''
    sleep 300 &
    echo $! >> "$1/pids"
    setsid sleep 300 &
    echo $! >> "$1/pids"
    "$3" -c 'import json, os
    info = json.load(open(os.environ["PROXYTUNE_TRIAL"]))
    open(info["reports"], "a").write(json.dumps({"final": 1.5, "metrics": {}}) + "\\n")'
    case "$2" in
        fail) exit 3 ;;
        hang) sleep 300 ;;
    esac
''')


def _sweep_file(tmp_path: Path, points: int = 6, sleep: float = 0.5, steps: int = 6, workers: int = 2) -> Path:
    (tmp_path / "stopping_prog.py").write_text(PROGRAM)
    d = {
        "name": "s",
        "program": {"function": "stopping_prog:run", "cwd": str(tmp_path), "params": {"sleep": sleep, "steps": steps}},
        "base": {"width": 32, "depth": 2},
        "axes": {"width": [32], "log2_lr": list(range(-10, -10 + points))},
        "strategy": {"kind": "grid", "refine": False},
        "executor": {"workers": workers, "threads": 1, "lease_seconds": 20},
        "runs_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _start(args: list[str], tmp_path: Path, tag: str) -> subprocess.Popen:
    env = {**os.environ, "PROXYTUNE_TEST_STOPPING": tag}
    return subprocess.Popen(CLI + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _tagged(tag: str) -> list[int]:
    """Live (not zombie) processes started under this test's tag: the sweep, its workers, their programs."""
    return processes_with_env("PROXYTUNE_TEST_STOPPING", tag)


def _running(run_dir: Path) -> list:
    if not ((run_dir / "trials.journal").exists() and (run_dir / "sweep.yaml").exists()):
        return []  # the store is created before the sweep's saved copy
    return [t for t in Sweep.open(run_dir).store().trials((TrialState.RUNNING,)) if "lease" in t.user_attrs]


def _status(run_dir: Path, tmp_path: Path) -> dict:
    out = subprocess.run(CLI + ["status", str(run_dir), "--json"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["counts"]


def _kill_group(proc: subprocess.Popen, tag: str) -> None:
    """Clean up after a failed test: whatever of this test still runs."""
    for pid in [proc.pid, *_tagged(tag)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()


# ------------------------------------------------------------------ signals
@pytest.mark.parametrize("command, sig, status", [("sweep", signal.SIGTERM, 143), ("resume", signal.SIGHUP, 129)],
                         ids=["sweep-SIGTERM", "resume-SIGHUP"])
def test_a_signal_to_the_sweep_process_stops_it_like_ctrl_c(tmp_path, command, sig, status):
    path = _sweep_file(tmp_path, workers=1)  # one worker starts sooner on a small machine; the kill -9 test has two
    run_dir = tmp_path / "runs" / "s"
    tag = f"{tmp_path}:{sig}"
    if command == "resume":
        Sweep.from_yaml(path).prepare()  # a sweep that never ran: resume runs it all
    proc = _start(["sweep", str(path)] if command == "sweep" else ["resume", str(run_dir)], tmp_path, tag)
    try:
        wait_for(lambda: _running(run_dir), timeout=90)
        workers = [p for p in _tagged(tag) if p != proc.pid]
        assert workers
        os.kill(proc.pid, sig)  # the sweep process only, not its group
        rc = proc.wait(timeout=60)
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            _kill_group(proc, tag)
    assert rc == status, output[-3000:]
    assert f"stopped; `proxytune resume {run_dir}` continues" in output, output[-3000:]
    wait_for(lambda: not _tagged(tag), timeout=5, every=0.1)  # a worker outlived the sweep if this fails
    counts = _status(run_dir, tmp_path)
    assert counts["running"] == 0, counts
    assert counts["waiting"] + counts["complete"] == 6, "the running trials were given back"


@pytest.mark.parametrize("then_resume", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["workers", "then-resume"])
def test_workers_stop_on_their_own_when_the_sweep_process_is_killed(tmp_path, then_resume):
    path = _sweep_file(tmp_path, points=4, sleep=0.4, steps=5)
    run_dir = tmp_path / "runs" / "s"
    tag = f"{tmp_path}:kill"
    proc = _start(["sweep", str(path)], tmp_path, tag)
    try:
        wait_for(lambda: _running(run_dir), timeout=90)
        assert [p for p in _tagged(tag) if p != proc.pid]
        os.kill(proc.pid, signal.SIGKILL)  # the sweep alone: its workers are orphans now
        proc.wait()
        killed = time.time()
        wait_for(lambda: not _tagged(tag), timeout=30, every=0.1)
        gone_after = time.time() - killed
    finally:
        if proc.poll() is None or _tagged(tag):
            _kill_group(proc, tag)
    assert gone_after < 10, f"the workers took {gone_after:.1f} s to notice"
    store = Sweep.open(run_dir).store()
    assert not store.trials((TrialState.RUNNING,)), "the workers gave their trials back before they exited"
    assert store.trials((TrialState.WAITING,)), "the workers stopped rather than running the sweep to its end"
    if not then_resume:
        return
    again = subprocess.run(CLI + ["resume", str(run_dir)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert set(completes_per_point(Sweep.open(run_dir)).values()) == {1}
    assert len(completes_per_point(Sweep.open(run_dir))) == 4


def test_resume_waits_for_a_trial_that_a_live_worker_elsewhere_still_runs(tmp_path):
    """A trial held by a live process that is not this run's (a worker another sweep process left, one on
    another machine): resume used to end at once, exit 0, its final table saying 'running 1' while the trial
    ran on. It now waits for it."""
    path = _sweep_file(tmp_path, points=1, sleep=1.0, steps=6, workers=1)
    run_dir = tmp_path / "runs" / "s"
    Sweep.from_yaml(path).prepare()
    tag = f"{tmp_path}:elsewhere"
    code = ("import sys; from proxytune.sweep import Sweep, run_worker; "
            "run_worker(Sweep.open(sys.argv[1]).cfg.model_dump(mode='json'))")
    other = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=tmp_path,
                             env={**os.environ, "PROXYTUNE_TEST_STOPPING": tag}, start_new_session=True)
    try:
        wait_for(lambda: _running(run_dir), timeout=90, every=0.1)
        res = subprocess.run(CLI + ["resume", str(run_dir), "--workers", "1"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=240)
        after = _status(run_dir, tmp_path)
        assert other.wait(timeout=60) == 0
    finally:
        if other.poll() is None:
            _kill_group(other, tag)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert after["running"] == 0 and after["complete"] == 1, after


@pytest.mark.slow
def test_a_sigterm_to_tune_stops_its_sweep_like_ctrl_c(tmp_path):
    (tmp_path / "stopping_prog.py").write_text(PROGRAM)
    d = {"name": "t",
         "program": {"function": "stopping_prog:run", "cwd": str(tmp_path), "params": {"sleep": 0.5, "steps": 6}},
         "recipes": ["mup"], "base": {"width": 32, "depth": 2}, "widths": [64, 128], "target": {"width": 256},
         "search": {"strategy": "oat", "lr": {"start": -9, "stop": -5, "step": 1}, "multipliers": [],
                    "rounds": 1, "span": 1, "lr_span": 1, "finalists": 1},
         "executor": {"workers": 2, "threads": 1}, "runs_dir": str(tmp_path / "runs")}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(d))
    tag = f"{tmp_path}:tune"
    proc = _start(["tune", str(path)], tmp_path, tag)

    def stages() -> list[Path]:
        return [j.parent for j in (tmp_path / "runs").rglob("trials.journal")]

    try:
        wait_for(lambda: any(_running(r) for r in stages()), timeout=120)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            _kill_group(proc, tag)
    assert rc == 143, output[-3000:]
    assert f"stopped; `proxytune tune {path}` continues" in output, output[-3000:]
    wait_for(lambda: not _tagged(tag), timeout=5, every=0.1)
    assert not any(Sweep.open(r).store().trials((TrialState.RUNNING,)) for r in stages())


# ------------------------------------------------------- a command's children
def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _marked(trial_file: str) -> list[int]:
    marker = f"PROXYTUNE_TRIAL={trial_file}".encode() + b"\0"
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes() and _pid_alive(int(proc.name)):
                out.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.parametrize("mode, status", [("ok", "complete"), ("fail", "failed"), ("hang", "failed")])
def test_a_command_trial_ends_every_process_it_started(tmp_path, mode, status):
    """The command's child in its process group and its setsid child (reparented to init, outside the group)
    are ended with the trial: exit 0, a non-zero exit, a timeout."""
    (tmp_path / "leaver.sh").write_text(LEAVER)
    d = {
        "name": "c",
        "program": {"command": ["sh", "leaver.sh", "{trial_dir}", mode, "{python}"], "cwd": str(tmp_path), "timeout": 3,
                    "kill_grace": 1},
        "base": {"width": 32, "depth": 2}, "axes": {"width": [32], "log2_lr": [-7]},
        "strategy": {"kind": "grid", "refine": False}, "executor": {"kind": "inline"},
        "runs_dir": str(tmp_path / "runs"),
    }
    sw = Sweep.from_dict(d)
    counts = sw.run()
    assert counts[status] == 1, counts
    trial = sw.store().trials()[0]
    folder = Path(trial.user_attrs["program"]["trial_file"]).parent
    pids = [int(x) for x in (folder / "pids").read_text().split()]
    assert len(pids) == 2, "the command started both children"
    wait_for(lambda: not any(_pid_alive(p) for p in pids), timeout=5, every=0.05)
    assert not _marked(trial.user_attrs["program"]["trial_file"])


def test_a_sigterm_to_a_command_sweep_ends_the_commands_children(tmp_path):
    """The worker stops mid-trial: the command, its group and its setsid child all end, and the trial is given
    back."""
    (tmp_path / "leaver.sh").write_text(LEAVER)
    d = {
        "name": "c",
        "program": {"command": ["sh", "leaver.sh", "{trial_dir}", "hang", "{python}"], "cwd": str(tmp_path),
                    "kill_grace": 1},
        "base": {"width": 32, "depth": 2}, "axes": {"width": [32], "log2_lr": [-7, -6]},
        "strategy": {"kind": "grid", "refine": False}, "executor": {"workers": 1, "threads": 1},
        "runs_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    run_dir = tmp_path / "runs" / "c"
    tag = f"{tmp_path}:command"
    proc = _start(["sweep", str(path)], tmp_path, tag)
    try:
        running = wait_for(lambda: [t for t in _running(run_dir) if "program" in t.user_attrs], timeout=90)
        folder = Path(running[0].user_attrs["program"]["trial_file"]).parent
        wait_for(lambda: (folder / "pids").exists() and len((folder / "pids").read_text().split()) == 2,
                 timeout=20, every=0.1)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            _kill_group(proc, tag)
    assert rc == 143
    pids = [int(x) for x in (folder / "pids").read_text().split()]
    assert not any(_pid_alive(p) for p in pids)
    wait_for(lambda: not _tagged(tag), timeout=5, every=0.1)
    assert not Sweep.open(run_dir).store().trials((TrialState.RUNNING,))


# A stop raised by a signal handler inside one of Python's at-fork hooks is printed and dropped ("Exception
# ignored in ..."). Popen with a preexec_fn runs those hooks: a SIGTERM that landed there was lost, and the
# worker ran on. This hook raises a signal in that spot, on demand.
_FORK_STOP: list[int] = []


def _stop_in_fork_hook() -> None:
    if _FORK_STOP:
        signal.raise_signal(_FORK_STOP.pop())


os.register_at_fork(after_in_parent=_stop_in_fork_hook)


def test_a_stop_that_lands_while_a_command_starts_is_not_lost(tmp_path):
    from proxytune.sweep.program import StopRequested

    def raise_stop(signum, frame):
        raise StopRequested("SIGTERM")

    d = {
        "name": "f",
        "program": {"command": ["sh", "-c", "sleep 5"], "cwd": str(tmp_path), "kill_grace": 1},
        "base": {"width": 32, "depth": 2}, "axes": {"width": [32], "log2_lr": [-7]},
        "strategy": {"kind": "grid", "refine": False}, "executor": {"kind": "inline"},
        "runs_dir": str(tmp_path / "runs"),
    }
    sw = Sweep.from_dict(d)
    previous = signal.signal(signal.SIGTERM, raise_stop)
    start = time.time()
    try:
        _FORK_STOP.append(signal.SIGTERM)
        with pytest.raises(StopRequested):
            sw.run()
    finally:
        _FORK_STOP.clear()
        signal.signal(signal.SIGTERM, previous)
    assert time.time() - start < 4, "the command ran on: the stop was lost"
    store = sw.store()
    assert not store.trials((TrialState.RUNNING,)) and len(store.trials((TrialState.WAITING,))) == 1
    trial_file = store.trials()[0].user_attrs["program"]["trial_file"]
    assert not _marked(trial_file)

"""Sweeping a user's own training code: program.function and program.command."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

import proxytune as pt
from proxytune.cli import app
from proxytune.sweep import Sweep, SweepConfigError
from sweep_helpers import completes_per_point, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A training "program" with no torch in it: the loss is a bowl in log2 lr, lower for wider models, falling
# with steps. Fast, deterministic, and enough to exercise everything around the program.
PROGRAM = textwrap.dedent('''
    import math, os, sys, time

    def loss_at(lr, width, step):
        return (math.log2(lr) + 7) ** 2 / 10 + 64 / width + 1.0 / step

    def run(trial):
        p = trial.params
        lr, steps = p["lr"], int(p.get("steps", 4))
        if p.get("fail_lr") is not None and abs(math.log2(lr) - p["fail_lr"]) < 1e-9:
            raise RuntimeError("boom at this learning rate")
        if p.get("kill_lr") is not None and abs(math.log2(lr) - p["kill_lr"]) < 1e-9:
            os.kill(os.getpid(), 9)
        noise = 0.003 * ((trial.seed * 7919) % 5)  # seeds differ a little, as real runs do
        for step in range(1, steps + 1):
            time.sleep(float(p.get("sleep", 0)))
            trial.report(step, loss_at(lr, trial.width, step) + noise,
                         train_loss=loss_at(lr, trial.width, step) + 0.1)
        trial.set(tokens=1000 * steps, n_params=trial.width ** 2 * 10 + trial.width * 5)
        return loss_at(lr, trial.width, steps) + noise

    def diverges_at_32(trial):
        trial.set(n_params=10 * trial.width ** 2 + 5 * trial.width, tokens=1000)
        if trial.width == 32 or trial.params.get("all_diverge"):
            return math.inf
        return (math.log2(trial.params["lr"]) + 1) ** 2 / 10 + 64 / trial.width

    def returns_nothing(trial):
        trial.report(1, 3.0)

    def returns_text(trial):
        return "low"

    def spins(trial):
        while True:
            time.sleep(0.05)

    if __name__ == "__main__":  # the command form: python prog.py LR [MODE]
        import proxytune as pt
        trial = pt.Trial.current()
        lr, mode = float(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "ok")
        assert abs(lr - trial.params["lr"]) < 1e-12, (lr, trial.params)
        if mode == "crash":
            print("something went wrong in the data loader", file=sys.stderr)
            sys.exit(3)
        if mode == "hang":
            time.sleep(600)
        steps = int(trial.params.get("steps", 4))
        for step in range(1, steps + 1):
            time.sleep(float(trial.params.get("sleep", 0)))
            trial.report(step, loss_at(lr, trial.width, step))
        if mode != "no-result":
            trial.finish(loss_at(lr, trial.width, steps), tokens=1000 * steps)
        print("done")
''')


def program_dir(tmp_path: Path) -> Path:
    (tmp_path / "prog.py").write_text(PROGRAM)
    return tmp_path


def sweep_dict(tmp_path: Path, program: dict, **over) -> dict:
    d = {
        "name": "p",
        "program": {"cwd": str(program_dir(tmp_path)), **program},
        "base": {"width": 32, "depth": 2},
        "axes": {"width": [32, 64], "log2_lr": [-9, -7, -5]},
        "strategy": {"kind": "grid", "refine": False},
        "executor": {"workers": 2, "lease_seconds": 20},
        "runs_dir": str(tmp_path / "runs"),
    }
    d.update(over)
    return d



FUNCTION = {"function": "prog:run"}
COMMAND = {"command": ["{python}", "prog.py", "{lr}"]}


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("program, over, message", [
    ({"function": "prog:run", "command": ["x"]}, {}, "exactly one of program.function"),
    ({}, {}, "exactly one of program.function"),
    ({"function": "prog"}, {}, "expected 'module:function'"),
    ({"function": "prog:run", "timout": 3}, {}, "did you mean 'timeout'"),
    ({"command": ["{python}", "prog.py", "{lrr}"]}, {}, "did you mean 'lr'"),
    ({"function": "prog:run"}, {"model": "mlp"}, "a program builds its own model"),
    ({"function": "prog:run"}, {"executor": {"batch": 4}}, "one trial at a time"),
    ({"function": "prog:run"}, {"axes": {"dropuot": [0.1]}}, "unknown axis key 'dropuot'"),
    ({"function": "prog:run", "params": {"drop-out": 1}}, {}, "not a valid name"),
    ({"function": "prog:run", "timeout": 0}, {}, "program.timeout"),
])
def test_program_config_errors_name_the_key(tmp_path, program, over, message):
    d = sweep_dict(tmp_path, program, **over)
    if not program:
        d["program"] = {}
    with pytest.raises(SweepConfigError, match=message):
        Sweep.from_dict(d)


@pytest.mark.parametrize("program, message", [
    ({"function": "nosuchmodule:run"}, "cannot import 'nosuchmodule'"),
    ({"function": "prog:nosuchfunction"}, "has no function 'nosuchfunction'"),
    ({"function": "missing.py:run"}, "not found"),
    ({"command": ["no-such-program-xyz", "{lr}"]}, "not found"),
])
def test_program_that_cannot_start_is_refused_before_anything_is_written(tmp_path, program, message):
    sw = Sweep.from_dict(sweep_dict(tmp_path, program))
    with pytest.raises(SweepConfigError, match=message):
        sw.run()
    assert not (tmp_path / "runs").exists()


def test_program_params_are_axes_and_reach_the_program(tmp_path):
    d = sweep_dict(tmp_path, {"function": "prog:run", "params": {"steps": 3, "dropout": 0.1}},
                   axes={"width": [32], "log2_lr": [-7], "dropout": [0.0, 0.2]}, executor={"kind": "inline"})
    sw = Sweep.from_dict(d)
    assert sw.run()["complete"] == 2
    trials = sw.store().trials((TrialState.COMPLETE,))
    assert sorted(t.user_attrs["config"]["dropout"] for t in trials) == [0.0, 0.2]
    assert all(t.user_attrs["config"]["steps"] == 3 and t.user_attrs["config"]["lr"] == 2.0 ** -7 for t in trials)


def test_sweep_file_relative_cwd_and_saved_copy(tmp_path):
    program_dir(tmp_path)
    path = tmp_path / "sweep.yaml"
    d = sweep_dict(tmp_path, FUNCTION, executor={"kind": "inline"}, axes={"width": [32], "log2_lr": [-7]})
    del d["program"]["cwd"]  # default: the folder of the sweep file
    path.write_text(yaml.safe_dump(d))
    sw = Sweep.from_yaml(path)
    assert sw.cfg.program.cwd == str(tmp_path.resolve())
    assert sw.run()["complete"] == 1
    again = Sweep.open(tmp_path / "runs" / "p")  # the saved copy keeps the absolute folder
    assert again.cfg.program.cwd == str(tmp_path.resolve())
    assert again.cfg.identity() == sw.cfg.identity()


# ---------------------------------------------------------------- function
def test_function_sweep_stores_curves_results_and_resumes_without_rerunning(tmp_path):
    sw = Sweep.from_dict(sweep_dict(tmp_path, FUNCTION))
    counts = sw.run()
    assert counts["complete"] == 6 and counts["failed"] == 0
    records = sw.records()
    for r in records:
        expect = (r["log2_lr"] + 7) ** 2 / 10 + 64 / r["width"] + 1.0 / 4
        assert r["val_loss"] == pytest.approx(expect)
        assert r["tokens"] == 4000 and r["params"] == r["width"] ** 2 * 10 + r["width"] * 5
        assert r["steps_done"] == 4
    trial = sw.store().trials((TrialState.COMPLETE,))[0]
    evals = trial.user_attrs["result"]["evals"]
    assert [e["step"] for e in evals] == [1, 2, 3, 4] and "train_loss" in evals[0]
    assert trial.user_attrs["config"]["recipe"] == "mup" and trial.user_attrs["env"]["program"] == "function"
    assert set(completes_per_point(sw).values()) == {1}
    n = len(sw.store().trials())
    assert Sweep.from_dict(sweep_dict(tmp_path, FUNCTION)).run()["complete"] == 6
    assert len(sw.store().trials()) == n  # nothing ran again


def test_a_failing_function_is_a_failed_trial_with_its_traceback_and_the_rest_complete(tmp_path):
    d = sweep_dict(tmp_path, {"function": "prog:run", "params": {"fail_lr": -5}})
    counts = Sweep.from_dict(d).run()
    assert counts["complete"] == 4 and counts["failed"] == 2
    failed = [r for r in Sweep.from_dict(d).records() if r["status"] == "failed"]
    assert all(r["log2_lr"] == -5 and "boom at this learning rate" in r["error"] and "Traceback" in r["error"]
               for r in failed)


@pytest.mark.parametrize("function, status, needle", [
    ("prog:returns_nothing", "complete", ""),
    ("prog:returns_text", "failed", "expected the final validation loss"),
])
def test_what_a_function_returns(tmp_path, function, status, needle):
    d = sweep_dict(tmp_path, {"function": function}, axes={"width": [32], "log2_lr": [-7]},
                   executor={"kind": "inline"})
    sw = Sweep.from_dict(d)
    sw.run()
    (r,) = sw.records()
    assert r["status"] == status and needle in r["error"]
    if status == "complete":  # no return value: the last report is the result, and the store says so
        assert r["val_loss"] == 3.0
        (t,) = sw.store().trials((TrialState.COMPLETE,))
        assert "last report" in t.user_attrs["result"]["reason"]


def test_a_function_past_its_timeout_is_stopped_and_recorded(tmp_path):
    d = sweep_dict(tmp_path, {"function": "prog:spins", "timeout": 1.5}, axes={"width": [32], "log2_lr": [-7]},
                   executor={"workers": 1, "lease_seconds": 20})
    start = time.time()
    counts = Sweep.from_dict(d).run()
    assert counts["failed"] == 1 and time.time() - start < 60
    (r,) = Sweep.from_dict(d).records()
    assert "timed out after 1.5 s" in r["error"]


def test_pruning_reaches_a_function_through_report(tmp_path):
    d = sweep_dict(tmp_path, {"function": "prog:run", "params": {"steps": 9}},
                   axes={"width": [32], "log2_lr": {"low": -12, "high": -2}},
                   strategy={"kind": "halving", "n_trials": 12, "min_resource": 1, "reduction_factor": 3, "seed": 0},
                   executor={"kind": "inline"})
    with pytest.warns(UserWarning, match="stops trials early"):
        counts = Sweep.from_dict(d).run()
    assert counts["pruned"] >= 1 and counts["complete"] >= 1
    pruned = [r for r in Sweep.from_dict(d).records() if r["status"] == "pruned"]
    assert all(r["steps_done"] < 9 for r in pruned)


# ----------------------------------------------------------------- command
def test_command_sweep_fills_placeholders_and_stores_reports(tmp_path):
    sw = Sweep.from_dict(sweep_dict(tmp_path, COMMAND))
    counts = sw.run()
    assert counts["complete"] == 6, [r["error"] for r in sw.records()]
    for r in sw.records():
        assert r["val_loss"] == pytest.approx((r["log2_lr"] + 7) ** 2 / 10 + 64 / r["width"] + 1.0 / 4)
        assert r["tokens"] == 4000
    t = sw.store().trials((TrialState.COMPLETE,))[0]
    assert [e["step"] for e in t.user_attrs["result"]["evals"]] == [1, 2, 3, 4]
    folder = tmp_path / "runs" / "p" / "trials" / f"{t.number:05d}"
    assert (folder / "stdout.log").read_text().strip() == "done"
    assert json.loads((folder / "trial.json").read_text())["point"] == t.user_attrs["point"]


@pytest.mark.parametrize("mode, needle", [
    ("crash", "exit status 3"),
    ("no-result", ""),
])
def test_a_crashing_command_is_a_failed_trial_with_its_stderr(tmp_path, mode, needle):
    d = sweep_dict(tmp_path, {"command": ["{python}", "prog.py", "{lr}", mode]}, axes={"width": [32], "log2_lr": [-7]},
                   executor={"kind": "inline"})
    sw = Sweep.from_dict(d)
    sw.run()
    (r,) = sw.records()
    if mode == "crash":
        assert r["status"] == "failed" and needle in r["error"]
        assert "something went wrong in the data loader" in r["error"]
    else:  # exit 0, reports but no finish(): the last report counts, and the store says so
        assert r["status"] == "complete" and r["val_loss"] == pytest.approx(0.25 + 2.0)


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path):
    d = sweep_dict(tmp_path, {"command": ["{python}", "prog.py", "{lr}", "hang"], "timeout": 2, "kill_grace": 1},
                   axes={"width": [32], "log2_lr": [-7]}, executor={"kind": "inline"})
    start = time.time()
    sw = Sweep.from_dict(d)
    sw.run()
    assert time.time() - start < 60
    (r,) = sw.records()
    assert r["status"] == "failed" and "timed out after 2 s" in r["error"]
    trial_file = sw.store().trials()[0].user_attrs["program"]["trial_file"]
    assert not _processes_running(trial_file)


def test_pruning_reaches_a_command_through_its_reports_file(tmp_path):
    d = sweep_dict(tmp_path, {"command": ["{python}", "prog.py", "{lr}"], "params": {"steps": 9}},
                   axes={"width": [32], "log2_lr": {"low": -12, "high": -2}},
                   strategy={"kind": "halving", "n_trials": 6, "min_resource": 1, "reduction_factor": 2, "seed": 0},
                   executor={"kind": "inline"})
    with pytest.warns(UserWarning):
        counts = Sweep.from_dict(d).run()
    assert counts["pruned"] >= 1 and counts["complete"] >= 1, counts


def test_trial_current_outside_a_sweep_says_so(monkeypatch):
    monkeypatch.delenv("PROXYTUNE_TRIAL", raising=False)
    with pytest.raises(RuntimeError, match="not started by a proxytune sweep"):
        pt.Trial.current()


# ------------------------------------------------------------- reliability
def _processes_running(trial_file: str) -> list[int]:
    marker = f"PROXYTUNE_TRIAL={trial_file}".encode() + b"\0"
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes():
                stat = (proc / "stat").read_text()
                if stat.split(") ", 1)[1][:1] != "Z":
                    out.append(int(proc.name))
        except OSError:
            continue
    return out




def _slow_cfg(tmp_path: Path, program: dict) -> Path:
    d = sweep_dict(tmp_path, {**program, "params": {"sleep": 0.4, "steps": 4}},
                   axes={"width": [32], "log2_lr": [-10, -9, -8, -7, -6, -5]})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _start(path: Path, tmp_path: Path) -> subprocess.Popen:
    code = "import sys; from proxytune.sweep import Sweep; Sweep.from_yaml(sys.argv[1]).run()"
    return subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _running(sw: Sweep) -> list:
    store = sw.store()
    if not store.trials((TrialState.COMPLETE,)):
        return []
    return [t for t in store.trials((TrialState.RUNNING,)) if "lease" in t.user_attrs
            and (sw.cfg.program.kind == "function" or "program" in t.user_attrs)]


@pytest.mark.parametrize("program", [FUNCTION, COMMAND], ids=["function", "command"])
def test_kill_9_the_whole_sweep_then_resume(tmp_path, program):
    path = _slow_cfg(tmp_path, program)
    proc = _start(path, tmp_path)
    sw = Sweep.from_yaml(path)
    try:
        running = wait_for(lambda: (tmp_path / "runs" / "p" / "trials.journal").exists() and _running(sw))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep process and its workers (a command has its own group)
        proc.wait()
    before = {r["trial"]: r["val_loss"] for r in sw.records() if r["status"] == "complete"}
    assert before
    if program is COMMAND:  # the worker died: its command must not run on, holding the machine
        trial_file = running[0].user_attrs["program"]["trial_file"]
        wait_for(lambda: not _processes_running(trial_file), timeout=20)
    assert Sweep.open(tmp_path / "runs" / "p").run()["complete"] == 6
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    after = {r["trial"]: r["val_loss"] for r in sw.records()}
    assert all(after[n] == v for n, v in before.items())


@pytest.mark.parametrize("program", [FUNCTION, COMMAND], ids=["function", "command"])
def test_kill_9_a_worker_mid_trial_then_every_point_completes_once(tmp_path, program):
    path = _slow_cfg(tmp_path, program)
    proc = _start(path, tmp_path)
    sw = Sweep.from_yaml(path)
    try:
        running = wait_for(lambda: (tmp_path / "runs" / "p" / "trials.journal").exists() and _running(sw))
        os.kill(running[0].user_attrs["lease"]["pid"], signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    assert any(t.user_attrs.get("status") == "requeued" for t in sw.store().trials())
    if program is COMMAND:
        assert not _processes_running(running[0].user_attrs["program"]["trial_file"])


@pytest.mark.parametrize("program", [FUNCTION, COMMAND], ids=["function", "command"])
def test_ctrl_c_gives_program_trials_back_and_stops_commands(tmp_path, program):
    path = _slow_cfg(tmp_path, program)
    proc = _start(path, tmp_path)
    sw = Sweep.from_yaml(path)
    try:
        running = wait_for(lambda: (tmp_path / "runs" / "p" / "trials.journal").exists() and _running(sw))
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    store = sw.store()
    assert not store.trials((TrialState.RUNNING,)), "a clean stop leaves no trial running"
    kept = {t.user_attrs["point_id"] for t in store.trials((TrialState.COMPLETE, TrialState.WAITING))}
    assert len(kept) == 6
    if program is COMMAND:
        assert not _processes_running(running[0].user_attrs["program"]["trial_file"])
    assert Sweep.open(tmp_path / "runs" / "p").run()["complete"] == 6
    assert set(completes_per_point(sw).values()) == {1}


# ---------------------------------------------------------------- examples
def _copy_examples(tmp_path: Path) -> Path:
    dest = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    return dest


def test_function_example_end_to_end_with_the_cli(tmp_path, monkeypatch):
    """examples/function_sweep.yaml as a user runs it: sweep, status, analyze, predict, report."""
    ex = _copy_examples(tmp_path)
    monkeypatch.chdir(ex)
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", "function_sweep.yaml"])
    assert res.exit_code == 0, res.output
    run_dir = ex / "runs" / "example-function"
    sw = Sweep.open(run_dir)
    records = sw.records()
    assert len(records) == 6 and all(r["status"] == "complete" for r in records), records
    sys.path.insert(0, str(ex))
    try:
        import mytrain

        for width in (32, 64):  # the count the analysis uses is the model's own
            n = sum(p.numel() for p in mytrain.build(width, 2).parameters())
            assert {r["params"] for r in records if r["width"] == width} == {n}
        plan = pt.Plan.load(run_dir / "plans" / "width64-depth2.json")
        assert plan.recipe == "mup" and plan.tensors["head.weight"].role == "readout"
        for cmd in (["status", str(run_dir)], ["analyze", str(run_dir)], ["report", str(run_dir)]):
            res = runner.invoke(app, cmd)
            assert res.exit_code == 0, (cmd, res.output)
        res = runner.invoke(app, ["predict", str(run_dir), "--width", "128", "--json"])
        assert res.exit_code == 0, res.output
        pred = json.loads(res.output)
        assert pred["target"]["params"] == pytest.approx(sum(p.numel() for p in mytrain.build(128, 2).parameters()))
        assert pred["plan"] is None and any("plans" in n for n in pred["notes"])
        assert math.isfinite(pred["hp"]["value"])
    finally:
        sys.path.remove(str(ex))
        sys.modules.pop("mytrain", None)


def test_command_example_runs_the_script(tmp_path, monkeypatch):
    ex = _copy_examples(tmp_path)
    d = yaml.safe_load((ex / "command_sweep.yaml").read_text())
    d["axes"] = {"width": [32, 64], "log2_lr": [-8], "seed": [0]}  # 2 trials: each starts its own Python
    (ex / "small.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.chdir(ex)
    res = CliRunner().invoke(app, ["sweep", "small.yaml"])
    assert res.exit_code == 0, res.output
    sw = Sweep.open(ex / "runs" / "example-command")
    records = sw.records()
    assert len(records) == 2 and all(r["status"] == "complete" and r["params"] for r in records), records
    # the script alone gives the same loss as the trial did (same loop, same seed)
    out = subprocess.run([sys.executable, "train_script.py", "--width", "32", "--lr", repr(2.0 ** -8)],
                         capture_output=True, text=True, check=True, cwd=ex,
                         env={k: v for k, v in os.environ.items() if k != "PROXYTUNE_TRIAL"})
    alone = float(out.stdout.split()[-1])
    (r32,) = [r for r in records if r["width"] == 32]
    assert alone == pytest.approx(r32["val_loss"], abs=1e-3)  # at the base width muP is the model's own init


# ---------------------------------------------------------------- trackers
def test_tracking_in_the_sweep_file_logs_every_program_trial_once(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = sweep_dict(tmp_path, FUNCTION, axes={"width": [32, 64], "log2_lr": [-7]}, executor={"kind": "inline"},
                   tracking={"tensorboard": True, "mlflow": True})
    sw = Sweep.from_dict(d)
    assert sw.run()["complete"] == 2
    run_dir = tmp_path / "runs" / "p"
    tb_runs = sorted(p for p in (run_dir / "tensorboard").iterdir() if p.is_dir())
    assert len(tb_runs) == 2
    acc = EventAccumulator(str(tb_runs[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_loss")] == [1, 2, 3, 4]
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("p")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(int(r.data.tags["proxytune.trial"]) for r in runs) == [0, 1]
    assert {r.data.tags["proxytune.recipe"] for r in runs} == {"mup"}
    # resumed: nothing is logged twice
    assert Sweep.from_dict(d).run()["complete"] == 2
    assert len(client.search_runs([exp.experiment_id])) == 2
    assert len([p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()]) == 2


# -------------------------------------------------------------------- tune
def test_tune_on_a_program(tmp_path):
    from proxytune.tune import tune

    d = {"name": "tp", "program": {"function": "prog:run", "cwd": str(program_dir(tmp_path))}, "recipes": ["mup"],
         "base": {"width": 32, "depth": 2}, "widths": [64, 128], "target": {"width": 256},
         "search": {"strategy": "oat", "lr": {"start": -9, "stop": -5, "step": 1}, "multipliers": ["role_init.readout"],
                    "rounds": 1, "span": 1, "lr_span": 1, "finalists": 1},
         "verify": {"max_extend": 1}, "executor": {"kind": "inline"}, "runs_dir": str(tmp_path / "runs")}
    result = tune(d, log=lambda *a, **k: None)
    assert result.recipe == "mup" and abs(result.log2_lr + 7) <= 0.5  # the program's loss is lowest at log2 lr -7
    assert result.prediction["params"] == pytest.approx(10 * 256 ** 2 + 5 * 256)  # fitted on the stored counts
    assert result.prediction["plan"] is None
    assert "Program `prog:run`" in Path(result.report).read_text()


@pytest.mark.parametrize("program", [FUNCTION, COMMAND], ids=["function", "command"])
def test_ray_executor_runs_programs(tmp_path, program):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'proxytune[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        sw = Sweep.from_dict(sweep_dict(tmp_path, program, executor={"kind": "ray", "workers": 2}))
        assert sw.run()["complete"] == 6, [r["error"] for r in sw.records()]
        assert set(completes_per_point(sw).values()) == {1}
    finally:
        ray.shutdown()


def test_a_point_that_kills_its_worker_every_time_is_failed_after_max_attempts(tmp_path):
    d = sweep_dict(tmp_path, {"function": "prog:run", "params": {"kill_lr": -5}},
                   executor={"workers": 2, "lease_seconds": 20, "max_attempts": 3})
    start = time.time()
    counts = Sweep.from_dict(d).run()
    assert time.time() - start < 240
    assert counts["complete"] == 4 and counts["failed"] == 2, counts
    sw = Sweep.from_dict(d)
    failed = [r for r in sw.records() if r["status"] == "failed"]
    assert {r["log2_lr"] for r in failed} == {-5}
    assert all("worker died 3 times" in r["error"] for r in failed)
    died = Counter(t.user_attrs["point_id"] for t in sw.store().trials() if t.user_attrs.get("worker_died"))
    assert sorted(died.values()) == [3, 3]  # two requeues and the final failure, per poisoned point


# ------------------------------------------------------- analysis of gaps
@pytest.mark.parametrize("case", ["largest width diverged", "all diverged", "one width"])
def test_analysis_of_sweeps_with_no_optimum_somewhere(tmp_path, case):
    params = {"all_diverge": 1} if case == "all diverged" else {}
    widths = [16] if case == "one width" else [16, 32]
    d = sweep_dict(tmp_path, {"function": "prog:diverges_at_32", "params": params},
                   axes={"width": widths, "log2_lr": [0, 2, 4]}, base={"width": 16, "depth": 1},
                   executor={"kind": "inline"})
    Sweep.from_dict(d).run()
    run_dir = str(tmp_path / "runs" / "p")
    runner = CliRunner()
    outputs = {}
    for cmd in (["analyze", run_dir], ["report", run_dir], ["predict", run_dir, "--width", "128", "--params", "1e6"]):
        res = runner.invoke(app, cmd)
        assert res.exception is None or isinstance(res.exception, SystemExit), (cmd, res.output)
        assert res.exit_code in (0, 2) and "Traceback" not in res.output, (cmd, res.output)
        outputs[cmd[0]] = (res.exit_code, " ".join(res.output.split()))
    if case == "largest width diverged":
        assert "width 32: every point diverged (log2_lr 0 .. 4)" in outputs["analyze"][1]
        assert "the largest width swept (32) has no optimum" in outputs["analyze"][1]
        assert outputs["predict"][0] == 2 and "no prediction from a smaller proxy" in outputs["predict"][1]
        assert "Missing" in (tmp_path / "runs" / "p" / "report" / "report.md").read_text()
    elif case == "all diverged":
        assert "every point of the sweep diverged" in outputs["analyze"][1]
        assert outputs["predict"][0] == 2 and "every point of the sweep diverged" in outputs["predict"][1]
    else:
        assert "no transfer verdict" in outputs["analyze"][1] and outputs["predict"][0] == 0

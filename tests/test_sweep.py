"""Sweeps: config errors, strategies, the store, real worker processes, crashes and resumes."""

from __future__ import annotations

import json
import math
import os
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

from proxytune.cli import app
from proxytune.sweep import Sweep, SweepConfig, SweepConfigError
from proxytune.sweep.space import grid_points, telescoping_stage
from proxytune.sweep.store import point_id
from sweep_helpers import completes_per_point, wait_for

TRAIN = {"depth": 1, "steps": 16, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 2}


def sweep_dict(tmp_path: Path, **over) -> dict:
    d = {
        "name": "t",
        "model": "gpt",
        "data_options": {"max_bytes": 200_000},
        "base": {"width": 32, "depth": 1},
        "axes": {"width": [32, 48], "log2_lr": {"start": -9, "stop": -5, "step": 2}},
        "train": dict(TRAIN),
        "executor": {"workers": 2, "threads": 1, "batch": 1, "lease_seconds": 20},
        "runs_dir": str(tmp_path / "runs"),
        # exact trial counts below: no refinement pass (tests/test_refine.py covers it)
        "strategy": {"kind": "grid", "refine": False},
    }
    d.update(over)
    return d



# ------------------------------------------------------------------ config
@pytest.mark.parametrize("change, message", [
    ({"modle": "gpt"}, "did you mean 'model'"),
    ({"strategy": {"kind": "grid", "n_trail": 3}}, "did you mean 'n_trials'"),
    ({"axes": {"log2_lrr": [1, 2]}}, "did you mean 'log2_lr'"),
    ({"train": {"stpes": 3}}, "did you mean 'steps'"),
    ({"recipe": "mupp"}, "did you mean 'mup'"),
    ({"strategy": {"kind": "random"}}, "n_trials"),
    ({"base": {"widht": 32}}, "did you mean 'width'"),
])
def test_config_errors_name_the_key_and_write_nothing(tmp_path, change, message):
    with pytest.raises(SweepConfigError, match=message):
        Sweep.from_dict(sweep_dict(tmp_path, **change))
    assert not (tmp_path / "runs").exists()


def test_unbuildable_shape_is_refused_before_any_trial(tmp_path):
    sw = Sweep.from_dict(sweep_dict(tmp_path, axes={"width": [32, 40], "log2_lr": [-8]}))
    with pytest.raises(SweepConfigError, match="width.*40.*multiple of head_dim"):
        sw.run()
    assert not (tmp_path / "runs").exists()


def test_missing_data_and_unreachable_storage_write_nothing(tmp_path):
    sw = Sweep.from_dict(sweep_dict(tmp_path, data=str(tmp_path / "missing.txt"), data_options={}))
    with pytest.raises(ValueError, match="missing.txt"):
        sw.run()
    sw = Sweep.from_dict(sweep_dict(tmp_path, storage="postgresql+psycopg2://nobody@127.0.0.1:1/none"))
    with pytest.raises(SweepConfigError, match="cannot open storage"):
        sw.run()
    assert not (tmp_path / "runs").exists()


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(tmp_path)))
    cfg = SweepConfig.from_yaml(path)
    assert cfg.axes["log2_lr"].values() == [-9.0, -7.0, -5.0]
    with pytest.raises(SweepConfigError, match="not found"):
        SweepConfig.from_yaml(tmp_path / "nope.yaml")


def test_grid_points_batchable_axes_vary_fastest():
    pts = grid_points({"log2_lr": [-8, -6], "width": [32, 64], "seed": [0, 1]})
    assert len(pts) == 8
    assert [p["width"] for p in pts] == [32] * 4 + [64] * 4
    assert len({point_id(p) for p in pts}) == 8


def test_telescoping_stages_shrink_around_the_optimum(tmp_path):
    cfg = SweepConfig.from_dict(sweep_dict(
        tmp_path, strategy={"kind": "telescoping", "min_points": 3},
        axes={"width": [32, 64, 128], "log2_lr": {"start": -12, "stop": -4, "step": 1}}))
    s0 = telescoping_stage(cfg, 0, None)
    assert {p["width"] for p in s0} == {32} and len(s0) == 9
    records = [dict(p, val_loss=(p["log2_lr"] + 7) ** 2 + 3.0) for p in s0]  # optimum at -7
    s1 = telescoping_stage(cfg, 1, records)
    lrs = sorted(p["log2_lr"] for p in s1)
    assert {p["width"] for p in s1} == {64}
    assert len(lrs) == math.ceil(9 / 4) and lrs[len(lrs) // 2] == -7.0  # 9 * 4^-1 -> 3 points, centred
    assert lrs[1] - lrs[0] == 0.5  # spacing halved
    assert telescoping_stage(cfg, 3, records) == []


# ------------------------------------------------------- running sweeps
def test_grid_sweep_runs_every_point_once_and_resumes_without_rerunning(tmp_path):
    sw = Sweep.from_dict(sweep_dict(tmp_path, executor={"workers": 2, "threads": 1, "batch": 3}))
    counts = sw.run()
    assert counts["complete"] == 6 and counts["failed"] == 0
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    before = {r["trial"]: r["val_loss"] for r in sw.records()}
    counts = Sweep.open(tmp_path / "runs" / "t").run()  # resume: nothing left to do
    assert counts["complete"] == 6 and len(sw.store().trials()) == 6
    assert {r["trial"]: r["val_loss"] for r in sw.records()} == before
    rec = sw.store().trials()[0]
    assert rec.user_attrs["config"]["width"] in (32, 48) and rec.user_attrs["env"]["data"]["sha256"]
    assert rec.user_attrs["result"]["train_losses"]
    # extending the grid adds only the new points
    bigger = sweep_dict(tmp_path, axes={"width": [32, 48], "log2_lr": {"start": -9, "stop": -3, "step": 2}})
    assert Sweep.from_dict(bigger).run()["complete"] == 8


def test_divergent_points_are_stored_as_diverged(tmp_path):
    d = sweep_dict(tmp_path, optimizer="sgd", recipe="sp",
                   axes={"width": [32], "log2_lr": [-6, 8]},
                   train=dict(TRAIN, grad_clip=None, steps=30))
    sw = Sweep.from_dict(d)
    counts = sw.run()
    assert counts["diverged"] == 1 and counts["complete"] == 1
    bad = [t for t in sw.store().trials() if t.user_attrs["status"] == "diverged"]
    assert bad[0].value == math.inf and bad[0].state == TrialState.COMPLETE


def test_changed_config_or_foreign_storage_is_refused(tmp_path):
    Sweep.from_dict(sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-8]})).run()
    changed = sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-8]}, train=dict(TRAIN, steps=20))
    with pytest.raises(SweepConfigError, match="train.steps: stored 16, now 20"):
        Sweep.from_dict(changed).run()
    other = sweep_dict(tmp_path, name="other", storage=str(tmp_path / "runs" / "t" / "trials.journal"))
    with pytest.raises(SweepConfigError, match="belongs to sweep 't'"):
        Sweep.from_dict(other).run()


def test_user_builder_and_text_data(tmp_path, monkeypatch):
    pkg = tmp_path / "mymodels.py"
    pkg.write_text(textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self, width, depth, vocab=256):
                super().__init__()
                self.emb = nn.Embedding(vocab, width)
                self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
                self.out = nn.Linear(width, vocab)
            def forward(self, x):
                h = self.emb(x)
                for layer in self.layers:
                    h = h + layer(h).relu()
                return self.out(h)
        def build(width, depth, vocab=256):
            return Net(width, depth, vocab)
    """))
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"some text for the model to learn. " * 500)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = sweep_dict(tmp_path, model="mymodels:build", data=str(text), data_options={},
                   axes={"width": [32, 64], "log2_lr": [-7]}, executor={"workers": 1, "batch": 2})
    assert Sweep.from_dict(d).run()["complete"] == 2


@pytest.mark.parametrize("kind, extra", [
    ("random", {}), ("tpe", {}), ("halving", {"min_resource": 8}), ("hyperband", {"min_resource": 8}),
])
def test_sampling_strategies(tmp_path, kind, extra):
    d = sweep_dict(tmp_path, axes={"width": [32], "log2_lr": {"low": -12, "high": -4}},
                   strategy={"kind": kind, "n_trials": 6, **extra},
                   train=dict(TRAIN, steps=24, eval_every=8), executor={"workers": 1, "batch": 3})
    sw = Sweep.from_dict(d)
    if kind in ("halving", "hyperband"):
        with pytest.warns(UserWarning, match="favours large learning rates"):
            counts = sw.run()
    else:
        counts = sw.run()
    assert counts["complete"] + counts["pruned"] + counts["diverged"] == 6
    lrs = [r["log2_lr"] for r in sw.records()]
    assert all(-12 <= x <= -4 for x in lrs) and len(set(lrs)) == 6
    if kind == "halving":
        assert counts["pruned"] >= 1


def test_telescoping_sweep_end_to_end(tmp_path):
    d = sweep_dict(tmp_path, strategy={"kind": "telescoping", "min_points": 2},
                   axes={"width": [32, 64], "log2_lr": {"start": -10, "stop": -4, "step": 2}},
                   executor={"workers": 1, "batch": 4})
    sw = Sweep.from_dict(d)
    counts = sw.run()
    recs = sw.records()
    assert counts["complete"] == 4 + 2
    assert sorted(r["stage"] for r in recs) == [0] * 4 + [1] * 2
    assert {r["width"] for r in recs if r["stage"] == 1} == {64}


def test_export_csv_and_cli(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-8, -6]},
                                              executor={"workers": 1, "batch": 2})))
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(path)])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "t"
    res = runner.invoke(app, ["status", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["counts"]["complete"] == 2 and st["best"][0]["size"] == {"width": 32}
    res = runner.invoke(app, ["export", str(run_dir), "--format", "csv"])
    assert res.exit_code == 0, res.output
    lines = (run_dir / "trials.csv").read_text().splitlines()
    assert len(lines) == 3 and "val_loss" in lines[0] and "log2_lr" in lines[0]
    res = runner.invoke(app, ["export", str(run_dir), "--format", "parquet"])
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        assert res.exit_code == 2 and "pip install" in res.output
    else:
        assert res.exit_code == 0, res.output
        assert len(pd.read_parquet(run_dir / "trials.parquet")) == 2
    res = runner.invoke(app, ["status", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "not a sweep directory" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstrategy: {kind: gird}\n")
    res = runner.invoke(app, ["sweep", str(bad)])
    assert res.exit_code == 2 and "strategy.kind" in res.output


# ------------------------------------------------------------ reliability


def _start_sweep_process(cfg_path: Path, tmp_path: Path) -> subprocess.Popen:
    code = "import sys; from proxytune.sweep import Sweep; Sweep.from_yaml(sys.argv[1]).run()"
    return subprocess.Popen([sys.executable, "-c", code, str(cfg_path)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _reliability_cfg(tmp_path: Path, **over) -> Path:
    d = sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-10, -9, -8, -7, -6, -5]},
                   train=dict(TRAIN, steps=120, eval_every=60), **over)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _running_worker_pid(sweep: Sweep) -> int | None:
    store = sweep.store()
    done = [t for t in store.trials((TrialState.COMPLETE,))]
    running = [t for t in store.trials((TrialState.RUNNING,)) if "lease" in t.user_attrs]
    if len(done) >= 1 and running:
        return running[0].user_attrs["lease"]["pid"]
    return None


def _start_until_a_trial_runs(tmp_path: Path) -> tuple[subprocess.Popen, Sweep, int]:
    """A sweep process with at least one finished trial and one running (pid of its worker)."""
    path = _reliability_cfg(tmp_path)
    proc = _start_sweep_process(path, tmp_path)
    sw = Sweep.from_yaml(path)
    try:
        pid = wait_for(lambda: (tmp_path / "runs" / "t" / "trials.journal").exists() and _running_worker_pid(sw))
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, sw, pid


def test_kill_9_a_worker_mid_trial_then_every_point_completes_once(tmp_path):
    proc, sw, pid = _start_until_a_trial_runs(tmp_path)
    try:
        before = {r["trial"]: r["val_loss"] for r in sw.records() if r["status"] == "complete"}
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    after = {r["trial"]: r["val_loss"] for r in sw.records()}
    assert all(after[n] == v for n, v in before.items())
    assert any(t.user_attrs.get("status") == "requeued" for t in sw.store().trials())


def test_kill_9_the_whole_sweep_then_resume(tmp_path):
    proc, sw, _ = _start_until_a_trial_runs(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep process and its workers
    proc.wait()
    before = {r["trial"]: r["val_loss"] for r in sw.records() if r["status"] == "complete"}
    assert before
    counts = Sweep.open(tmp_path / "runs" / "t").run()
    assert counts["complete"] == 6
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    after = {r["trial"]: r["val_loss"] for r in sw.records()}
    assert all(after[n] == v for n, v in before.items())


def test_two_sweep_processes_on_one_store_never_run_a_point_twice(tmp_path):
    path = _reliability_cfg(tmp_path, executor={"workers": 1, "threads": 1, "batch": 1})
    procs = [_start_sweep_process(path, tmp_path) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    sw = Sweep.from_yaml(path)
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    started = Counter(t.user_attrs["point_id"] for t in sw.store().trials()
                      if t.user_attrs.get("status") not in ("duplicate", "requeued", "waiting"))
    assert set(started.values()) == {1}


def test_many_workers_on_postgresql(tmp_path, postgres_url):
    d = sweep_dict(tmp_path, name=f"pg{os.getpid()}", storage=postgres_url,
                   axes={"width": [32], "log2_lr": [-10, -9, -8, -7, -6, -5]},
                   executor={"workers": 3, "threads": 1, "batch": 1})
    sw = Sweep.from_dict(d)
    procs = [_start_sweep_process(_write(tmp_path / f"s{i}.yaml", d), tmp_path) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}


def _write(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.slow
def test_ray_executor_locally(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'proxytune[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        d = sweep_dict(tmp_path, executor={"kind": "ray", "workers": 2, "threads": 1, "batch": 1})
        assert Sweep.from_dict(d).run()["complete"] == 6
    finally:
        ray.shutdown()


def test_ctrl_c_returns_running_trials_to_the_queue(tmp_path):
    proc, sw, _ = _start_until_a_trial_runs(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    store = sw.store()
    assert not store.trials((TrialState.RUNNING,)), "a clean stop leaves no trial running"
    kept = {t.user_attrs["point_id"] for t in store.trials((TrialState.COMPLETE, TrialState.WAITING))}
    trail = [(t.number, t.state.name, t.user_attrs.get("point_id"), t.user_attrs.get("status"),
              str(t.user_attrs.get("error", ""))[-300:]) for t in store.trials()]
    assert len(kept) == 6, f"every point is either done or back in the queue: {trail}"
    assert Sweep.open(tmp_path / "runs" / "t").run()["complete"] == 6
    assert set(completes_per_point(sw).values()) == {1}


def test_inline_executor_runs_in_this_process_and_ctrl_c_gives_trials_back(tmp_path, monkeypatch):
    """executor.kind inline: the same store and exactly-once rules, in the caller's process; a KeyboardInterrupt
    during a trial returns the claimed trials to the queue, and running again completes them."""
    pkg = tmp_path / "interrupting.py"
    pkg.write_text(textwrap.dedent("""
        import os
        import torch
        from proxytune.models import gpt
        def build(width, depth, **options):
            training = torch.empty(0).device.type != "meta"  # not the shape check before the sweep
            if width == 48 and training and os.environ.get("PT_TEST_INTERRUPT"):
                raise KeyboardInterrupt
            return gpt.build(width=width, depth=depth, **options)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    d = sweep_dict(tmp_path, model="interrupting:build", executor={"kind": "inline", "batch": 2})
    monkeypatch.setenv("PT_TEST_INTERRUPT", "1")
    sweep = Sweep.from_dict(d)
    with pytest.raises(KeyboardInterrupt):
        sweep.run()
    counts = sweep.store().counts()
    assert counts["running"] == 0 and counts["waiting"] >= 1  # nothing left claimed by a dead run
    monkeypatch.delenv("PT_TEST_INTERRUPT")
    assert Sweep.from_dict(d).run()["complete"] == 6
    assert set(completes_per_point(sweep).values()) == {1}


def test_workers_see_the_sweep_process_environment_as_it_is_when_they_start(tmp_path, monkeypatch):
    """Local workers are forked from a fork server started with the first sweep (imports paid once). The server's
    environment is the one of that moment; a worker must still see the sweep process's environment as it is now
    (CUDA_VISIBLE_DEVICES per worker, the user's variables), as a spawned worker would."""
    pkg = tmp_path / "envseeing.py"
    pkg.write_text(textwrap.dedent("""
        import os
        from pathlib import Path
        from proxytune.models import gpt
        def build(width, depth, **options):
            Path(os.environ["PT_TEST_ENV_OUT"]).write_text(os.environ.get("PT_TEST_ENV_VALUE", "unset") + ":"
                                                           + os.environ.get("CUDA_VISIBLE_DEVICES", "none"))
            return gpt.build(width=width, depth=depth, **options)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = tmp_path / "seen.txt"
    monkeypatch.setenv("PT_TEST_ENV_OUT", str(out))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for k, value in enumerate(("first", "second")):
        monkeypatch.setenv("PT_TEST_ENV_VALUE", value)
        d = sweep_dict(tmp_path / str(k), model="envseeing:build", axes={"width": [32], "log2_lr": [-9]},
                       executor={"kind": "local", "workers": 1})
        assert Sweep.from_dict(d).run()["complete"] == 1
        assert out.read_text() == f"{value}:none"
    # with GPUs, each worker gets one (its index modulo their count); the sweep process's own is left alone
    import proxytune.sweep.runner as runner

    monkeypatch.setattr(runner, "_gpu_count", lambda: 3)
    d = sweep_dict(tmp_path / "gpus", model="envseeing:build", axes={"width": [32], "log2_lr": [-9]},
                   executor={"kind": "local", "workers": 1})
    assert Sweep.from_dict(d).run()["complete"] == 1
    assert out.read_text() == "second:0" and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_copy_claimed_while_its_original_is_given_back_is_not_a_duplicate(tmp_path):
    """Ctrl-C race: a worker gives its trial back (enqueue a copy, then fail the original); another worker
    claims the copy in between. The copy must run: before, it was failed as a duplicate of the still-running
    original, the original was then failed as requeued, and the point was lost."""
    sw = Sweep.from_dict(sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-9]}))
    store = sw.prepare()
    (orig,) = store.claim(1)
    store._reenqueue(store.storage.get_trial(orig._trial_id))  # the first half of release()
    (copy,) = store.claim(1)  # another worker, before the original is failed
    assert copy.state == TrialState.RUNNING and copy.user_attrs.get("status") != "duplicate"
    store._finish_state(orig._trial_id, TrialState.FAIL, None, {"status": "requeued"})  # the second half
    live = [t for t in store.trials() if t.state != TrialState.FAIL]
    assert [t._trial_id for t in live] == [copy._trial_id]


def test_a_point_whose_trials_were_all_given_back_is_enqueued_again(tmp_path):
    """A process stopped between failing a stale trial and enqueueing its copy leaves the point with no live
    trial; requeue_stale puts it back in the queue (once)."""
    sw = Sweep.from_dict(sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-9, -8]}))
    store = sw.prepare()
    claimed = store.claim(1)
    store._finish_state(claimed[0]._trial_id, TrialState.FAIL, None, {"status": "requeued"})  # no copy
    assert store.counts()["waiting"] == 1
    assert store.requeue_stale() == 1
    assert store.requeue_stale() == 0
    waiting = {t.user_attrs["point_id"] for t in store.trials((TrialState.WAITING,))}
    assert waiting == {point_id({"width": 32, "log2_lr": -9}), point_id({"width": 32, "log2_lr": -8})}


def test_a_point_being_given_back_by_another_process_is_not_enqueued_twice(tmp_path):
    """Another process has failed a stale trial and not yet enqueued its copy when this one looks for orphans: the
    point looks orphaned for that moment. It is enqueued once (by that process), not twice: before, the copy from
    each process ran, and a point that kills its worker died once more than max_attempts (seen once workers
    started fast)."""
    import threading

    sw = Sweep.from_dict(sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-9]}))
    store = sw.prepare()
    (orig,) = store.claim(1)
    store._finish_state(orig._trial_id, TrialState.FAIL, None, {"status": "requeued"})  # the first half

    def other_process() -> None:
        time.sleep(0.5)
        store._reenqueue(store.storage.get_trial(orig._trial_id))  # the second half, a moment later

    helper = threading.Thread(target=other_process)
    helper.start()
    assert store.requeue_stale() == 0  # it waited, and the point got its copy from the other process
    helper.join()
    assert store.counts()["waiting"] == 1


# ------------------------------------------------------- failing trials
_FAILING_BUILDER = """
import os
import torch
from proxytune.models import gpt

CALLS = [0]
class Runaway(BaseException):
    '''Stops a sweep that would otherwise never end (the bug these tests guard against).'''

def build(width, depth, **options):
    if torch.empty(0).device.type != "meta":  # the shape check before the sweep builds on meta: let it pass
        CALLS[0] += 1
        if CALLS[0] > int(os.environ.get("PT_TEST_RUNAWAY", "60")):
            raise Runaway(f"{CALLS[0]} trials and still going")
        if os.environ.get("PT_TEST_ALTERNATE") and CALLS[0] % 2:
            raise ValueError("another cause")
        raise RuntimeError(f"this model cannot be built today (attempt {CALLS[0]}, value {0.37 * CALLS[0]:.4f})")
    return gpt.build(width=width, depth=depth, **options)
"""


def _failing_sweep(tmp_path: Path, monkeypatch, name: str, **over) -> Sweep:
    (tmp_path / "failing.py").write_text(_FAILING_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import failing
    importlib.reload(failing)  # a fresh call counter per test
    d = sweep_dict(tmp_path, name=name, model="failing:build", axes={"width": [32], "log2_lr": {"low": -9, "high": -5}},
                   strategy={"kind": "tpe", "n_trials": 8}, executor={"kind": "inline", "batch": 2})
    d.update(over)
    return Sweep.from_dict(d)


def test_failed_trials_spend_a_sampled_sweeps_budget(tmp_path, monkeypatch):
    """A TPE sweep whose every trial fails ends after n_trials trials: failed ones count. Before, they did not,
    and such a sweep asked for new trials forever (here, until the builder's guard stopped it)."""
    sw = _failing_sweep(tmp_path, monkeypatch, "budget")
    counts = sw.run()
    assert counts["failed"] == 8 and counts["running"] == counts["waiting"] == 0
    assert sw.run()["failed"] == 8  # nothing left to do: the budget is spent


def test_a_sweep_stops_when_its_trials_keep_failing_with_the_same_error(tmp_path, monkeypatch):
    """With stop_after_failures=5, a sampled or grid sweep whose trials fail with one error (numbers in its
    message aside) stops after 5 in a row, naming it; failures before this run do not count; different errors
    in turn do not stop it."""
    from proxytune.sweep.errors import RepeatedFailure

    sw = _failing_sweep(tmp_path, monkeypatch, "tpe", strategy={"kind": "tpe", "n_trials": 50},
                        executor={"kind": "inline", "batch": 1})
    with pytest.raises(RepeatedFailure, match=r"5 trials in a row failed with the same error: RuntimeError: this "
                                              r"model cannot be built today \(attempt \d+, value "):
        sw.run(stop_after_failures=5)
    assert sw.store().counts()["failed"] == 5
    with pytest.raises(RepeatedFailure):  # a second run judges its own trials: 5 more, not 0
        sw.run(stop_after_failures=5)
    assert sw.store().counts()["failed"] == 10
    grid = _failing_sweep(tmp_path, monkeypatch, "grid", axes={"width": [32], "log2_lr": [-9, -8, -7, -6, -5, -4]},
                          strategy={"kind": "grid", "refine": False}, executor={"kind": "inline", "batch": 1})
    with pytest.raises(RepeatedFailure, match="3 trials in a row"):
        grid.run(stop_after_failures=3)
    assert grid.store().counts() == {**grid.store().counts(), "failed": 3, "waiting": 3, "running": 0}
    monkeypatch.setenv("PT_TEST_ALTERNATE", "1")
    mixed = _failing_sweep(tmp_path, monkeypatch, "mixed", executor={"kind": "inline", "batch": 1})
    assert mixed.run(stop_after_failures=3)["failed"] == 8


def test_a_stop_while_a_sampled_trial_is_being_created_leaves_no_trial_running(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) that lands between Optuna's ask() and the moment the worker records the trial as its own:
    before, the trial stayed running (no lease yet, so nobody gave it back); now the stop waits for that moment
    and the trial is given back like any other."""
    import proxytune.sweep.worker as worker

    real = worker.suggest_point
    calls = []

    def suggest_then_interrupt(trial, cfg):
        calls.append(trial.number)
        point = real(trial, cfg)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does, in the middle of creating a trial
        return point

    monkeypatch.setattr(worker, "suggest_point", suggest_then_interrupt)
    # Python's own Ctrl-C handler, whatever an earlier test of this process left in place
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    d = sweep_dict(tmp_path, axes={"width": [32], "log2_lr": {"low": -9, "high": -5}},
                   strategy={"kind": "tpe", "n_trials": 6}, executor={"kind": "inline", "batch": 2})
    sweep = Sweep.from_dict(d)
    interrupted = False
    try:
        sweep.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted, (f"no KeyboardInterrupt; suggest_point was called {len(calls)} times; trials: "
                         f"{[(t.number, t.state.name, t.user_attrs.get('status')) for t in sweep.store().trials()]}")
    store = sweep.store()
    trail = [(t.number, t.state.name, t.user_attrs.get("status")) for t in store.trials()]
    assert not store.trials((TrialState.RUNNING,)), f"no trial is left running: {trail}"
    assert store.counts()["complete"] == 2
    given_back = {t.user_attrs["point_id"] for t in store.trials() if t.user_attrs.get("status") == "requeued"}
    assert len(given_back) == 2, trail
    monkeypatch.setattr(worker, "suggest_point", real)
    sweep.run()  # the given-back points run on the next run
    assert given_back <= set(completes_per_point(sweep))

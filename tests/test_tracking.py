"""Experiment trackers: every finished trial once in TensorBoard and MLflow, read back; optuna-dashboard."""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import sys
import time
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxytune.sweep import Sweep, SweepConfigError
from proxytune.sweep.tracking import (
    LEDGER,
    TMP_DIR,
    TRIAL_FILE,
    Trackers,
    TrackingConfig,
    TrackingWarning,
    dashboard_command,
    mlflow_uri,
    run_name,
)

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

TRAIN = {"depth": 1, "steps": 16, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 2}
FAILED_POINT = {"width": 32, "log2_lr": -5}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished tiny sweep (two trials) plus one failed trial; returns (sweep, store)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = Sweep.from_dict({
        "name": "t", "model": "gpt", "data_options": {"max_bytes": 200_000}, "base": {"width": 32, "depth": 1},
        "axes": {"width": [32], "log2_lr": [-9, -7]}, "train": dict(TRAIN), "executor": {"kind": "inline"},
        "runs_dir": str(root / "runs"), "strategy": {"kind": "grid", "refine": False},
    })
    counts = sweep.run()
    assert counts["complete"] == 2
    store = sweep.store()
    assert store.enqueue([FAILED_POINT]) == 1
    (claimed,) = store.claim(1)
    store.fail(claimed._trial_id, "Traceback (most recent call last):\n  ...\nRuntimeError: boom at step 3")
    return sweep, store


def finished(store):
    return sorted((t for t in store.trials() if t.state.is_finished()), key=lambda t: t.number)


def trackers(tmp_path, **cfg) -> Trackers:
    return Trackers(TrackingConfig(**cfg), tmp_path / "run", "t", "mup")


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("cfg, message", [
    ({"tensorboard": 5}, "tensorboard\n.*give true, false or a directory, not 5"),
    ({"tensorboard": ""}, "tensorboard\n.*not an empty string"),
    ({"mlflow": "true"}, "mlflow\n.*'true' is text here"),
    ({"mlflow": None}, "mlflow\n.*give true, false or a tracking URI"),
    ({"experiment": "  "}, "experiment\n.*give an MLflow experiment name"),
    ({"tensorbord": True}, "tensorbord\n.*Extra inputs are not permitted"),
])
def test_config_errors_name_the_field(cfg, message):
    with pytest.raises(ValidationError, match=message):
        TrackingConfig(**cfg)


def test_destinations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "t"
    tr = Trackers(TrackingConfig(tensorboard=True, mlflow=True), Path("runs/t"), "t", "mup")
    assert tr.destinations() == {"tensorboard": str(run / "tensorboard"),
                                 "mlflow": f"sqlite:///{run}/mlflow.db (experiment 't')"}
    assert f"sqlite:///{run}/mlflow.db".startswith("sqlite:////")  # an absolute path
    tr = Trackers(TrackingConfig(tensorboard="tb", mlflow="http://mlflow.example:5000", experiment="e"),
                  run, "t", "mup")
    assert tr.destinations() == {"tensorboard": str(tmp_path / "tb" / "t"),
                                 "mlflow": "http://mlflow.example:5000 (experiment 'e')"}
    assert mlflow_uri("mlruns", run) == (str(tmp_path / "mlruns"), True)  # a directory: the file store
    assert mlflow_uri("file:///x/mlruns", run) == ("file:///x/mlruns", True)
    assert mlflow_uri("databricks", run) == ("databricks", False)
    assert run_name(7, {"width": 64, "log2_lr": -7.0, "seed": 0}) == "t0007-width64-log2_lr-7-seed0"
    assert run_name(12, {"role_lr.readout": 0.5, "opt": "a b"}) == "t0012-role_lr.readout0.5-opta_b"


def test_missing_packages_fail_at_construction(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    with pytest.raises(SweepConfigError, match=r"^tracking.tensorboard needs the tensorboard package: "
                                               r"pip install 'proxytune\[tracking\]'$"):
        trackers(tmp_path, tensorboard=True)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(SweepConfigError, match=r"^tracking.mlflow needs the mlflow package: "
                                               r"pip install 'proxytune\[tracking\]'$"):
        trackers(tmp_path, mlflow=True)
    assert trackers(tmp_path).sync(None) == 0  # nothing enabled: nothing to import, nothing read


# ------------------------------------------------------------------ logging and reading back
def evals_of(t, key):
    return [(e["step"], float(e[key])) for e in t.user_attrs["result"]["evals"]]


def test_every_trial_logged_once_and_read_back(swept, tmp_path, capfd):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, store = swept
    trials = finished(store)
    assert [t.user_attrs["status"] for t in trials] == ["complete", "complete", "failed"]
    tr = trackers(tmp_path, tensorboard=True, mlflow=True)
    assert tr.sync(store) == 3
    assert "Creating initial MLflow database tables" not in capfd.readouterr().err  # quiet on the sweep's console
    run = tmp_path / "run"

    # TensorBoard: one directory per trial, named by the point, with the curve and the final metrics
    tb = run / "tensorboard"
    names = {t.number: run_name(t.number, t.user_attrs["point"]) for t in trials}
    assert sorted(p.name for p in tb.iterdir()) == sorted(names.values())
    assert names[0] == "t0000-width32-log2_lr-9" and not (run / TMP_DIR).exists()
    for t in trials:
        acc = EventAccumulator(str(tb / names[t.number]))
        acc.Reload()
        assert json.loads((tb / names[t.number] / TRIAL_FILE).read_text())["trial"] == t.number
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
        text = acc.Tensors("trial/text_summary")[0].tensor_proto.string_val[0].decode()
        if t.user_attrs["status"] == "failed":
            assert acc.Tags()["scalars"] == [] and "RuntimeError: boom at step 3" in text and "failed" in text
            continue
        res = t.user_attrs["result"]
        for key in ("val_loss", "train_loss"):
            got = [(e.step, e.value) for e in acc.Scalars(key)]
            assert [s for s, _ in got] == [s for s, _ in evals_of(t, key)] == [8, 16]
            assert [v for _, v in got] == pytest.approx([v for _, v in evals_of(t, key)], rel=1e-6)  # float32
        steps = acc.Scalars("train_loss_step")
        assert [e.step for e in steps] == list(range(1, 17))
        assert [e.value for e in steps] == pytest.approx(res["train_losses"], rel=1e-6)
        for key in ("final_val_loss", "final_train_loss", "tokens", "flops", "n_params", "wall_time", "steps_done"):
            (e,) = acc.Scalars(key)
            assert e.step == 16 and e.value == pytest.approx(float(res[key]), rel=1e-6)

    # MLflow: one run per trial, with tags, params, status and the curve as metric history
    client = MlflowClient(tracking_uri=f"sqlite:///{run}/mlflow.db")
    exp = client.get_experiment_by_name("t")
    runs = {int(r.data.tags["proxytune.trial"]): r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [0, 1, 2]
    for t in trials:
        r = runs[t.number]
        tags, params = r.data.tags, r.data.params
        assert r.info.run_name == names[t.number]
        assert tags["proxytune.sweep"] == "t" and tags["proxytune.point"] == t.user_attrs["point_id"]
        assert tags["proxytune.recipe"] == "mup" and tags["proxytune.width"] == "32"
        assert tags["proxytune.status"] == t.user_attrs["status"]
        assert params["width"] == "32" and params["log2_lr"] == str(t.user_attrs["point"]["log2_lr"])
        assert params["recipe"] == "mup"
        if t.user_attrs["status"] == "failed":
            assert r.info.status == "FAILED" and tags["proxytune.error"].endswith("RuntimeError: boom at step 3")
            assert r.data.metrics == {}
            continue
        assert r.info.status == "FINISHED"
        assert params["optimizer"] == "adamw" and params["depth"] == "1"
        assert float(params["lr"]) == pytest.approx(2.0 ** t.user_attrs["point"]["log2_lr"])
        for key in ("val_loss", "train_loss"):
            hist = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(hist) == evals_of(t, key)
        res = t.user_attrs["result"]
        assert r.data.metrics["final_val_loss"] == float(res["final_val_loss"])
        assert r.data.metrics["tokens"] == res["tokens"] == 1024
        assert len(client.get_metric_history(r.info.run_id, "train_loss_step")) == 16

    # exactly once: again, after a restart, and cheaply (no ledger write when nothing is new)
    ledger = json.loads((run / LEDGER).read_text())
    assert ledger["version"] == 1 and ledger["sweep"] == "t"
    assert {dest: sorted(trials) for dest, trials in ledger["logged"].items()} == {
        f"tensorboard:{tb}": ["0", "1", "2"], f"mlflow:sqlite:///{run}/mlflow.db#t": ["0", "1", "2"]}
    stamp = (run / LEDGER).stat().st_mtime_ns
    started = time.perf_counter()
    assert tr.sync(store) == 0
    assert time.perf_counter() - started < 0.5
    assert trackers(tmp_path, tensorboard=True, mlflow=True).sync(store) == 0
    assert (run / LEDGER).stat().st_mtime_ns == stamp
    assert len(client.search_runs([exp.experiment_id])) == 3 and len(list(tb.iterdir())) == 3


def test_crash_before_the_ledger_logs_nothing_twice(swept, tmp_path, monkeypatch):
    """Ledger lost, a run half-written: the trackers' own checks keep every trial at exactly one run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset-below")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # restored (absent) after the test
    _, store = swept
    tb = tmp_path / "run" / "tensorboard"
    ml = tmp_path / "mlruns"
    assert trackers(tmp_path, tensorboard=True, mlflow=str(ml)).sync(store) == 3
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # MLflow 3 refuses its file store without it
    ledger = tmp_path / "run" / LEDGER

    ledger.unlink()  # crashed after logging, before the ledger was written
    tr = trackers(tmp_path, tensorboard=True, mlflow=str(ml))
    assert tr.sync(store) == 0
    assert sorted(json.loads(ledger.read_text())["logged"][f"tensorboard:{tb}"]) == ["0", "1", "2"]

    # crashed half-way through trial 1: its MLflow run still RUNNING, its TensorBoard copy without trial.json,
    # a temporary directory left behind
    client = MlflowClient(tracking_uri=str(ml))
    exp = client.get_experiment_by_name("t")
    (one,) = client.search_runs([exp.experiment_id], "tags.`proxytune.trial` = '1'")
    client.update_run(one.info.run_id, status="RUNNING")
    name = run_name(1, finished(store)[1].user_attrs["point"])
    (tb / name / TRIAL_FILE).unlink()
    (tmp_path / "run" / TMP_DIR / "t0001-stale.123").mkdir(parents=True)
    body = json.loads(ledger.read_text())
    for trials in body["logged"].values():
        del trials["1"]
    ledger.write_text(json.dumps(body))

    assert trackers(tmp_path, tensorboard=True, mlflow=str(ml)).sync(store) == 1
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["proxytune.trial"] for r in runs) == ["0", "1", "2"]
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    assert len(client.get_metric_history(
        next(r for r in runs if r.data.tags["proxytune.trial"] == "1").info.run_id, "val_loss")) == 2
    assert len(list(tb.iterdir())) == 3 and (tb / name / TRIAL_FILE).is_file()
    assert len(list((tb / name).glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "run" / TMP_DIR).exists()


def test_a_failing_tracker_warns_once_and_catches_up_later(swept, tmp_path):
    _, store = swept
    # an MLflow server that is down: a port nobody listens on (bound, so no one else takes it)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        tr = trackers(tmp_path, tensorboard=True, mlflow=uri)
        started = time.perf_counter()
        with pytest.warns(TrackingWarning, match=r"tracking.mlflow: could not log trials to http://127.0.0.1:"
                                                 r"\d+ \(experiment 't'\): ConnectionError: cannot reach") as rec:
            assert tr.sync(store) == 3  # TensorBoard got them all
        assert rec[0].filename == __file__  # points at the caller of sync
        assert time.perf_counter() - started < 5
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the same reason is not warned again
            assert tr.sync(store) == 0
            assert tr.sync(store, force=True) == 0
    logged = json.loads((tmp_path / "run" / LEDGER).read_text())["logged"]
    assert list(logged) == [f"tensorboard:{tmp_path / 'run' / 'tensorboard'}"]  # successes only

    # a file store whose directory cannot be made (a file is in the way), then fixed: logged on a later sync
    blocker = tmp_path / "mlruns"
    blocker.write_text("not a directory")
    tr = Trackers(TrackingConfig(mlflow=str(blocker)), tmp_path / "run2", "t", "mup", retry_seconds=0.0)
    with pytest.warns(TrackingWarning, match="tracking.mlflow: could not log trials"):
        assert tr.sync(store) == 0
    blocker.unlink()
    assert tr.sync(store) == 3
    assert tr.sync(store) == 0

    # the ledger cannot be written (a directory is in the way): warned, the sweep goes on, nothing twice
    run3 = tmp_path / "run3"
    (run3 / LEDGER).mkdir(parents=True)
    tr = Trackers(TrackingConfig(tensorboard=True), run3, "t", "mup")
    with pytest.warns(TrackingWarning, match=f"tracking: cannot write {run3 / LEDGER}: IsADirectoryError") as rec:
        assert tr.sync(store) == 3
    assert rec[0].filename == __file__  # points at the caller of sync
    assert tr.sync(store) == 0 and len(list((run3 / "tensorboard").iterdir())) == 3


def test_a_backlog_is_logged_within_the_time_budget(swept, tmp_path):
    """A resumed sweep with many unlogged trials does not hold the runner's loop: each sync logs what fits in
    budget_seconds (at least one trial); force logs the rest at once."""
    _, store = swept
    tr = Trackers(TrackingConfig(tensorboard=True), tmp_path / "run", "t", "mup", budget_seconds=0.0)
    assert [tr.sync(store), tr.sync(store)] == [1, 1]
    assert tr.sync(store, force=True) == 1
    assert tr.sync(store, force=True) == 0
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 3


# ------------------------------------------------------------------ optuna-dashboard
def dashboard_studies(command: str) -> dict[str, int]:
    """Open the storage the way ``command`` tells optuna-dashboard to, in-process; {study name: trial count}."""
    import optuna_dashboard
    from werkzeug.test import Client

    argv = shlex.split(command)
    assert argv[0] == "optuna-dashboard" and len(argv) == 2
    client = Client(optuna_dashboard.wsgi(argv[1]))  # the CLI guesses the storage from the argument the same way
    resp = client.get("/api/studies")
    assert resp.status_code == 200
    out = {}
    for s in resp.get_json()["study_summaries"]:
        detail = client.get(f"/api/studies/{s['study_id']}")
        assert detail.status_code == 200
        out[s["study_name"]] = len(detail.get_json()["trials"])
    return out


def test_dashboard_command_opens_the_sweep(swept, tmp_path):
    import optuna

    sweep, store = swept
    url = sweep.cfg.storage_url()
    assert url.endswith("trials.journal")
    command = dashboard_command(url)
    assert command == f"optuna-dashboard {shlex.quote(url)}"
    assert dashboard_studies(command) == {"t": len(store.trials())}

    # an RDB URL is passed as it is; a path with a space is quoted
    db = tmp_path / "a b" / "sweeps.db"
    db.parent.mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    command = dashboard_command(f"sqlite:///{db}")
    assert command == f"optuna-dashboard 'sqlite:///{db}'"
    assert dashboard_studies(command) == {"s": 2}
    assert math.isfinite(study.best_value)

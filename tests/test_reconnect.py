"""A database storage that goes away mid-sweep: calls wait, reconnect and carry on; nothing lost or doubled."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml
from optuna.exceptions import StorageInternalError

from proxytune.sweep import reconnect
from proxytune.sweep.reconnect import StorageUnavailable, is_connection_error, retry_connection

sa_exc = pytest.importorskip("sqlalchemy.exc")


def _wrapped(cause: Exception) -> StorageInternalError:
    """What RDBStorage raises when a statement fails: a StorageInternalError caused by SQLAlchemy's error."""
    try:
        try:
            raise cause
        except Exception as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc
    except StorageInternalError as exc:
        return exc


def _lost() -> Exception:
    """The server is gone."""
    return _wrapped(sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused")))


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(reconnect, "FIRST_WAIT_S", 0.01)
    monkeypatch.setattr(reconnect, "MAX_WAIT_S", 0.02)


def test_connection_errors_are_told_apart_from_other_errors():
    assert is_connection_error(_lost())
    assert is_connection_error(sa_exc.InterfaceError("x", {}, Exception("connection already closed")))
    assert not is_connection_error(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_connection_error(ValueError("bad value"))
    assert not is_connection_error(_wrapped(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key"))))


def test_a_call_waits_out_an_outage_and_logs_it_once_each_way(quick_backoff, caplog):
    failures = iter([_lost()] * 5)
    calls = []

    def call():
        calls.append(1)
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "stored"

    with caplog.at_level(logging.WARNING, logger="proxytune.sweep"):
        assert retry_connection(call, what="postgresql://db", timeout=30) == "stored"
    assert len(calls) == 6
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in lines) == 1, lines
    assert sum("reachable again" in m for m in lines) == 1, lines


def test_other_errors_are_not_retried(quick_backoff):
    calls = []

    def call():
        calls.append(1)
        raise KeyError("Record does not exist.")

    with pytest.raises(KeyError):
        retry_connection(call, what="db", timeout=30)
    assert len(calls) == 1


def test_an_outage_longer_than_the_timeout_stops_with_one_clear_error(quick_backoff):
    def call():
        raise _lost()

    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"unreachable for 0.3 s .*proxytune resume"):
        retry_connection(call, what="postgresql://db", timeout=0.3)
    assert time.monotonic() - start < 5


def test_leases_that_ran_out_during_an_outage_are_not_judged_until_workers_could_renew(tmp_path):
    from proxytune.sweep import Sweep
    from proxytune.sweep.store import MAX_WAIT_S

    from test_sweep import sweep_dict

    d = sweep_dict(tmp_path, executor={"workers": 1, "lease_seconds": 5})
    store = Sweep.from_dict(d).prepare()
    [trial] = store.claim(1)
    # a worker on another host whose lease ran out while the database was down
    store.storage.set_trial_user_attr(trial._trial_id, "lease", {"host": "elsewhere", "pid": 1,
                                                                 "until": time.time() - 1})
    assert [t._trial_id for t in store.stale()] == [trial._trial_id]
    store.storage.recovered_at = time.time()  # this process just saw the storage come back
    assert store.stale() == []
    store.storage.recovered_at = time.time() - 5 - 1.2 * MAX_WAIT_S - 1
    assert [t._trial_id for t in store.stale()] == [trial._trial_id]


# ------------------------------------------------------------------ against a real server
def test_storage_calls_block_while_the_server_restarts(postgres_server, quick_backoff, caplog):
    from proxytune.sweep.store import open_storage
    from optuna.study import StudyDirection

    storage = open_storage(postgres_server.url, reconnect_timeout=60)
    sid = storage.create_new_study([StudyDirection.MINIMIZE], f"restart{os.getpid()}")
    postgres_server.pause()
    try:
        timer = threading.Timer(2.0, postgres_server.resume)
        timer.start()
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="proxytune.sweep"):
            storage.set_study_user_attr(sid, "written", "during the outage")  # waits for the server, then goes on
        waited = time.monotonic() - start
        timer.join()
    finally:
        if not _ready(postgres_server):
            postgres_server.resume()
    assert waited >= 1.5
    assert storage.get_study_user_attrs(sid) == {"written": "during the outage"}
    assert storage.recovered_at is not None
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in messages and "reachable again" in messages


def test_a_worker_started_while_the_server_is_down_waits_for_it(postgres_server, quick_backoff):
    from proxytune.sweep.store import open_storage

    postgres_server.pause()
    try:
        threading.Timer(2.0, postgres_server.resume).start()
        storage = open_storage(postgres_server.url, reconnect_timeout=60, wait=True)
        assert storage.get_all_studies() is not None
    finally:
        time.sleep(0.1)
        if not _ready(postgres_server):
            postgres_server.resume()
    # a command a person typed does not wait: it says the server is not answering
    postgres_server.pause()
    try:
        from proxytune.sweep.config import SweepConfigError

        with pytest.raises(SweepConfigError, match="is the server running"):
            open_storage(postgres_server.url)
    finally:
        postgres_server.resume()


def _ready(server) -> bool:
    from pgserver import _server_ready

    return _server_ready(server.bin_dir, server.port)


def test_a_cli_sweep_survives_a_database_restart_exactly_once(tmp_path, postgres_server):
    """Two workers on PostgreSQL; the server stops for longer than a lease, mid-sweep, and comes back."""
    from proxytune.sweep import Sweep

    from test_sweep import completes_per_point, sweep_dict

    d = sweep_dict(tmp_path, name=f"restart{os.getpid()}", storage=postgres_server.url,
                   axes={"width": [32], "log2_lr": [-10, -9, -8, -7, -6, -5]},
                   train={**__import__("test_sweep").TRAIN, "steps": 120, "eval_every": 40},
                   executor={"workers": 2, "threads": 1, "batch": 1, "lease_seconds": 3})
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(d))
    sw = Sweep.from_dict(d)
    proc = subprocess.Popen([sys.executable, "-m", "proxytune.cli", "sweep", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until a trial has finished and others are running
            if proc.poll() is not None:
                break
            try:
                counts = sw.store().counts()
            except Exception:  # noqa: BLE001 - the study may not exist yet
                counts = {"complete": 0, "running": 0}
            if counts["complete"] >= 1 and counts["running"] >= 1:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the sweep ended before the outage could be staged"
        postgres_server.pause()
        time.sleep(8)  # longer than the 3 s lease
        postgres_server.resume()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        if not _ready(postgres_server):
            postgres_server.resume()
    err = err.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "unreachable" in err and "reachable again" in err, err[-3000:]
    per_point = completes_per_point(sw)
    assert len(per_point) == 6 and set(per_point.values()) == {1}, per_point
    statuses = [t.user_attrs.get("status") for t in sw.store().trials()]
    # the workers were alive throughout: none of their trials may be taken from them after the outage
    assert "requeued" not in statuses and "failed" not in statuses, statuses


def test_a_wall_clock_jump_on_the_judging_host_takes_no_live_trial(tmp_path, monkeypatch, caplog):
    from proxytune.sweep import Sweep
    from proxytune.sweep import store as store_module

    from test_sweep import sweep_dict

    d = sweep_dict(tmp_path, executor={"workers": 1, "lease_seconds": 5})
    store = Sweep.from_dict(d).prepare()
    [trial] = store.claim(1)
    # a live worker on another host, lease renewed a moment ago
    store.storage.set_trial_user_attr(trial._trial_id, "lease", {"host": "elsewhere", "pid": 1,
                                                                 "until": time.time() + 5})
    assert store.stale() == []
    real_time = time.time
    monkeypatch.setattr(store_module.time, "time", lambda: real_time() + 3600)  # an NTP step of one hour
    with caplog.at_level(logging.WARNING, logger="proxytune.sweep"):
        assert store.stale() == [], "a lease judged against a clock that just jumped"
    assert any("clock jumped by +3600 s" in r.getMessage() for r in caplog.records)
    # had the clock always been that far ahead, the same lease would be long expired
    fresh = Sweep.from_dict(d).store()
    assert [t._trial_id for t in fresh.stale()] == [trial._trial_id]

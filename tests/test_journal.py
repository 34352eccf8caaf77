"""The journal file survives torn writes, corrupt records and locks left by killed processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from proxytune.cli import app
from proxytune.sweep import Sweep, SweepConfigError
from proxytune.sweep.journal import FlockLock, JournalRepairWarning, NotAJournal, repair_tail
from proxytune.sweep.store import open_storage
from sweep_helpers import completes_per_point

TRAIN = {"depth": 1, "steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 1}


def sweep_dict(tmp_path: Path, **over) -> dict:
    d = {"name": "j", "model": "gpt", "data_options": {"max_bytes": 200_000}, "base": {"width": 32, "depth": 1},
         "axes": {"width": [32], "log2_lr": [-9, -8, -7]}, "train": dict(TRAIN),
         "executor": {"kind": "inline", "lease_seconds": 2}, "runs_dir": str(tmp_path / "runs"),
         "strategy": {"kind": "grid", "refine": False}}
    d.update(over)
    return d


@pytest.fixture(scope="module")
def finished_journal(tmp_path_factory) -> bytes:
    """The bytes of a finished 3-point sweep's journal."""
    tmp = tmp_path_factory.mktemp("done")
    sw = Sweep.from_dict(sweep_dict(tmp))
    assert sw.run()["complete"] == 3
    return (tmp / "runs" / "j" / "trials.journal").read_bytes()


def finished_numbers(path: Path) -> dict[int, float]:
    storage = open_storage(str(path))
    (study,) = storage.get_all_studies()
    return {t.number: t.values[0] for t in storage.get_all_trials(study._study_id)
            if t.state == TrialState.COMPLETE}


def test_a_cut_anywhere_in_the_last_record_keeps_every_earlier_trial(tmp_path, finished_journal):
    lines = finished_journal.splitlines(keepends=True)
    start = len(finished_journal) - len(lines[-1])
    whole = tmp_path / "whole.journal"
    whole.write_bytes(finished_journal)
    expected_all = finished_numbers(whole)
    before = tmp_path / "before.journal"
    before.write_bytes(finished_journal[:start])
    expected = finished_numbers(before)  # what the records before the last one hold
    assert len(expected_all) == 3
    path = tmp_path / "cut.journal"
    for cut in range(start + 1, len(finished_journal)):  # every byte of the last record, newline excluded
        path.write_bytes(finished_journal[:cut])
        with pytest.warns(JournalRepairWarning, match=f"dropped 1 incomplete record at byte {start}"):
            got = finished_numbers(path)
        assert got == expected, cut
        assert path.read_bytes() == finished_journal[:start]  # cut back to the last whole record
        assert Path(f"{path}.torn-{start}").exists()
        os.unlink(f"{path}.torn-{start}")


@pytest.mark.parametrize("where", ["last record", "third-last record", "first trial's record"])
def test_after_a_torn_write_resume_completes_every_point_once(tmp_path, finished_journal, where):
    lines = finished_journal.splitlines(keepends=True)
    k = {"last record": 1, "third-last record": 3, "first trial's record": len(lines) // 3}[where]
    start = len(finished_journal) - sum(len(x) for x in lines[-k:])
    cut = start + len(lines[-k]) // 2
    d = sweep_dict(tmp_path)
    run_dir = tmp_path / "runs" / "j"
    run_dir.mkdir(parents=True)
    (run_dir / "trials.journal").write_bytes(finished_journal[:cut])
    time.sleep(2.2)  # the cut trials' leases (2 s, held by this process) expire
    with pytest.warns(JournalRepairWarning):
        counts = Sweep.from_dict(d).run()
    assert counts["complete"] == 3
    sw = Sweep.from_dict(d)
    assert set(completes_per_point(sw).values()) == {1} and len(completes_per_point(sw)) == 3
    for line in (run_dir / "trials.journal").read_bytes().splitlines():
        json.loads(line)  # every record whole: resume did not write onto the torn one


def test_a_corrupt_record_in_the_middle_is_refused_with_its_offset_and_the_repair_command(tmp_path,
                                                                                        finished_journal):
    lines = finished_journal.splitlines(keepends=True)
    n = len(lines) // 2
    offset = sum(len(x) for x in lines[:n])
    bad = finished_journal[:offset] + b'{"op_code": 5, "trial_id"' + b"xx\n" + finished_journal[offset:]
    d = sweep_dict(tmp_path)
    run_dir = tmp_path / "runs" / "j"
    run_dir.mkdir(parents=True)
    (run_dir / "trials.journal").write_bytes(bad)
    (run_dir / "sweep.yaml").write_text(yaml.safe_dump(Sweep.from_dict(d).cfg.model_dump(mode="json")))
    with pytest.raises(SweepConfigError, match=rf"corrupt at byte {offset} \(record {n + 1}\).*"
                                               rf"proxytune repair .* --cut-at {offset}") as exc:
        Sweep.from_dict(d).run()
    assert "Expecting" not in str(exc.value)
    runner = CliRunner()
    res = runner.invoke(app, ["status", str(run_dir)])
    assert res.exit_code == 2 and f"--cut-at {offset}" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["repair", str(run_dir), "--cut-at", str(offset + 1)])
    assert res.exit_code == 2 and "not the start of a record" in res.output
    res = runner.invoke(app, ["repair", str(run_dir), "--cut-at", str(offset)])
    assert res.exit_code == 0, res.output
    time.sleep(2.2)
    assert Sweep.from_dict(d).run()["complete"] == 3
    assert set(completes_per_point(Sweep.from_dict(d)).values()) == {1}


def test_a_lock_left_by_a_killed_process_blocks_nobody(tmp_path):
    d = sweep_dict(tmp_path)
    sw = Sweep.from_dict(d)
    store = sw.prepare()
    journal = tmp_path / "runs" / "j" / "trials.journal"
    # Optuna's own lock, left dangling (relative target) by a killed writer: removed with a warning
    os.symlink("runs/j/trials.journal", f"{journal}.lock")
    # our lock, held by a process that is then killed: the kernel releases it
    code = ("import sys, time; from proxytune.sweep.journal import FlockLock; "
            "FlockLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(journal)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    del store
    start = time.time()
    with pytest.warns(JournalRepairWarning, match="removed a stale lock"):
        assert Sweep.from_dict(d).run()["complete"] == 3
    assert time.time() - start < 120 and not os.path.islink(f"{journal}.lock")


def test_flock_excludes_other_holders(tmp_path):
    path = str(tmp_path / "x.journal")
    a = FlockLock(path)
    a.acquire()
    code = ("import sys, time; from proxytune.sweep.journal import FlockLock; print('ready', flush=True); "
            "t = time.time(); FlockLock(sys.argv[1]).acquire(); print(time.time() - t)")
    other = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    assert other.poll() is None  # still waiting
    a.release()
    waited = float(other.communicate(timeout=60)[0])
    assert waited >= 1.0


def test_repair_tail_leaves_a_clean_file_alone(tmp_path):
    path = tmp_path / "x.journal"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    assert repair_tail(str(path)) is None and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b'{"a": 1}\n{"b": ')
    done = repair_tail(str(path))
    assert done == {"offset": 9, "bytes": 6, "side_file": f"{path}.torn-9"}
    assert path.read_bytes() == b'{"a": 1}\n' and Path(done["side_file"]).read_bytes() == b'{"b": '
    path.write_bytes(b'{"b": ')  # a torn first record: a repair never moves the whole file aside
    with pytest.raises(NotAJournal, match="not a proxytune journal"):
        repair_tail(str(path))
    assert path.read_bytes() == b'{"b": '


@pytest.mark.parametrize("storage, needle", [
    ("/tmp", "is a directory"),
    ("/proc/nope/x.journal", "cannot create its folder"),
    ("/etc/hostname/trials.journal", "not a folder|cannot create its folder"),
])
def test_odd_storage_paths_are_one_line_errors(tmp_path, storage, needle):
    with pytest.raises(SweepConfigError, match=needle):
        Sweep.from_dict(sweep_dict(tmp_path, storage=storage)).run()


@pytest.mark.parametrize("runs_dir, needle", [("/dev/null", "is a file, not a folder"),
                                              ("/proc/nope", "cannot (write|create)")])
def test_odd_runs_dirs_are_one_line_errors(tmp_path, runs_dir, needle):
    with pytest.raises(SweepConfigError, match=needle):
        Sweep.from_dict(sweep_dict(tmp_path, runs_dir=runs_dir)).run()


def test_relative_sqlite_storage_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sw = Sweep.from_dict(sweep_dict(tmp_path, storage="sqlite:///x.db"))
    assert sw.cfg.storage == f"sqlite:///{tmp_path.resolve() / 'x.db'}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_journal_is_refused_before_workers_start(tmp_path):
    d = sweep_dict(tmp_path)
    assert Sweep.from_dict(d).run()["complete"] == 3
    journal = tmp_path / "runs" / "j" / "trials.journal"
    journal.chmod(0o444)
    try:
        with pytest.raises(SweepConfigError, match="read-only"):
            Sweep.from_dict(sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-9, -8, -7, -6]})).run()
    finally:
        journal.chmod(0o644)


def test_read_only_check(tmp_path, monkeypatch):
    from proxytune.sweep import store

    path = tmp_path / "j.journal"
    path.write_text("")
    monkeypatch.setattr(store.os, "access", lambda p, mode: str(p) != str(path))
    with pytest.raises(SweepConfigError, match="is read-only"):
        store.check_writable(str(path))

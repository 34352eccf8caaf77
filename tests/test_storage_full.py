"""A full disk stops the sweep with one line and leaves the journal whole; resume completes every point once."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from proxytune.cli import app
from proxytune.sweep import Sweep
from proxytune.sweep import journal
from proxytune.sweep.errors import StorageFull
from proxytune.sweep.journal import SafeJournalBackend
from sweep_helpers import completes_per_point
from test_journal import sweep_dict


def _fill_after(monkeypatch, n_bytes: int) -> None:
    """Make the journal's writes fail with ENOSPC once ``n_bytes`` more bytes have been written."""
    room = {"left": n_bytes}
    real_write = os.write

    def write(fd: int, data) -> int:
        if room["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[:room["left"]]))
        room["left"] -= n
        return n

    monkeypatch.setattr(journal.os, "write", write)


def test_a_write_cut_short_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    path = str(tmp_path / "t.journal")
    backend = SafeJournalBackend(path)
    backend.append_logs([{"op_code": 0, "worker_id": "a", "study_name": "s", "directions": [1]}])
    whole = Path(path).read_bytes()
    _fill_after(monkeypatch, 10)  # room for part of the next record only
    with pytest.raises(StorageFull, match="no space left on the device of .*proxytune resume"):
        backend.append_logs([{"op_code": 4, "worker_id": "a", "study_id": 0, "key": "k", "value": "x" * 100}])
    assert Path(path).read_bytes() == whole, "the journal still ends on the last whole record"
    monkeypatch.undo()
    backend.append_logs([{"op_code": 4, "worker_id": "a", "study_id": 0, "key": "k", "value": "y"}])
    assert Path(path).read_bytes().count(b"\n") == 2


def test_a_full_disk_mid_sweep_is_one_line_and_resume_finishes_it(tmp_path, monkeypatch):
    d = sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-9, -8, -7, -6]})
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(d))
    _fill_after(monkeypatch, 12_000)  # a few trials' worth: the disk fills in the middle of the sweep
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(cfg)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left" in errors[0], result.stderr
    assert str(tmp_path / "runs" / "j") in errors[0], "the message names the run folder to resume"
    assert "Traceback" not in result.output
    journal_bytes = (tmp_path / "runs" / "j" / "trials.journal").read_bytes()
    assert journal_bytes.endswith(b"\n")
    sw = Sweep.from_dict(d)
    done_before = {p: n for p, n in completes_per_point(sw).items()}
    assert 0 < len(done_before) < 4, done_before
    monkeypatch.undo()  # space freed
    result = runner.invoke(app, ["resume", str(tmp_path / "runs" / "j")])
    assert result.exit_code == 0, result.output
    per_point = completes_per_point(sw)
    assert len(per_point) == 4 and set(per_point.values()) == {1}, per_point


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_under_worker_processes(tmp_path):
    """Worker processes on a tmpfs that fills: one line, exit 1, journal whole; bigger disk, resume completes."""
    mnt = Path("/tmp") / f"proxytune-full-{uuid.uuid4().hex[:8]}"
    if not _mount_tmpfs(mnt, "300k"):
        pytest.skip("needs root and tmpfs mounts to stage a full disk")
    try:
        (mnt / "filler").write_bytes(b"\0" * 283_000)
        d = sweep_dict(tmp_path, axes={"width": [32], "log2_lr": [-10, -9, -8, -7, -6, -5, -4, -3]},
                       storage=str(mnt / "t.journal"), executor={"workers": 1, "threads": 1})
        cfg = tmp_path / "sweep.yaml"
        cfg.write_text(yaml.safe_dump(d))
        cli = [sys.executable, "-m", "proxytune.cli"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        first = subprocess.run([*cli, "sweep", str(cfg)], capture_output=True, text=True, timeout=300, env=env)
        assert first.returncode == 1, first.stderr[-2000:]
        assert "Traceback" not in first.stderr, first.stderr[-3000:]
        assert [line for line in first.stderr.splitlines() if line.startswith("error:")] == [
            first.stderr.strip().splitlines()[-1]]
        assert "no space left" in first.stderr
        assert (mnt / "t.journal").read_bytes().endswith(b"\n")
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        again = subprocess.run([*cli, "resume", str(tmp_path / "runs" / "j")], capture_output=True, text=True,
                               timeout=300, env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        per_point = completes_per_point(Sweep.from_dict(d))
        assert len(per_point) == 8 and set(per_point.values()) == {1}, per_point
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)

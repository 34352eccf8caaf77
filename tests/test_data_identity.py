"""The data a sweep trains on is part of the sweep: a changed file is refused (or accepted on request), a file
that changes under a running trial fails that trial, and a relative path is relative to the sweep file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from proxytune.sweep import Sweep
from proxytune.sweep.dataid import DATA_ATTR
from proxytune.sweep.errors import DataChanged

TRAIN = {"depth": 1, "steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 1}
TEXT = b"the quick brown fox jumps over the lazy dog, again and again. " * 200


def sweep_dict(tmp_path: Path, data: str, **over) -> dict:
    d = {"name": "d", "model": "gpt", "data": data, "base": {"width": 32, "depth": 1},
         "axes": {"width": [32], "log2_lr": [-9, -8, -7]}, "train": dict(TRAIN),
         "executor": {"kind": "inline", "batch": 1}, "runs_dir": str(tmp_path / "runs"),
         "strategy": {"kind": "grid", "refine": False}}
    d.update(over)
    return d


def test_a_replaced_data_file_is_refused_naming_the_file_and_both_hashes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    d = sweep_dict(tmp_path, str(corpus), axes={"width": [32], "log2_lr": [-9]})
    sw = Sweep.from_dict(d)
    assert sw.run()["complete"] == 1
    stored = sw.store().study.user_attrs[DATA_ATTR]
    assert stored["data"] == str(corpus) and len(stored["sha256"]) == 64
    corpus.write_bytes(TEXT.replace(b"fox", b"cat"))
    d["axes"] = {"width": [32], "log2_lr": [-9, -8]}  # a second run that would add a point
    with pytest.raises(DataChanged) as err:
        Sweep.from_dict(d).run()
    text = str(err.value)
    assert str(corpus) in text and stored["sha256"][:16] in text and "--accept-data-change" in text
    assert "\n" not in text
    assert Sweep.from_dict(d).store().counts()["complete"] == 1  # nothing trained on the new file
    # the same refusal through the command line, one line, and nothing run
    from typer.testing import CliRunner

    from proxytune.cli import app

    run_dir = tmp_path / "runs" / "d"
    res = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert res.exit_code == 1 and "is not what sweep 'd' trained on" in res.output
    # accepted explicitly: it runs, says so, and keeps the old identity in the history
    with pytest.warns(UserWarning, match="its data changed"):
        counts = Sweep(Sweep.from_dict(d).cfg, accept_data_change=True).run()
    assert counts["complete"] == 2
    attrs = Sweep.from_dict(d).store().study.user_attrs
    assert attrs[DATA_ATTR]["sha256"] != stored["sha256"]
    assert attrs[DATA_ATTR + "_history"][0]["sha256"] == stored["sha256"]


def test_a_data_file_changed_during_a_sweep_stops_it_and_fails_the_trial_it_ran_under(tmp_path, monkeypatch):
    """The file is cut short while the first trial trains: that trial fails (its result mixes two files), the
    sweep stops before taking another trial, and the points left stay waiting."""
    import proxytune.sweep.worker as worker

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    real = worker.train
    calls = []

    def train_then_cut(cfg, **kw):
        calls.append(1)
        result = real(cfg, **kw)
        with corpus.open("r+b") as fh:  # cut in place, as an editor or a copy over it would
            fh.truncate(len(TEXT) // 2)
        return result

    monkeypatch.setattr(worker, "train", train_then_cut)
    sw = Sweep.from_dict(sweep_dict(tmp_path, str(corpus)))
    with pytest.raises(DataChanged, match="is not what sweep 'd' trained on"):
        sw.run()
    counts = sw.store().counts()
    assert len(calls) == 1
    assert counts["complete"] == 0 and counts["failed"] == 1 and counts["waiting"] == 2 and counts["running"] == 0
    (failed,) = [r for r in sw.records() if r["status"] == "failed"]
    assert "changed while this trial ran" in failed["error"]


def test_a_relative_data_path_is_relative_to_the_sweep_file_and_resume_works_from_anywhere(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "corpus.txt").write_bytes(TEXT)
    d = sweep_dict(tmp_path, "corpus.txt", axes={"width": [32], "log2_lr": [-9]})
    (project / "sweep.yaml").write_text(yaml.safe_dump(d))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "corpus.txt").write_bytes(b"a different file of the same name " * 100)
    monkeypatch.chdir(elsewhere)
    sw = Sweep.from_yaml(project / "sweep.yaml")
    assert sw.cfg.data == str(project / "corpus.txt")
    assert sw.run()["complete"] == 1
    saved = yaml.safe_load((tmp_path / "runs" / "d" / "sweep.yaml").read_text())
    assert saved["data"] == str(project / "corpus.txt")
    monkeypatch.chdir("/")
    assert Sweep.open(tmp_path / "runs" / "d").run()["complete"] == 1
    # through the API, a relative path is relative to the current folder, and stored absolute
    monkeypatch.chdir(project)
    assert Sweep.from_dict(sweep_dict(tmp_path, "corpus.txt", name="api")).cfg.data == str(project / "corpus.txt")
    assert os.path.isabs(Sweep.from_dict(sweep_dict(tmp_path, "stdlib")).cfg.data) is False

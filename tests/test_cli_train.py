"""`proxytune train`: flags, config files, JSON output and clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from proxytune.cli import app

runner = CliRunner()
TINY = ["--width", "32", "--depth", "1", "--steps", "6", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "3"]


def test_train_json_and_table(tmp_path):
    out = tmp_path / "result.json"
    res = runner.invoke(app, ["train", *TINY, "--lr", "0.01", "--json", "--save", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["status"] == "complete" and data["steps_done"] == 6
    assert data["config"]["lr"] == 0.01 and data["config"]["width"] == 32
    assert json.loads(out.read_text())["train_losses"] == data["train_losses"]
    res = runner.invoke(app, ["train", *TINY])
    assert res.exit_code == 0, res.output
    assert "val loss" in res.stdout and "final_val_loss" in res.stdout


def test_train_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("width: 32\ndepth: 1\nsteps: 4\nbatch_size: 4\nseq_len: 16\neval_every: 2\nlr: 0.002\n"
                   "model_options: {positions: rope}\n")
    res = runner.invoke(app, ["train", "--config", str(cfg), "--lr", "0.004", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["config"]["lr"] == 0.004 and data["config"]["steps"] == 4
    assert data["config"]["model_options"] == {"positions": "rope"}


def test_train_errors_are_clear():
    res = runner.invoke(app, ["train", *TINY, "--recipe", "mupp"])
    assert res.exit_code == 2 and "did you mean 'mup'" in res.output
    res = runner.invoke(app, ["train", *TINY, "--data", "/nonexistent/corpus.txt"])
    assert res.exit_code == 2 and "/nonexistent/corpus.txt" in res.output
    res = runner.invoke(app, ["train", *TINY, "--lr", "-1"])
    assert res.exit_code == 2 and "lr" in res.output


def test_train_reports_divergence_as_a_result():
    res = runner.invoke(app, ["train", *TINY, "--steps", "30", "--lr", "100", "--optimizer", "sgd", "--recipe", "sp",
                              "--grad-clip", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["status"] == "diverged" and data["final_val_loss"] == "inf"


def test_train_help_names_every_precision_the_config_takes():
    """The --precision help lists exactly TrainConfig's choices (it once named three of five)."""
    import re
    import typing

    from proxytune.train import TrainConfig

    choices = typing.get_args(TrainConfig.model_fields["precision"].annotation)
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    text = " ".join(re.sub(r"[│\s]+", " ", res.output).split())
    start = text.index("--precision")
    assert all(c in text[start:start + 200] for c in choices), text[start:start + 200]

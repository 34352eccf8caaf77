"""`proxytune check` (the quick verdict), `coord-check` and `explain --check` from the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from proxytune.cli import app
from proxytune.diagnose.check import quick_check


# A cheaper check than the defaults for the default test run (depth 1, 40 steps; about 20 s against 2 min):
# measured muP drift +0.02 octaves per doubling, SP -1.26, the same verdicts as at the defaults.
SMALL = {"depth": 1, "log2_lrs": (-10, -9, -8, -7, -6, -5, -4, -3, -2), "steps": 40}


@pytest.mark.parametrize("settings", [pytest.param(SMALL, id="small"),
                                      pytest.param({}, id="defaults", marks=pytest.mark.slow)])
def test_quick_check_separates_mup_from_sp(settings):
    ok = quick_check("gpt", recipe="mup", **settings)
    assert ok.transfers and ok.line.startswith("transfers") and not ok.sweep.failed
    assert ok.sweep is not None and abs(ok.sweep.drift_per_doubling) <= 0.5
    bad = quick_check("gpt", recipe="sp", **settings)
    assert not bad.transfers and bad.line.startswith("does not transfer, because")
    assert "grow with width" in bad.line and "use mup" in bad.line
    assert "octaves per doubling" in bad.line
    assert "coordinate check" in bad.report() and "mini LR sweep" in bad.report()


def test_coord_check_cli_and_explain_check(tmp_path):
    runner = CliRunner()
    fig = tmp_path / "cc.png"
    res = runner.invoke(app, ["coord-check", "--widths", "32,64,128", "--depth", "1", "--seeds", "1",
                              "--recipe", "sp", "--figure", str(fig), "--json"])
    assert res.exit_code == 1, res.output  # SP fails the width check
    data = json.loads(res.stdout)
    assert not data["passed"] and data["line"].startswith("FAIL") and data["records"]
    assert fig.stat().st_size > 0
    res = runner.invoke(app, ["coord-check", "--widths", "32,x"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output
    res = runner.invoke(app, ["explain", "--width", "128", "--depth", "1", "--base-width", "32",
                              "--base-depth", "1", "--check"])
    assert res.exit_code == 0, res.output
    assert "quick coordinate check (widths [32, 64, 128]" in res.output and "PASS" in res.output
    assert "lr 0.001, 2 seeds" in res.output  # the shared check settings, not --lr
    # the same check under SP fails, and says so with its exit status
    res = runner.invoke(app, ["explain", "--width", "128", "--depth", "1", "--base-width", "32",
                              "--base-depth", "1", "--recipe", "sp", "--lr", "0.01", "--check"])
    assert res.exit_code == 1 and "FAIL" in res.output, res.output


# Tiny settings for the tied-readout and failure tests (a few seconds each).
TINY_CHECK = {"widths": (16, 32, 64), "depth": 1, "log2_lrs": (-9, -7, -5, -3), "steps": 20, "batch_size": 4,
              "seq_len": 16}


def test_quick_check_on_a_tied_readout():
    """A tied readout gets a forward multiplier, and with it the plan's marker buffer, whose digest differs between
    seeds. The mini sweep used to stop on it after the coordinate check ("buffer 'proxytune_plan' differs between
    members"); the alignment measurement failed on the tied weight's second name."""
    res = quick_check("gpt", model_options={"tied": True}, **TINY_CHECK)
    assert res.sweep is not None and not res.sweep_error
    assert len(res.records) == 3 * 4 * 2 and all(r["status"] in ("complete", "diverged") for r in res.records)
    assert res.alignment is not None, res.alignment_error
    assert any("tied" in n for n in res.alignment.notes)


def test_quick_check_trains_one_by_one_when_members_cannot_batch_and_keeps_the_coordinate_check(monkeypatch):
    """A BatchError: the members train one by one. Any other error in the mini sweep: the coordinate check and
    the alignment are kept and printed, the error is named, and the command exits 2 (no verdict)."""
    import proxytune.diagnose.check as check
    from proxytune.train import BatchError

    alone = []
    real_train = check.train

    def no_batch(configs, **kw):
        raise BatchError("these members cannot batch")

    def counting(cfg, **kw):
        alone.append(cfg.width)
        return real_train(cfg, **kw)

    monkeypatch.setattr(check, "train_batched", no_batch)
    monkeypatch.setattr(check, "train", counting)
    res = quick_check("gpt", **{**TINY_CHECK, "log2_lrs": (-8, -5), "seeds": 2})
    assert res.sweep is not None and len(alone) == 3 * 2 * 2

    def broken(configs, **kw):
        raise RuntimeError("the mini sweep broke")

    monkeypatch.setattr(check, "train_batched", broken)
    res = CliRunner().invoke(app, ["check", "--widths", "16,32,64", "--depth", "1"])
    assert res.exit_code == 2, res.output
    out = res.output
    for line in ("check: coordinate check: widths 16, 32, 64", "check: alignment: width 64",
                 "check: mini LR sweep at width 16: 14 trials"):
        assert line in out, out
    assert "no verdict: the mini LR sweep failed (RuntimeError: the mini sweep broke)" in out
    assert "coordinate check: PASS" in out and "mini LR sweep: failed (RuntimeError: the mini sweep broke)" in out


def test_check_of_a_depth_recipe_at_a_shallow_depth_warns():
    """CompleteP checked across width at depth 1: the verdict is about width; the report warns that the base is
    below the measured safe minimum for carrying its LR across depth. muP (no depth rule) gets no warning."""
    from proxytune.thresholds import THRESHOLDS

    res = quick_check("gpt", recipe="completep", **{**TINY_CHECK, "log2_lrs": (-8, -5), "seeds": 1})
    (w,) = res.warnings
    assert f"base depth 1 is below {THRESHOLDS.min_base_depth}" in w and "across width at depth 1" in w
    assert "warning: this check is across width at depth 1" in res.report()
    assert quick_check("gpt", recipe="mup", **{**TINY_CHECK, "log2_lrs": (-8, -5), "seeds": 1}).warnings == []

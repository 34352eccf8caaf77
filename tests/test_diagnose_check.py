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

"""`proxytune demo --quick` end to end, and `proxytune analyze` on its sweeps."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from proxytune.cli import app


def test_demo_quick_writes_report_and_prediction(tmp_path):
    out = tmp_path / "demo"
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--cpu"])
    assert res.exit_code == 0, res.output
    assert "sp:" in res.output and "mup:" in res.output and "target width 256" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["verdicts"]) == {"sp", "mup"}
    assert all(v.startswith(("PASS", "FAIL")) for v in summary["verdicts"].values())
    pred = summary["prediction"]
    assert pred["target_width"] == 256 and pred["lr"] > 0 and pred["lr_interval"][0] <= pred["lr"]
    report = (out / "report.md").read_text()
    assert "Transfer verdict" in report and "Optimum per width" in report
    for name in ("lr_curves.png", "optimum_vs_width.png", "loss_vs_params.png", "target-plan.json",
                 "target_snippet.py"):
        assert (out / name).stat().st_size > 0, name
    plan = json.loads((out / "target-plan.json").read_text())
    assert plan["recipe"] == "mup" and any(t["role"] == "readout" for t in plan["tensors"].values())
    # analyze the stored muP sweep from the command line
    res = runner.invoke(app, ["analyze", str(out / "runs" / "demo-quick-mup"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["optima"]) == 2 and data["verdict"]["size_axis"] == "width"
    # running the demo again reuses the stored trials
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["prediction"]["lr"] == pred["lr"]

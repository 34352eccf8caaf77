"""Report figures and the sweep report: what they draw and say (data on the axes, not pixels)."""

from __future__ import annotations

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from proxytune.analysis import report
from proxytune.analysis.optimum import find_optimum, optima_by_group
from proxytune.analysis.verdict import transfer_verdict

GRID = [-10.0, -9.0, -8.0, -7.0, -6.0, -5.0, -4.0]


def curve_records(optimum_at: dict[int, float], seeds: int = 2, diverge_at: float | None = None) -> list[dict]:
    """Parabolic loss curves in log2 LR, one per width, with seed noise; ``diverge_at``: an LR that diverges."""
    rng = np.random.default_rng(1)
    out = []
    for width, opt in optimum_at.items():
        level = 3.0 - 0.1 * math.log2(width)  # wider is better, so the curves sit at different heights
        for x in GRID:
            for s in range(seeds):
                loss = math.inf if x == diverge_at else level + 0.03 * (x - opt) ** 2 + rng.normal(0, 0.003)
                out.append({"width": width, "log2_lr": x, "seed": s, "val_loss": loss,
                            "status": "diverged" if x == diverge_at else "complete"})
    return out


@pytest.fixture
def drawn(monkeypatch):
    """The figures each report function draws, kept open: closing is intercepted so tests can read the axes."""
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    yield figs
    monkeypatch.undo()
    for f in figs:
        plt.close(f)


def dashed_slopes(fig) -> list[float]:
    """Slope (y per doubling of x) of every dashed line in the figure's first axes."""
    out = []
    for line in fig.axes[0].get_lines():
        if line.get_linestyle() == "--":
            x, y = np.log2(np.asarray(line.get_xdata(), float)), np.asarray(line.get_ydata(), float)
            out.append(float((y[-1] - y[0]) / (x[-1] - x[0])))
    return out


def test_optimum_figure_survives_a_degenerate_interval(tmp_path):
    optima = optima_by_group(curve_records({32: -7.0, 64: -7.2}), "log2_lr", size_axes=["width"])
    o = optima[0]
    # the lower bound a rounding error above the value: a negative error-bar length before the fix
    optima[0] = dataclasses.replace(o, interval=(o.value + 1e-12, o.interval[1]))
    path = report.optimum_figure({"muP": optima}, tmp_path / "opt.png")
    assert path == tmp_path / "opt.png" and path.stat().st_size > 0


def test_drawn_slope_is_the_verdicts(tmp_path, drawn):
    optima = optima_by_group(curve_records({32: -7.0, 64: -7.3, 128: -7.5}), "log2_lr", size_axes=["width"])
    verdict = transfer_verdict(optima, "width")
    # without a verdict the figure fits the same least-squares slope the verdict reports
    free = report._drift_line("muP", optima, "width")
    assert free.slope == pytest.approx(verdict.drift_per_doubling, abs=1e-12)
    # with one it draws the verdict's own numbers, even ones it would not have computed itself
    forced = dataclasses.replace(verdict, drift_per_doubling=0.5, state="FAIL")
    line = report._drift_line("muP", optima, "width", forced)
    assert line.slope == 0.5 and "+0.50 octaves per doubling" in line.label and "FAIL" in line.label
    # and those are the lines on the figure, for each recipe, despite the horizontal offsets between recipes
    report.optimum_figure({"muP": optima, "SP": optima}, tmp_path / "opt.png", verdicts={"muP": forced})
    report.optimum_figure({"muP": optima}, tmp_path / "opt2.png")
    assert dashed_slopes(drawn[0]) == pytest.approx([0.5, verdict.drift_per_doubling])
    assert dashed_slopes(drawn[1]) == pytest.approx([verdict.drift_per_doubling])
    ax = drawn[0].axes[0]
    assert ax.get_ylabel() == "optimal log2 learning rate" and ax.get_xlabel() == "width"
    # the two recipes' identical points are drawn apart
    xs = [tuple(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(xs) == 2 and all(a != b for a, b in zip(*xs))


def test_lr_curves_y_range_fits_the_data(tmp_path, drawn):
    records = curve_records({32: -7.0, 64: -6.5}, diverge_at=-4.0)
    optima = optima_by_group(records, "log2_lr", size_axes=["width"])
    report.lr_curves_figure({"muP": optima}, tmp_path / "lr.png", loss_unit="nats/token")
    ax = drawn[0].axes[0]
    lo, hi = ax.get_ylim()
    shown = [v for o in optima for v in o.mean_losses if math.isfinite(v)] + [o.loss for o in optima]
    assert lo <= min(shown) and max(shown) <= hi
    assert hi - lo <= 1.2 * (max(shown) - min(shown))
    assert ax.get_ylabel() == "validation loss (nats/token)"
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_loss_figure_labels_and_range(tmp_path, drawn):
    class Law:
        def predict(self, n):
            return 1.0 + 50 * n ** -0.3

    points = {"muP": ([1e4, 2e4, 4e4], [Law().predict(n) + 0.01 for n in (1e4, 2e4, 4e4)])}
    report.loss_figure(points, tmp_path / "loss.png", {"recipe": "muP", "law": Law(), "target": 1e6,
                                                       "interval": (1.7, 1.9)})
    ax = drawn[0].axes[0]
    lo, hi = ax.get_ylim()
    shown = points["muP"][1] + [Law().predict(1e4), 1.7, 1.9]
    assert lo <= min(shown) and max(shown) <= hi and hi - lo <= 1.2 * (max(shown) - min(shown))
    assert ax.get_xlabel() == "parameters" and ax.get_ylabel() == "best validation loss (nats/byte)"


def test_optima_table_has_seeds():
    o = find_optimum([r for r in curve_records({32: -7.0}, seeds=3)], "log2_lr")
    table = report.optima_table({"muP": [o]})
    assert "| seeds |" in table.splitlines()[0] and "| 3 |" in table.splitlines()[2]


def test_sweep_report_names_budget_seeds_and_advice(tmp_path):
    from proxytune.sweep import Sweep

    sw = Sweep.from_dict({
        "name": "r", "model": "gpt", "data_options": {"max_bytes": 100_000}, "base": {"width": 16, "depth": 1},
        "axes": {"width": [16, 32], "log2_lr": [-9, -7, -5], "seed": [0, 1]},
        "train": {"depth": 1, "steps": 4, "batch_size": 2, "seq_len": 8, "eval_every": 4, "eval_batches": 1},
        "executor": {"workers": 1, "batch": 6}, "runs_dir": str(tmp_path / "runs")})
    sw.run()
    path = report.write_sweep_report(sw, tmp_path / "report")
    text = path.read_text()
    assert "4 steps x batch 2 x seq_len 8 = 64 tokens" in text and "Seeds per point: 2." in text
    assert "nats/byte" in text
    verdict = transfer_verdict(optima_by_group(sw.records(), "log2_lr"), "width")
    assert verdict.line in text
    for item in verdict.advice + verdict.warnings:
        assert f"- {item}" in text
    assert (tmp_path / "report" / "optimum_vs_size.png").stat().st_size > 0


def test_token_budget_reads_defaults_and_swept_fields():
    class Cfg:
        data = "stdlib"
        train: dict = {}

    assert report.token_budget(Cfg(), []) == "Budget per trial: 200 steps x batch 16 x seq_len 64 = 204,800 tokens."
    recs = [{"status": "complete", "steps": s} for s in (100, 400)]
    assert "102,400 .. 409,600 tokens (the sweep varies steps)" in report.token_budget(Cfg(), recs)
    assert report.data_loss_unit("data/x.bin") == "nats/token" and report.data_loss_unit("notes.txt") == "nats/byte"

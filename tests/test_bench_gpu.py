"""`bench/gpu.py` (issue 30, item 5), the one-command GPU run, cannot rot: its `--smoke` mode runs every part on
the CPU at tiny sizes (seconds) and must leave one JSON entry per part, with finite figures or an explicit reason;
a small `--budget-s` skips the parts that do not fit instead of crashing; its fp8 layer (real fp8 matmuls through
`torch._scaled_mm`, which this torch also runs on a CPU) computes a linear layer and its gradients."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["b3_eager", "fp8", "b4", "b3_compiled", "b1"]


@pytest.fixture(scope="module")
def gpu(bench_script):
    return bench_script("gpu")


def _run(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the script's smoke mode as a user would; its output and its JSON record."""
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--out", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.exists(), proc.stdout[-2000:]
    return proc, json.loads(out.read_text())


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_run_leaves_figures_or_a_reason_for_every_part(tmp_path):
    bench_md = (ROOT / "BENCHMARKS.md").read_text()
    proc, rec = _run(tmp_path / "gpu.json")
    assert (ROOT / "BENCHMARKS.md").read_text() == bench_md  # --smoke never writes it
    assert rec["status"] == "finished" and rec["preset"] == "smoke"
    assert list(rec["parts"]) == PARTS
    for name, part in rec["parts"].items():
        assert part["torch"] == torch.__version__ and part["date"] and "CPU" in part["machine"], name
        assert part["status"] == ("skipped" if name == "fp8" else "done"), (name, part)
        assert f"{name}: start" in proc.stdout, name  # progress is printed as it goes

    fp8 = rec["parts"]["fp8"]
    assert "CUDA" in fp8["reason"] and not fp8.get("figures")  # no faked numbers on a CPU

    for name in ("b3_eager", "b3_compiled"):
        f = rec["parts"][name]["figures"]
        assert set(f["ratio"]) == {"plain", "plain (A/A)", "folded", "explicit", "u-mup"}
        assert f["ratio"]["plain"] == 1.0
        assert all(_finite_positive(v) for v in f["ratio"].values()) and all(
            _finite_positive(v) for v in f["step_ms"].values())

    widths = rec["parts"]["b4"]["figures"]["widths"]
    assert set(widths) == {"16", "32"}
    for w in widths.values():
        one, two = w["1"], w["2"]
        assert _finite_positive(one["trials_per_hour"]) and _finite_positive(two["trials_per_hour"])
        assert two["speedup"] == pytest.approx(two["trials_per_hour"] / one["trials_per_hour"], rel=1e-6)
        assert two["max_loss_diff"] < 1e-3  # batching changes speed, not results
    assert rec["parts"]["b4"]["figures"]["goal"] is None  # judged on a GPU only
    assert "judged on a GPU only" in proc.stdout

    rows = rec["parts"]["b1"]["figures"]["rows"]
    assert set(rows) == {"sp", "mup", "tuned"}
    for row, by_width in rows.items():
        assert set(by_width) == {"16", "32"}, row
        for g in by_width.values():
            assert math.isfinite(g["best_loss"]) and 0 < g["best_loss"] < 10, (row, g)
            assert g["best_log2_lr"] in g["log2_lr"]
    assert "**Mini B1" in proc.stdout and "| plain (A/A) |" in proc.stdout  # the markdown section


def test_a_small_budget_skips_the_later_parts_with_a_reason(tmp_path, gpu):
    est = gpu.PRESETS["smoke"]["estimate_s"]
    budget = est["b3_eager"] + 0.5  # the first part fits; b4, b3_compiled and b1 each need more than the budget
    assert all(est[p] > budget for p in ("b4", "b3_compiled", "b1"))
    proc, rec = _run(tmp_path / "gpu.json", "--budget-s", str(budget))
    parts = rec["parts"]
    assert list(parts) == PARTS
    assert parts["b3_eager"]["status"] == "done"
    assert parts["fp8"]["status"] == "skipped" and parts["fp8"]["reason"]  # no CUDA, or no time left
    for name in ("b4", "b3_compiled", "b1"):
        assert parts[name]["status"] == "skipped", name
        assert "budget" in parts[name]["reason"] and "figures" not in parts[name], name
        assert f"{name}: skipped" in proc.stdout, name


def test_b4_goal_is_judged_only_on_a_gpu(gpu):
    widths = {"256": {"16": {"speedup": 6.0}}, "1024": {"16": {"speedup": 3.0}}}
    goal, line = gpu.b4_goal(widths, "cuda")
    assert goal["met"] == {"256": True, "1024": False}
    assert "width 256: 6.00x (met)" in line and "width 1024: 3.00x (not met)" in line
    assert gpu.b4_goal(widths, "cpu")[0] is None
    assert gpu.b4_goal({"256": {"16": {"skipped": "no time"}}}, "cuda")[0] is None


def _cpu_scaled_mm() -> bool:
    try:
        one = torch.ones(())
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.skipif(not _cpu_scaled_mm(), reason="this torch has no torch._scaled_mm on the CPU")
@pytest.mark.parametrize("unit", [False, True])
def test_fp8_linear_matches_a_linear_layer_up_to_fp8_rounding(gpu, unit):
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    w = (torch.randn(48, 32) / 32 ** 0.5).requires_grad_()  # a weight far from unit scale: scaled by its amax
    g = torch.randn(64, 48)
    y = gpu.FP8Linear.apply(x, w, unit, torch.float32)
    y.backward(g)
    x0, w0 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (x0 @ w0.t()).backward(g)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).detach().norm() / b.detach().norm())

    for got, exact in ((y, x0 @ w0.t()), (x.grad, x0.grad), (w.grad, w0.grad)):
        assert got.dtype == torch.float32 and got.shape == exact.shape
        assert 1e-3 < rel(got, exact) < 0.15  # rounded as fp8 rounds (not an exact fp32 matmul), yet close


@pytest.mark.skipif(not _cpu_scaled_mm(), reason="this torch has no torch._scaled_mm on the CPU")
def test_a_short_umup_run_trains_through_fp8_layers(gpu):
    """The GPU part's training run, on the CPU: every linear layer of a u-muP GPT runs through FP8Linear."""
    from proxytune.train import TrainConfig

    cfg = TrainConfig(model="gpt", recipe="u-mup", optimizer="adamw", width=32, depth=1, base_width=16, base_depth=1,
                      steps=4, batch_size=2, seq_len=16, lr=1.0, eval_every=4, eval_batches=1, precision="bf16",
                      threads=1)
    bf16, fp8 = gpu.short_run(cfg, None), gpu.short_run(cfg, "dynamic")
    assert bf16["fp8_layers"] == 0 and fp8["fp8_layers"] > 0
    assert math.isfinite(fp8["val_loss"]) and fp8["val_loss"] != bf16["val_loss"]
    assert abs(fp8["val_loss"] - bf16["val_loss"]) < 0.1 * bf16["val_loss"]

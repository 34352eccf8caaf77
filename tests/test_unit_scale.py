"""Unit-scaling building blocks (issue 13, first part): the op with separate forward and backward scales, and
the unit-scale check on any model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from proxytune.diagnose import unit_scale_check
from proxytune.nn.scaled import scale_fwd_bwd, scaled
from scale_helpers import rms


@pytest.mark.parametrize("alpha, beta", [(0.5, 3.0), (2.0, 0.25), (1.5, 1.5)])
def test_forward_is_alpha_f_and_gradient_is_beta_times_the_true_one(alpha, beta):
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(4, 5, requires_grad=True)
    f = lambda v: torch.tanh(lin(v)) ** 2  # noqa: E731
    g = torch.randn(4, 3)
    y = scaled(f, alpha, beta)(x)
    torch.testing.assert_close(y, alpha * f(x))
    (y * g).sum().backward()
    got = [x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone()]
    x.grad = None
    lin.zero_grad()
    (f(x) * g).sum().backward()  # the true gradient of f
    for a, b in zip(got, [x.grad, lin.weight.grad, lin.bias.grad]):
        torch.testing.assert_close(a, beta * b)


def test_scale_fwd_bwd_rejects_non_numbers():
    with pytest.raises(TypeError, match="alpha"):
        scale_fwd_bwd(torch.ones(2), torch.tensor(2.0), 1.0)


class _UnitLinear(nn.Module):
    """N(0, 1) weight, forward scale fan_in^-1/2: unit-RMS output for unit-RMS input."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return x @ self.weight.t() / math.sqrt(self.weight.shape[1])


class _Times(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        return x * self.k


def test_unit_scale_check_passes_a_unit_scaled_net_and_names_what_is_not():
    torch.manual_seed(0)
    x, y = torch.randn(256, 64), torch.randn(256, 64)
    net = nn.Sequential(_UnitLinear(64), _UnitLinear(64), _UnitLinear(64))
    res = unit_scale_check(net, (x, y), kinds=("weight", "activation"))
    assert res.passed, res.summary()
    assert {r["name"] for r in res.records if r["kind"] == "activation"} == {"0", "1", "2", "(output)"}
    # torch's default init shrinks the RMS by about sqrt(3) per layer: the deep end falls below 1/4
    sp = nn.Sequential(*[nn.Linear(64, 64, bias=False) for _ in range(4)])
    res = unit_scale_check(sp, (x, y), kinds=("weight", "activation"))
    bad = {(r["kind"], r["name"]) for r in res.outside}
    assert ("weight", "0.weight") in bad and ("activation", "3") in bad and ("activation", "0") not in bad
    assert "not unit-scaled" in res.summary() and "activation" in res.summary()
    loud = nn.Sequential(_UnitLinear(64), _Times(10.0))
    assert {r["name"] for r in unit_scale_check(loud, (x, y), kinds=("activation",)).outside} == {"1", "(output)"}


def test_unit_scale_check_gradients_and_steps():
    torch.manual_seed(0)
    net = nn.Sequential(_UnitLinear(8), nn.Linear(8, 8))
    nn.init.zeros_(net[1].bias)
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    w0 = net[0].weight.detach().clone()
    res = unit_scale_check(net, (x, y), optimizer=opt, steps=3)
    assert not torch.equal(w0, net[0].weight)  # trained in place
    assert {r["step"] for r in res.records} == {0, 3}
    # the recorded gradient is the RMS of the real gradient at that step
    net.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    want = rms(net[1].weight.grad)
    got = next(r["rms"] for r in res.records if r["step"] == 3 and r["kind"] == "gradient" and r["name"] == "1.weight")
    assert got == pytest.approx(want, rel=1e-6)
    # a zero bias at init is not a scale problem
    assert not any(r["name"] == "1.bias" and r["step"] == 0 and r["kind"] == "weight" for r in res.outside)
    with pytest.raises(ValueError, match="optimizer"):
        unit_scale_check(net, (x, y), steps=2)


def test_fp8_round_trip_rounds_saturates_flushes_and_passes_gradients_through():
    from proxytune.nn.lowp import fp8_round_trip

    x = torch.tensor([1.0, 0.3, 500.0, -1000.0, 1e-4], requires_grad=True)
    y = fp8_round_trip(x)
    assert y.tolist() == pytest.approx([1.0, 0.3125, 448.0, -448.0, 0.0])  # e4m3: 3 mantissa bits, max 448
    (y * torch.arange(5.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # straight through
    with pytest.raises(ValueError, match="not an fp8 format"):
        fp8_round_trip(x, torch.bfloat16)


def test_simulated_fp8_keeps_unit_scale_and_loses_small_scale():
    """Why u-muP wants unit scale: the same layer in simulated fp8 is accurate for unit-RMS inputs and loses
    the signal for inputs at 1e-4 scale (below e4m3's smallest subnormal, 2^-9), and removal restores it."""
    from proxytune.nn.lowp import simulate_fp8

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64, bias=False))
    nn.init.normal_(net[0].weight)
    x = torch.randn(32, 64)
    exact = net(x)
    with simulate_fp8(net):
        unit = net(x)
        small = net(x * 1e-4)
        unit.sum().backward()
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(unit, exact) < 0.1
    assert rel(small, exact * 1e-4) > 0.5
    torch.testing.assert_close(net(x), exact)  # removed on leaving the block


def test_unit_check_command_reports_what_is_not_unit_scaled(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from proxytune.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["unit-check", "--width", "32", "--steps", "1", "--batch-size", "4",
                                   "--seq-len", "16"])
    assert res.exit_code == 1, res.output  # muP's GPT keeps weights at 1/sqrt(fan_in) and tiny gradients
    assert "not unit-scaled" in res.output and "gradient" in res.output
    res = CliRunner().invoke(app, ["unit-check", "--width", "32", "--steps", "0", "--json", "--low", "1e-9",
                                   "--high", "1e9"])
    import json

    out = json.loads(res.output)
    assert res.exit_code == 0 and out["passed"] and {r["kind"] for r in out["records"]} == {
        "weight", "activation", "gradient"}
    res = CliRunner().invoke(app, ["unit-check", "--recipe", "mupp"])
    assert res.exit_code == 2 and "mup" in res.output

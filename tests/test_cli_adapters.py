"""The explain command and the attention adapters."""

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import proxytune as pt
from proxytune.cli import app
from proxytune.models import gpt

runner = CliRunner()


def test_cli_explain_table_and_json(tmp_path):
    args = ["explain", "--model", "proxytune.models.gpt:build", "--width", "256", "--depth", "8",
            "--base-width", "64", "--base-depth", "2", "--recipe", "completep", "--optimizer", "adamw"]
    res = runner.invoke(app, args + ["--lr", "0.003"])
    assert res.exit_code == 0, res.output
    assert "blocks.7.mlp.proj.weight" in res.output and "hidden*" in res.output
    assert "0.00075" in res.output  # hidden LR at m_in = 4 under muP + CompleteP
    res = runner.invoke(app, args + ["--json", "--save", str(tmp_path / "p.json")])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["recipe"] == "completep"
    assert pt.Plan.load(tmp_path / "p.json").to_dict() == data


def test_cli_errors_are_messages():
    res = runner.invoke(app, ["explain", "--model", "nope.module:fn", "--width", "8", "--depth", "1",
                              "--base-width", "4", "--base-depth", "1"])
    assert res.exit_code == 2 and "cannot import module 'nope.module'" in res.output
    res = runner.invoke(app, ["explain", "--width", "64", "--depth", "2", "--base-width", "32",
                              "--base-depth", "2", "--optimizer", "lion"])
    assert res.exit_code == 2 and "unknown optimizer 'lion'" in res.output


def test_scale_attribute_adapter_sets_mup_logit_scale():
    target = gpt.build(width=128, depth=1, n_heads=2, head_dim=None)
    base = gpt.build(width=32, depth=1, n_heads=2, head_dim=None, device="meta")
    pt.parameterize(target, base, recipe="mup")
    # base used 1/sqrt(16); muP at head dim 64: sqrt(16) / 64
    assert target.blocks[0].attn.attn_scale == pytest.approx(math.sqrt(16) / 64)
    t2 = gpt.build(width=128, depth=1, n_heads=2, head_dim=None)
    pt.parameterize(t2, base, recipe="sp")
    assert t2.blocks[0].attn.attn_scale == pytest.approx(1 / math.sqrt(64))


def test_multihead_attention_adapter_scales_query_rows():
    class Net(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.emb = nn.Embedding(8, d)
            self.attn = nn.MultiheadAttention(d, num_heads=2, batch_first=True)
            self.out = nn.Linear(d, 8)

    torch.manual_seed(0)
    target = Net(64)
    raw = target.attn.in_proj_weight.detach().clone()
    plan = pt.parameterize(target, Net(16), recipe="mup", optimizer="adamw")
    factor = (32 / 8) ** -0.5
    assert plan.attention[0]["adapter"] == "torch-mha" and plan.attention[0]["factor"] == pytest.approx(factor)
    w = target.attn.in_proj_weight  # parametrized: query rows scaled
    stored = target.attn.parametrizations.in_proj_weight.original
    assert torch.allclose(w[:64], stored[:64] * factor) and torch.equal(w[64:], stored[64:])
    assert stored.shape == raw.shape
    x = torch.randint(0, 8, (2, 5))
    target.attn(target.emb(x), target.emb(x), target.emb(x))  # still runs
    plan.optimizer(lr=1e-3)  # names resolve through the parametrization

"""The optimizer registry: one entry per optimizer, and every layer (plan, trainer, batched trainer) uses it.

A toy sign-SGD (``p <- p (1 - lr wd) - lr sign(g)``) is registered with ONE spec below; the plan, the
optimizer factory, the trainer and the batched trainer then all know it, and forget it on unregister.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import proxytune as pt
from proxytune.analysis.snippet import bytes_per_param, training_snippet
from proxytune.models import mlp
from proxytune.optim import build_optimizer
from proxytune.optim.batched import BATCHED_OPTIMIZERS, StackedParam
from proxytune.optim.registry import REGISTRY, OptimizerSpec, get_spec, has_eps, register, unregister
from proxytune.rules import recipes as rules
from proxytune.train import TrainConfig, train, train_batched

README = Path(__file__).resolve().parents[1] / "README.md"


# ------------------------------------------------------------------------------ the toy optimizer
class SignSGD(torch.optim.Optimizer):
    """``p <- p (1 - lr wd) - lr sign(g)``."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.sub_(p.grad.sign() * group["lr"])


def signsgd_step(sp: StackedParam, grad: torch.Tensor, lr: torch.Tensor, t: int, hyper) -> None:
    """The same update on K stacked members (per-member lr and weight decay)."""
    p = sp.param
    per_member = (-1,) + (1,) * (p.ndim - 1)
    if bool((sp.weight_decay != 0).any()):
        p.mul_(1.0 - (lr * sp.weight_decay).view(per_member))
    p.sub_(grad.sign() * lr.view(per_member))


# The one entry: it scales like Adam-atan2 (a sign-like update without eps), keeps no state.
SIGNSGD = OptimizerSpec("signsgd", SignSGD, rules="adam-atan2", batched_step=signsgd_step,
                        state_slots=lambda settings: 0)


@pytest.fixture
def signsgd():
    register(SIGNSGD)
    try:
        yield SIGNSGD
    finally:
        unregister("signsgd")


TINY = dict(model="gpt", width=32, depth=1, base_width=16, batch_size=4, seq_len=16, steps=12, eval_every=6,
            eval_batches=1, data_options={"max_bytes": 200_000}, precision="fp64", grad_clip=None)


# ------------------------------------------------------------------------------------ the built-ins
def test_registry_names_are_the_documented_optimizers():
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `optimizer` |"))
    documented = re.findall(r"`([^`]+)`", row.split("|")[2])
    assert list(REGISTRY) == ["sgd", "adam", "adamw", "adam-atan2", "adafactor", "muon", "soap", "shampoo", "dion"]
    assert documented[:len(REGISTRY)] == list(REGISTRY)
    assert list(REGISTRY) == list(rules.OPTIMIZERS)  # every optimizer has its rules entry, and only those
    assert BATCHED_OPTIMIZERS == ("sgd", "adam", "adamw", "adam-atan2", "muon")
    assert "adafactor" not in BATCHED_OPTIMIZERS and "muon" in BATCHED_OPTIMIZERS
    assert {n for n in REGISTRY if has_eps(n)} == {"adam", "adamw", "adafactor", "muon", "soap", "shampoo", "dion"}
    for name, spec in REGISTRY.items():
        assert spec.name == name and spec.has_eps == rules.OPTIMIZERS[name].has_eps


def test_unknown_optimizer_errors_unchanged():
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lion'; valid: sgd, adam, adamw, adam-atan2, "
                                         r"adafactor, muon, soap, shampoo, dion$"):
        build_optimizer("lion", [], lr=1e-3)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'.*did you mean 'adam'"):
        TrainConfig(optimizer="adamx")


def test_register_checks_the_rules_entry():
    with pytest.raises(ValueError, match="already registered"):
        register(REGISTRY["adamw"])
    with pytest.raises(ValueError, match="no entry in the rules table"):
        register(OptimizerSpec("nameless", SignSGD))
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        register(OptimizerSpec("nameless", SignSGD, rules="adamx"))
    assert "nameless" not in REGISTRY and "nameless" not in rules.OPTIMIZERS
    # a spec may bring a new rules entry instead of naming one
    entry = rules.OptimizerSpec("sgd-plain", "sgd", 2, False, "torch.optim.SGD without momentum")
    register(OptimizerSpec("sgd-plain", torch.optim.SGD, rules=entry))
    try:
        assert rules.get_optimizer("sgd-plain") == entry and not has_eps("sgd-plain")
        assert "sgd-plain" not in BATCHED_OPTIMIZERS
    finally:
        unregister("sgd-plain")
    assert "sgd-plain" not in REGISTRY and "sgd-plain" not in rules.OPTIMIZERS


# ---------------------------------------------------------------------------------------- the toy
def test_toy_is_known_everywhere_while_registered(signsgd):
    assert get_spec("signsgd") is signsgd and "signsgd" in BATCHED_OPTIMIZERS
    assert not signsgd.has_eps and rules.get_optimizer("signsgd").lr_power == 1
    cfg = TrainConfig(**TINY, optimizer="signsgd")
    assert bytes_per_param(cfg) == 16  # fp64 weights and grads, no state
    src = training_snippet(cfg, width=64, depth=1, lr=1e-3)
    assert "optimizer='signsgd'" in src and "eps=None: " not in src


def test_toy_forgotten_after_unregister():
    register(SIGNSGD)
    unregister("signsgd")
    assert "signsgd" not in REGISTRY and "signsgd" not in rules.OPTIMIZERS
    assert "signsgd" not in BATCHED_OPTIMIZERS
    with pytest.raises(ValueError, match="unknown optimizer 'signsgd'"):
        TrainConfig(optimizer="signsgd")
    with pytest.raises(ValueError, match="unknown optimizer 'signsgd'"):
        pt.parameterize(mlp.build(width=16), mlp.build(width=8, device="meta"), optimizer="signsgd")


def test_toy_plan_and_update_rule(signsgd):
    torch.manual_seed(0)
    target, base = mlp.build(width=32, depth=2), mlp.build(width=16, depth=2, device="meta")
    plan = pt.parameterize(target, base, recipe="mup", optimizer="signsgd")
    like = pt.parameterize(mlp.build(width=32, depth=2), base, recipe="mup", optimizer="adam-atan2")
    groups = plan.param_groups(1e-2, 0.1, model=target)
    assert [{k: v for k, v in g.items() if k != "params"} for g in groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in like.param_groups(1e-2, 0.1)]
    assert all("eps" not in g for g in groups)  # the rules say: no eps

    opt = plan.optimizer(1e-2, 0.1, model=target)
    assert isinstance(opt, SignSGD)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    target(torch.randn(8, 16)).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in target.named_parameters()}
    opt.step()
    for g in groups:
        name = g["name"]
        expected = before[name] * (1.0 - g["lr"] * g["weight_decay"]) - grads[name].sign() * g["lr"]
        assert torch.equal(dict(target.named_parameters())[name].detach(), expected), name


def test_toy_trains_alone_and_batched(signsgd):
    members = [TrainConfig(**TINY, optimizer="signsgd", lr=lr, weight_decay=wd, seed=seed)
               for lr, wd, seed in ((3e-3, 0.0, 0), (1e-3, 0.1, 1))]
    seq = [train(c) for c in members]
    for r in seq:
        assert r.status == "complete" and r.train_losses[-1] < r.train_losses[0]
    bat = train_batched(members)
    for s, b in zip(seq, bat):
        assert b.status == "complete" and len(b.train_losses) == len(s.train_losses)
        for x, y in zip(s.train_losses, b.train_losses):
            assert math.isclose(x, y, rel_tol=1e-9)
        assert math.isclose(s.final_val_loss, b.final_val_loss, rel_tol=1e-9)

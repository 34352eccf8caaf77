"""Fold equivalence: ``folded`` (multipliers absorbed into init/lr/eps/wd by the
abc symmetry) and ``explicit`` (multipliers in the forward pass) train the same
model identically, for every optimizer, including depth and attention factors."""

import pytest
import torch
import torch.nn.functional as F

import proxytune as pt
from proxytune.models import gpt, mlp

OPTIONS = {
    "sgd": dict(lr=0.05, momentum=0.9),
    "adam": dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-4),
    "adamw": dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-4),
    "adam-atan2": dict(lr=3e-3, betas=(0.9, 0.95)),
    "adafactor": dict(lr=1e-2),
    "muon": dict(lr=3e-3, muon_lr=2e-2, eps=1e-4),
}

CASES = {
    # plain MLP, width x4, depth 3 vs 1 (no residual branches: muP)
    "mlp-mup": (lambda: mlp.build(width=64, depth=3), lambda: mlp.build(width=16, depth=1, device="meta"), "mup"),
    # transformer, width x2 with the head dim growing (attn_scale attribute), depth x2, CompleteP
    "gpt-completep": (lambda: gpt.build(width=64, depth=4, n_heads=2, head_dim=None, seq_len=16),
                      lambda: gpt.build(width=32, depth=2, n_heads=2, head_dim=None, seq_len=16, device="meta"),
                      "completep"),
    # the logit factor folded into a separate query projection; tied embedding/readout; depth-muP
    "gpt-qproj-tied-depthmup": (
        lambda: gpt.build(width=64, depth=4, n_heads=2, head_dim=None, seq_len=16, scale_attr=False,
                          tied=True, bias=True),
        lambda: gpt.build(width=32, depth=2, n_heads=2, head_dim=None, seq_len=16, scale_attr=False,
                          tied=True, bias=True, device="meta"),
        "depth-mup"),
}


def _batches(case: str, n: int = 20):
    """Two fixed batches, alternated: the model can fit them, so the loss must fall."""
    g = torch.Generator().manual_seed(123)
    if case.startswith("mlp"):
        data = [(torch.randn(8, 16, generator=g, dtype=torch.float64),
                 torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]
    else:
        data = [(torch.randint(0, 256, (4, 16), generator=g),) for _ in range(2)]
    return [data[i % 2] for i in range(n)]


def _train(case: str, optimizer: str, mode: str) -> list[float]:
    build, build_base, recipe = CASES[case]
    torch.manual_seed(0)
    model = build().double()
    plan = pt.parameterize(model, build_base(), recipe=recipe, optimizer=optimizer, mode=mode)
    kw = dict(OPTIONS[optimizer])
    opt = plan.optimizer(weight_decay=0.05, **kw)
    losses = []
    for batch in _batches(case):
        if case.startswith("mlp"):
            x, y = batch
            loss = F.cross_entropy(model(x), y)
        else:
            (idx,) = batch
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("optimizer", sorted(OPTIONS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_equals_explicit(case, optimizer):
    folded = _train(case, optimizer, "folded")
    explicit = _train(case, optimizer, "explicit")
    assert folded == pytest.approx(explicit, rel=1e-6, abs=0)
    assert folded[-2] < folded[0]  # same batch: it trains, the comparison is not between frozen models


def test_explicit_mode_really_has_forward_multipliers():
    build, build_base, recipe = CASES["gpt-completep"]
    model = build()
    plan = pt.parameterize(model, build_base(), recipe=recipe, mode="explicit")
    assert any(tp.explicit.multiplier != 1.0 for tp in plan.tensors.values())
    assert hasattr(model.blocks[0].attn.proj, "parametrizations")
    folded_model = build()
    pt.parameterize(folded_model, build_base(), recipe=recipe)
    assert not any("parametrizations" in n for n, _ in folded_model.named_parameters())

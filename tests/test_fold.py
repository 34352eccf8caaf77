"""Fold equivalence: ``folded`` (multipliers absorbed into init/lr/eps/wd by the
abc symmetry) and ``explicit`` (multipliers in the forward pass) train the same
model identically, for every optimizer, including depth and attention factors,
and with gradient clipping when it is done by ``plan.clip_grad_norm_`` (torch's
own clipping of a folded model measures another norm: the tests show it
differs)."""

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
    # far from the base: width x4 (32 -> 128), depth x8 (2 -> 16), CompleteP: branch gradients 8x in folded form
    "gpt-completep-far": (lambda: gpt.build(width=128, depth=16, seq_len=16),
                          lambda: gpt.build(width=32, depth=2, seq_len=16, device="meta"), "completep"),
}
FAST_CASES = sorted(set(CASES) - {"gpt-completep-far"})


def _batches(case: str, n: int = 20):
    """Two fixed batches, alternated: the model can fit them, so the loss must fall."""
    g = torch.Generator().manual_seed(123)
    if case.startswith("mlp"):
        data = [(torch.randn(8, 16, generator=g, dtype=torch.float64),
                 torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]
    else:
        data = [(torch.randint(0, 256, (4, 16), generator=g),) for _ in range(2)]
    return [data[i % 2] for i in range(n)]


def _train(case: str, optimizer: str, mode: str, clip: float | None = None, torch_clip: bool = False,
           steps: int = 20) -> tuple[list[float], list[float]]:
    """Losses and, with ``clip``, the pre-clip gradient norm of every step (explicit units, or torch's norm of
    the model's own gradients with ``torch_clip``)."""
    build, build_base, recipe = CASES[case]
    torch.manual_seed(0)
    model = build().double()
    plan = pt.parameterize(model, build_base(), recipe=recipe, optimizer=optimizer, mode=mode)
    kw = dict(OPTIONS[optimizer])
    opt = plan.optimizer(weight_decay=0.05, **kw)
    losses, norms = [], []
    for batch in _batches(case, steps):
        if case.startswith("mlp"):
            x, y = batch
            loss = F.cross_entropy(model(x), y)
        else:
            (idx,) = batch
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), clip) if torch_clip
                    else plan.clip_grad_norm_(model, clip))
            norms.append(float(norm))
        opt.step()
        losses.append(loss.item())
    return losses, norms


@pytest.mark.parametrize("optimizer", sorted(OPTIONS))
@pytest.mark.parametrize("case", FAST_CASES)
def test_folded_equals_explicit(case, optimizer):
    folded, _ = _train(case, optimizer, "folded")
    explicit, _ = _train(case, optimizer, "explicit")
    assert folded == pytest.approx(explicit, rel=1e-6, abs=0)
    assert folded[-2] < folded[0]  # same batch: it trains, the comparison is not between frozen models


def _clip_between(norms: list[float]) -> float:
    """A max norm that clips about half of the steps (so the test cannot pass with clipping idle)."""
    return sorted(norms)[len(norms) // 2]


@pytest.mark.parametrize("optimizer", sorted(OPTIONS))
@pytest.mark.parametrize("case", FAST_CASES)
def test_folded_equals_explicit_with_clipping(case, optimizer):
    _, norms = _train(case, optimizer, "explicit", clip=1e9)
    clip = _clip_between(norms)
    explicit, e_norms = _train(case, optimizer, "explicit", clip=clip)
    folded, f_norms = _train(case, optimizer, "folded", clip=clip)
    assert sum(n > clip for n in e_norms) >= 3  # clipping really acts
    assert f_norms == pytest.approx(e_norms, rel=1e-6)  # the norm folded clipping sees is the explicit one
    assert folded == pytest.approx(explicit, rel=1e-6, abs=0)
    assert folded[-2] < folded[0]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_clipping_far_from_the_base(optimizer):
    """Width 4x and depth 8x the base under CompleteP (branch multiplier 1/8 folded into the weights): with
    ``plan.clip_grad_norm_`` folded training matches explicit training; torch's clipping of the folded model
    sees a norm several times larger and trains differently, by far more than the tolerance."""
    clip = 0.5
    explicit, e_norms = _train("gpt-completep-far", optimizer, "explicit", clip=clip, steps=12)
    folded, f_norms = _train("gpt-completep-far", optimizer, "folded", clip=clip, steps=12)
    naive, n_norms = _train("gpt-completep-far", optimizer, "folded", clip=clip, torch_clip=True, steps=12)
    assert sum(n > clip for n in e_norms) >= 3
    assert folded == pytest.approx(explicit, rel=1e-7, abs=0)
    assert n_norms[0] > 1.5 * e_norms[0]  # the folded gradients' own norm is larger: torch clips harder
    gap = max(abs(a - b) / b for a, b in zip(naive, explicit))
    assert gap > 1e-4, gap  # 1000x the tolerance above: the test would catch torch's clipping


def test_clip_weights_turn_folded_gradients_into_explicit_ones():
    """Each folded tensor's gradient times its clip weight is the explicit form's gradient (same init, same
    batch), for every tensor: the weights are the fold factors, not an approximation of them."""
    grads, weights = {}, {}
    for mode in ("folded", "explicit"):
        build, build_base, recipe = CASES["gpt-qproj-tied-depthmup"]
        torch.manual_seed(0)
        model = build().double()
        plan = pt.parameterize(model, build_base(), recipe=recipe, mode=mode)
        (idx,) = _batches("gpt", 1)[0]
        logits = model(idx[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1)).backward()
        weights[mode] = plan.clip_weights()
        params = plan.parameters(model)
        grads[mode] = {n: params[n].grad * weights[mode][n] for n in plan.tensors}
    assert set(weights["explicit"].values()) == {1.0}
    assert sum(w != 1.0 for w in weights["folded"].values()) >= 4  # depth, width and attention factors
    for n, g in grads["folded"].items():
        torch.testing.assert_close(g, grads["explicit"][n], rtol=1e-9, atol=1e-14, msg=n)


def test_explicit_mode_really_has_forward_multipliers():
    build, build_base, recipe = CASES["gpt-completep"]
    model = build()
    plan = pt.parameterize(model, build_base(), recipe=recipe, mode="explicit")
    assert any(tp.explicit.multiplier != 1.0 for tp in plan.tensors.values())
    assert hasattr(model.blocks[0].attn.proj, "parametrizations")
    folded_model = build()
    pt.parameterize(folded_model, build_base(), recipe=recipe)
    assert not any("parametrizations" in n for n, _ in folded_model.named_parameters())

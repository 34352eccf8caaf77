"""Muon's width rule, measured: the effect of a hidden matrix's own update on its output.

Muon orthogonalizes the momentum, so its step has a spectral norm set by its scale, not by the width. Under muP
the hidden matrices' LR then stays constant with the ``spectral`` scale (``sqrt(max(1, fan_out/fan_in))``) and
falls as ``fan_in^-1/2`` with the ``rms`` scale (``0.2 sqrt(max(fan_in, fan_out))``, AdamW's RMS), so that
``dW @ h`` (``h`` the layer's input before the steps) keeps its size at every width. A wrong exponent moves the
slope by 1/2 (the spectral scale with the rms exponent measured -0.48 and -0.45 on the two hidden layers).
"""

import pytest
import torch
import torch.nn.functional as F

import proxytune as pt
from proxytune.models import mlp
from scale_helpers import assert_slope, rms

WIDTHS = (64, 128, 256, 512)
HIDDEN = ("layers.0", "layers.1")


def _own_update(recipe: str, width: int, scale: str, lr: float = 2e-2, steps: int = 3) -> dict[str, float]:
    """RMS of ``dW @ h`` per hidden matrix after ``steps`` Muon steps on a fixed batch (``h``: its input
    before them): the change of its output that its own update makes, apart from the layers below it."""
    torch.manual_seed(0)
    model = mlp.build(width=width, depth=2, d_in=16, d_out=4)
    base = mlp.build(width=64, depth=2, d_in=16, d_out=4, device="meta")
    plan = pt.parameterize(model, base, recipe=recipe, optimizer="muon", muon_scale=scale)
    assert all(plan.tensors[f"{n}.weight"].muon for n in HIDDEN)
    opt = plan.optimizer(lr=lr)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, i, n=n: inputs.__setitem__(n, i[0].detach().clone())) for n in HIDDEN]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    before = {n: model.get_submodule(n).weight.detach().clone() for n in HIDDEN}
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: rms(inputs[n] @ (model.get_submodule(n).weight.detach() - before[n]).T) for n in HIDDEN}


@pytest.mark.parametrize("recipe, scale, expected", [
    ("mup", "spectral", 0.0),
    ("mup", "rms", 0.0),
    # one global LR with the AdamW-matched scale: the update grows as sqrt(width) (the check can fail)
    ("sp", "rms", 0.5),
])
def test_muon_hidden_update_scales_with_width_as_the_rule_says(recipe, scale, expected):
    rows = [_own_update(recipe, w, scale) for w in WIDTHS]
    for name in HIDDEN:
        # measured within 0.06 of the exponent on this model; a wrong exponent is 0.5 away
        assert_slope(WIDTHS, [r[name] for r in rows], expected, 0.15, what=f"{recipe}/{scale} {name}")


def test_muon_hidden_lr_exponent_per_scale():
    """The plan's per-tensor LR of a hidden matrix across widths: constant with the spectral scale, fan_in^-1/2
    with the rms scale, whose update scale grows as sqrt(fan) instead."""
    base = mlp.build(width=64, depth=2, d_in=16, d_out=4)
    lr = {}
    for scale in ("spectral", "rms"):
        for w in (64, 256):
            plan = pt.parameterize(mlp.build(width=w, depth=2, d_in=16, d_out=4, device="meta"), base,
                                   recipe="mup", optimizer="muon", muon_scale=scale)
            tp = plan.tensors["layers.1.weight"]
            lr[scale, w] = (tp.folded.lr, tp.muon_scale)
    assert lr["spectral", 256][0] / lr["spectral", 64][0] == pytest.approx(1.0)
    assert lr["rms", 256][0] / lr["rms", 64][0] == pytest.approx(0.5)
    assert lr["spectral", 256][1] == lr["spectral", 64][1] == pytest.approx(1.0)
    assert lr["rms", 256][1] / lr["rms", 64][1] == pytest.approx(2.0)

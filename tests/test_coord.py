"""Coordinate check and gradient scales: the exponents, measured."""

import pytest
import torch
import torch.nn.functional as F

import proxytune as pt
from proxytune.models import mlp
from scale_helpers import assert_slope, exponent_at, rms, slopes_by_key

WIDTHS = (64, 128, 256, 512)


def _delta_rms(recipe: str, width: int, lr: float = 1e-2, seed: int = 0) -> dict[str, float]:
    """RMS change of each layer's output after 3 Adam steps, on a fixed batch."""
    torch.manual_seed(seed)
    model = mlp.build(width=width, depth=2, d_in=16, d_out=4)
    plan = pt.parameterize(model, mlp.build(width=64, depth=2, device="meta"), recipe=recipe, optimizer="adam")
    opt = plan.optimizer(lr=lr)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    names = ["inp", "layers.0", "layers.1", "out"]
    outs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: outs.__setitem__(n, o.detach().clone())) for n in names]
    with torch.no_grad():
        model(x)
    before = dict(outs)
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {n: rms(outs[n] - before[n]) for n in names}


def _slopes(recipe: str) -> dict[str, float]:
    return slopes_by_key(WIDTHS, [_delta_rms(recipe, w) for w in WIDTHS])


def test_coordinate_check_mup_flat_sp_grows():
    mup = _slopes("mup")
    sp = _slopes("sp")
    for name in ("layers.0", "layers.1", "out"):
        assert abs(mup[name]) < 0.15, (name, mup)
        assert sp[name] > 0.3, (name, sp)


def _grad_rms(recipe: str, width: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = mlp.build(width=width, depth=2)
    pt.parameterize(model, mlp.build(width=64, depth=2, device="meta"), recipe=recipe, optimizer="adam")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 16, generator=g), torch.randint(0, 4, (256,), generator=g)
    F.cross_entropy(model(x), y).backward()
    return {n: rms(p.grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("recipe", ["mup", "sp-perlayer"])
def test_adam_eps_tracks_measured_gradient_scale(recipe):
    """eps exponent in the plan = log-log slope of the tensor's gradient RMS across width."""
    grads = [_grad_rms(recipe, w) for w in WIDTHS]
    plan = pt.parameterize(mlp.build(width=512, depth=2, device="meta"), mlp.build(width=64, depth=2),
                           recipe=recipe, optimizer="adam")
    for name, tp in plan.tensors.items():
        planned = exponent_at(tp.folded.eps, 512 / 64)
        assert_slope(WIDTHS, [g[name] for g in grads], planned, 0.2,
                     what=f"{name} ({tp.role}) gradient RMS vs width, against the planned eps exponent")

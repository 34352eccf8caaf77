"""SOAP and Shampoo (pytorch-optimizer, the ``matrix`` extra): their width rules, measured.

As in tests/test_muon_width.py, the quantity is the change a matrix's own update makes to its output, ``dW @ h``
after a few steps on a fixed batch (``h`` its input before them; for an embedding table, the change of the rows
the batch looks up). Under muP it must keep its size at every width: log-log slope over widths 64..512 within
0.15 of 0. A wrong exponent moves a slope by about 1/2; the measured slopes and those of the mutated rules are
in docs/parameterizations.md section 17.

- SOAP, on the reference GPT (width by heads, 1 block): Adam's no-alignment rows (hidden LR ``m^-1/2``, readout
  ``m^-1/2``, embedding 1 in folded muP); under SP (one LR) the hidden matrices and the readout grow as
  ``m^1/2``.
- Shampoo, on the reference MLP: the spectral rows (embedding and vectors ``m^1/2``, hidden 1, readout
  ``m^-1/2``), with the library's damping and with a damping large enough to matter (there the damping rule,
  ``gradient^2 x size``, is what keeps the slopes flat); under SP the input and output layers move by
  ``m^-1/2`` and ``m^+1/2``.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import proxytune as pt
from proxytune.models import gpt, mlp
from proxytune.rules.recipes import OPTIMIZERS, RECIPES, Scale, TensorContext, tensor_scales
from proxytune.train import BatchError, TrainConfig, check_batchable
from scale_helpers import assert_power, assert_slope, loglog_slope, rms

needs_library = pytest.mark.skipif(importlib.util.find_spec("pytorch_optimizer") is None,
                                   reason="pytorch-optimizer (the matrix extra) is not installed")
WIDTHS = (64, 128, 256, 512)
TOL = 0.15


def _effects(model: torch.nn.Module, plan: pt.Plan, batch: tuple[torch.Tensor, torch.Tensor],
             loss_fn, *, lr: float, steps: int, eps: float | None = None) -> dict[str, float]:
    """RMS of each planned matrix's own output change after ``steps`` steps on ``batch``: ``h @ dW^T`` for a
    linear layer (``h`` its input before the steps), the change of the looked-up rows for an embedding table."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # light on CPU; restored below
    try:
        return _measure(model, plan, batch, loss_fn, lr=lr, steps=steps, eps=eps)
    finally:
        torch.set_num_threads(threads)


def _measure(model: torch.nn.Module, plan: pt.Plan, batch: tuple[torch.Tensor, torch.Tensor],
             loss_fn, *, lr: float, steps: int, eps: float | None) -> dict[str, float]:
    x, y = batch
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    tables = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding) and n == "wte"}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, i, n=n: inputs.__setitem__(n, i[0].detach().clone()))
             for n, m in {**linears, **tables}.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    before = {n: m.weight.detach().clone() for n, m in {**linears, **tables}.items()}
    opt = plan.optimizer(lr=lr, eps=eps)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {n: rms(inputs[n] @ (m.weight.detach() - before[n]).T) for n, m in linears.items()}
    out.update({n: rms((m.weight.detach() - before[n])[inputs[n]]) for n, m in tables.items()})
    return out


def _gpt_soap(recipe: str, width: int) -> tuple[dict[str, float], dict[str, str]]:
    torch.manual_seed(0)
    model = gpt.build(width=width, depth=1, seq_len=32)
    plan = pt.parameterize(model, gpt.build(width=64, depth=1, seq_len=32, device="meta"), recipe=recipe,
                           optimizer="soap")
    tok = torch.randint(0, 256, (8, 33), generator=torch.Generator().manual_seed(1))

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    eff = _effects(model, plan, (tok[:, :-1], tok[:, 1:]), loss_fn, lr=1e-3, steps=4)
    return eff, {n: plan.tensors[f"{n}.weight"].role for n in eff}


def _mlp_shampoo(recipe: str, width: int, seed: int, eps: float | None = None) -> dict[str, float]:
    """In float64 (after the plan's init): the library's SVD of a large damping plus G G^T, many equal
    eigenvalues, can fail to converge in float32."""
    torch.manual_seed(seed)
    model = mlp.build(width=width, depth=2, d_in=16, d_out=4)
    plan = pt.parameterize(model, mlp.build(width=64, depth=2, d_in=16, d_out=4, device="meta"), recipe=recipe,
                           optimizer="shampoo")
    model.double()
    g = torch.Generator().manual_seed(100 + seed)
    batch = torch.randn(64, 16, generator=g).double(), torch.randint(0, 4, (64,), generator=g)
    return _effects(model, plan, batch, F.cross_entropy, lr=1e-2, steps=3, eps=eps)


def _mlp_shampoo_rows(recipe: str, eps: float | None = None) -> list[dict[str, float]]:
    """Per width, the geometric mean over 4 seeds (model and batch): the 4-class readout of one seed moves by up to
    0.3 from seed to seed, the mean by less than 0.07."""
    per_seed = [[_mlp_shampoo(recipe, w, seed, eps) for w in WIDTHS] for seed in range(4)]
    return [{n: math.exp(sum(math.log(rows[i][n]) for rows in per_seed) / len(per_seed)) for n in per_seed[0][i]}
            for i in range(len(WIDTHS))]


def _slopes(rows: list[dict[str, float]]) -> dict[str, float]:
    return {n: loglog_slope(WIDTHS, [r[n] for r in rows]) for n in rows[0]}


# ------------------------------------------------------------------------------------------ the rows
def test_rows_at_width_4():
    """The folded muP multipliers at width x4 (hidden fans both x4): SOAP takes Adam's no-alignment rows and
    Adam's eps; Shampoo the spectral rows, and a damping ~ gradient^2 x size."""
    mup = RECIPES["mup"]

    def scales(opt: str, role: str, size: float) -> Scale:
        return tensor_scales(mup, OPTIMIZERS[opt], TensorContext(role=role, width=4.0, size=size))[1]

    sizes = {"embedding": 4.0, "vector": 4.0, "hidden": 16.0, "readout": 4.0}
    soap = {r: scales("soap", r, s) for r, s in sizes.items()}
    assert [soap[r].lr for r in sizes] == pytest.approx([1, 1, 0.5, 0.5])
    assert [soap[r].eps for r in sizes] == pytest.approx([0.25, 0.25, 0.25, 1])  # Adam's: the gradient RMS
    shampoo = {r: scales("shampoo", r, s) for r, s in sizes.items()}
    assert [shampoo[r].lr for r in sizes] == pytest.approx([2, 2, 1, 0.5])
    assert [shampoo[r].eps for r in sizes] == pytest.approx([0.25, 0.25, 1, 4])  # (gradient RMS)^2 x size
    # the damping folds as the square of the multiplier: the explicit form keeps s^2 of it
    for role in sizes:
        e, f = tensor_scales(mup, OPTIMIZERS["shampoo"], TensorContext(role=role, width=4.0, size=sizes[role]))
        assert f.eps == pytest.approx(e.eps / e.multiplier**2)
        assert_power(f.lr / e.lr, e.multiplier, 1, what=f"shampoo {role}: lr folds as s^1")
    # sp (constant eps): the damping stays the base value in the model's own units
    sp = tensor_scales(RECIPES["sp"], OPTIMIZERS["shampoo"], TensorContext(role="hidden", width=4.0, size=16.0))[1]
    assert (sp.lr, sp.eps) == pytest.approx((1, 1))


@needs_library
def test_plans_build_the_library_optimizers_with_per_tensor_groups():
    import pytorch_optimizer

    for optimizer, cls, key in (("soap", pytorch_optimizer.SOAP, "eps"),
                                ("shampoo", pytorch_optimizer.Shampoo, "matrix_eps")):
        for build, base in ((lambda: mlp.build(width=128, depth=2), mlp.build(width=64, depth=2, device="meta")),
                            (lambda: gpt.build(width=128, depth=2), gpt.build(width=64, depth=2, device="meta"))):
            model = build()
            plan = pt.parameterize(model, base, recipe="mup", optimizer=optimizer)
            opt = plan.optimizer(lr=1e-3, weight_decay=0.1)
            assert isinstance(opt, cls)
            want = {g["name"]: g for g in plan.param_groups(1e-3, 0.1)}
            for group in opt.param_groups:
                for name in group["names"]:
                    assert group["lr"] == pytest.approx(want[name]["lr"]), name
                    assert group[key] == pytest.approx(want[name][key]), name
                    assert group["weight_decay"] == pytest.approx(want[name]["weight_decay"]), name
            name = "layers.0.weight" if "layers.0.weight" in plan.tensors else "blocks.0.mlp.fc.weight"
            tp = plan.tensors[name]
            text = plan.explain(lr=1e-3, eps=1e-6)
            assert f"optimizer={optimizer}" in text and text.splitlines()[1].split()[-1] == "eps"
            row = next(line for line in text.splitlines() if line.startswith(name + " "))
            assert row.split()[-1] == f"{1e-6 * tp.folded.eps:.3g}"  # the group's eps (SOAP) or damping (Shampoo)
            if optimizer == "shampoo":
                assert "the eps column is the damping (matrix_eps" in text
                assert tp.folded.eps == pytest.approx(1.0)  # hidden: fans x2 each, gradient RMS x1/2
            else:
                assert "'none' alignment column" in text


def test_missing_library_is_a_clear_error(monkeypatch):
    plan = pt.parameterize(mlp.build(width=64, depth=1), mlp.build(width=32, depth=1, device="meta"),
                           recipe="mup", optimizer="soap")  # planning needs no library
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    with pytest.raises(ImportError, match=r"optimizer 'soap' comes from the pytorch-optimizer package.*"
                                          r"proxytune\[matrix\]"):
        plan.optimizer(lr=1e-3)


@needs_library
def test_shampoo_refuses_momentum_and_coupled_decay():
    plan = pt.parameterize(mlp.build(width=64, depth=1), mlp.build(width=32, depth=1, device="meta"),
                           recipe="mup", optimizer="shampoo")
    with pytest.raises(ValueError, match="momentum"):
        plan.optimizer(lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="weight_decouple"):
        plan.optimizer(lr=1e-3, weight_decouple=False)
    assert plan.optimizer(lr=1e-3).param_groups[0]["weight_decouple"] is True


@pytest.mark.parametrize("optimizer", ["soap", "shampoo"])
def test_batched_trials_are_refused(optimizer):
    cfgs = [TrainConfig(model="gpt", width=32, depth=1, base_width=16, optimizer=optimizer, lr=lr)
            for lr in (1e-3, 2e-3)]
    with pytest.raises(BatchError, match=rf"optimizer '{optimizer}' has no batched update .*train these configs "
                                         "one by one"):
        check_batchable(cfgs)


def test_u_mup_refuses_them():
    for optimizer in ("soap", "shampoo"):
        with pytest.raises(pt.PlanError, match="Adam-family optimizers"):
            pt.parameterize(gpt.build(width=64, depth=2), gpt.build(width=32, depth=2, device="meta"),
                            recipe="u-mup", optimizer=optimizer)


# ------------------------------------------------------------------------------- measured: SOAP on the GPT
@needs_library
def test_soap_width_rule_measured_on_gpt():
    mup = [_gpt_soap("mup", w) for w in WIDTHS]
    roles = mup[0][1]
    slopes = _slopes([r for r, _ in mup])
    assert {roles[n] for n in slopes} == {"embedding", "hidden", "readout"}
    for name, slope in slopes.items():
        # measured within 0.12 of 0; Adam's full-alignment rows put hidden and readout near -0.5
        assert_slope(WIDTHS, [r[name] for r, _ in mup], 0.0, TOL, what=f"soap/mup {name} ({roles[name]})")
    sp = _slopes([_gpt_soap("sp", w)[0] for w in WIDTHS])
    grown = [n for n in sp if roles[n] in ("hidden", "readout") and sp[n] > 0.3]
    # one global LR: the hidden matrices and the readout grow as m^1/2 (measured 0.38..0.47)
    assert len(grown) == sum(roles[n] in ("hidden", "readout") for n in sp), sp


# ---------------------------------------------------------------------------- measured: Shampoo on the MLP
@needs_library
@pytest.mark.parametrize("damping", [None, 0.1])
def test_shampoo_width_rule_measured_on_mlp(damping):
    """``damping=None``: the library's 1e-6, far below the gradient's squared singular values (the spectral LR
    rows alone decide); 0.1: above them at the base, so the step is damped and the damping's width rule decides
    too (a damping exponent off by 1/2 moves the slopes by about 1/4)."""
    rows = _mlp_shampoo_rows("mup", damping)
    for name in ("inp", "layers.0", "layers.1", "out"):
        # measured within 0.07 of 0
        assert_slope(WIDTHS, [r[name] for r in rows], 0.0, TOL, what=f"shampoo/mup damping={damping} {name}")


@needs_library
def test_shampoo_sp_moves_input_and_readout():
    sp = _slopes(_mlp_shampoo_rows("sp"))
    # one global LR: the input layer's step lacks muP's m^1/2, the readout's its m^-1/2
    assert sp["inp"] < -0.3 and sp["out"] > 0.3, sp
    assert abs(sp["layers.0"]) < TOL and abs(sp["layers.1"]) < TOL, sp  # the hidden LR is width-free either way


"""Dion (proxytune.optim.Dion): the paper's update rule, its rows in the rules table, and its width rule, measured.

Source: Ahn, Xu, Abreu & Langford 2025, "Dion: Distributed Orthonormalized Updates" (arXiv 2504.05295); the rows
and the measured slopes are in docs/parameterizations.md section 18.

The width check is the one of tests/test_muon_width.py and tests/test_matrix_optimizers.py: the change a tensor's
own update makes to its output after a few steps on a fixed batch (``dW @ h`` for a linear layer, ``h`` its input
before the steps; the change of the looked-up rows for an embedding table; the change of a vector itself), as a
log-log slope over widths 64..512. Under muP every tensor class keeps its size (within 0.15 of 0; a wrong exponent
moves a slope by about 1/2); under SP (one global LR) the readout's grows.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import proxytune as pt
from proxytune.cli import app
from proxytune.models import gpt, mlp
from proxytune.optim import Dion
from proxytune.optim.dion import dion_matrix_step, dion_rank
from proxytune.rules.everett import LR_EXPONENTS
from proxytune.rules.recipes import OPTIMIZERS, RECIPES, TensorContext, tensor_scales
from proxytune.train import BatchError, TrainConfig, check_batchable
from proxytune.train.setup import optimizer_kwargs
from scale_helpers import assert_slope, loglog_slope, rms

DT = torch.float64
WIDTHS = (64, 128, 256, 512)
TOL = 0.15


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def _step(w: torch.Tensor, g: torch.Tensor, q: torch.Tensor, *, lr: float = 1.0, mu: float = 0.5,
          weight_decay: float = 0.0, momentum: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Dion step of a copy of ``w`` with the shape scale; returns (the step W_new - W, the momentum after)."""
    p = w.clone()
    m = torch.zeros_like(w) if momentum is None else momentum.clone()
    dion_matrix_step(p, g, m, q, lr=lr, scale=math.sqrt(w.shape[0] / w.shape[1]), mu=mu,
                     weight_decay=weight_decay, eps=1e-12)
    return p - w * (1 - lr * weight_decay), m


# ------------------------------------------------------------------------------------------ the update rule
def test_hand_computed_step():
    """2 x 2, rank 1, mu = 1/2, Q_0 = (3, 4)/5: P = M Q_0 / |M Q_0| = (3, 2)/sqrt(13), R = M^T P = (6, 2)/sqrt(13),
    M <- G - (1/2) P R^T, Q = R / |R| = (3, 1)/sqrt(10), step = -lr P Q^T = -lr (9, 3; 6, 2)/sqrt(130)."""
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=DT)
    q = torch.tensor([[3.0], [4.0]], dtype=DT) / 5
    step, m = _step(torch.zeros(2, 2, dtype=DT), g, q, lr=0.1)
    close(step, -0.1 * torch.tensor([[9.0, 3.0], [6.0, 2.0]], dtype=DT) / math.sqrt(130), 1e-12)
    close(m, g - 0.5 * torch.tensor([[18.0, 6.0], [12.0, 4.0]], dtype=DT) / 13, 1e-12)
    close(q.flatten() * q[0, 0].sign(), torch.tensor([3.0, 1.0], dtype=DT) / math.sqrt(10), 1e-12)  # QR's sign


def test_one_step_has_unit_columns_and_the_shape_scale():
    """P has orthonormal columns and Q unit columns, so ||P Q^T||_F^2 = r exactly, at any gradient scale; the step
    is lr x sqrt(d_out / d_in) times that. One step from a random Q is not orthonormal yet (column normalization
    does not diagonalize R): its singular values spread."""
    gen = torch.Generator().manual_seed(0)
    for shape, r in (((24, 6), 6), ((6, 24), 6), ((24, 6), 2)):
        g = 1e3 * torch.randn(shape, generator=gen, dtype=DT)
        q = torch.randn(shape[1], r, generator=gen, dtype=DT)
        step, _ = _step(torch.zeros(shape, dtype=DT), g, q, lr=0.01)
        unit = step / (-0.01 * math.sqrt(shape[0] / shape[1]))
        assert float(unit.pow(2).sum()) == pytest.approx(r, rel=1e-12)
        assert torch.linalg.matrix_rank(unit) == r
        if r > 1:
            sv = torch.linalg.svdvals(unit)[:r]
            assert float(sv.max() - sv.min()) > 0.05, sv  # not orthonormal after one step


@pytest.mark.parametrize("rank", [6, 3])
def test_warm_start_converges_to_the_orthonormal_factor(rank):
    """A fixed buffer, stepped again and again (momentum reset, Q carried: subspace iteration): the step tends to
    U_r V_r^T of the buffer's top r singular pairs, Muon's step at full rank (r = 6 = min(d_out, d_in))."""
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(10, 6, generator=gen, dtype=DT))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=DT))
    g = u @ torch.diag(torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25], dtype=DT)) @ v.T
    q = torch.randn(6, rank, generator=gen, dtype=DT)
    for _ in range(60):
        step, _ = _step(torch.zeros(10, 6, dtype=DT), g, q)
    unit = -step / math.sqrt(10 / 6)
    close(torch.linalg.svdvals(unit)[:rank], torch.ones(rank, dtype=DT), 1e-6)
    close(unit, u[:, :rank] @ v[:, :rank].T, 1e-6)


def test_error_feedback_keeps_what_the_step_missed():
    """M <- B - (1 - mu) P R^T = B - (1 - mu) P P^T B: the part of the buffer outside P's span stays at full weight,
    the captured part decays to mu of itself; at full rank that is momentum, M = mu B."""
    gen = torch.Generator().manual_seed(2)
    w = torch.zeros(8, 5, dtype=DT)
    old = torch.randn(8, 5, generator=gen, dtype=DT)
    g = torch.randn(8, 5, generator=gen, dtype=DT)
    q0 = torch.randn(5, 2, generator=gen, dtype=DT)
    p, _ = torch.linalg.qr((old + g) @ q0)
    _, m = _step(w, g, q0.clone(), mu=0.9, momentum=old)
    b = old + g
    close(m, b - 0.1 * p @ p.T @ b, 1e-12)
    close((torch.eye(8, dtype=DT) - p @ p.T) @ m, (torch.eye(8, dtype=DT) - p @ p.T) @ b, 1e-12)
    _, m_full = _step(w, g, torch.randn(5, 5, generator=gen, dtype=DT), mu=0.9, momentum=old)
    close(m_full, 0.9 * b, 1e-12)


def test_rank_deficient_buffer_gives_no_noise_columns():
    """A gradient of rank 3 (fewer samples than the width) at full rank r = 16, in float32: the columns of R outside
    the gradient's span are rounding noise; they count as zero, so the step has rank 3 and ||P Q^T||_F^2 = 3."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(64, 3, generator=gen) @ torch.randn(3, 16, generator=gen)
    step, _ = _step(torch.zeros(64, 16), g, torch.randn(16, 16, generator=gen))
    assert float(step.pow(2).sum()) / (64 / 16) == pytest.approx(3.0, rel=1e-4)
    assert torch.linalg.svdvals(step)[3] < 1e-5 * torch.linalg.svdvals(step)[0]


def test_decoupled_weight_decay_and_rank():
    w = torch.ones(4, 3, dtype=DT)
    step, _ = _step(w, torch.zeros(4, 3, dtype=DT), torch.randn(3, 3, dtype=DT), lr=0.1, weight_decay=0.5)
    close(step, torch.zeros(4, 3, dtype=DT), 1e-15)  # a zero gradient: only the decay, W (1 - lr wd)
    assert [dion_rank((512, 128), f) for f in (1.0, 0.25, 1e-6)] == [128, 32, 1]
    assert dion_rank((512, 128), 0.25, rank=16) == 16 and dion_rank((8, 4, 3, 3), 1.0) == 8


def _params(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn(s, generator=gen, dtype=DT)).requires_grad_() for s in ((6, 4), (6,), (3, 6))]


def _loss(params: list[torch.Tensor], t: int, mult: float = 1.0) -> torch.Tensor:
    w1, b1, w2 = params
    gen = torch.Generator().manual_seed(100 + t)
    x, y = torch.randn(5, 4, generator=gen, dtype=DT), torch.randn(5, 3, generator=gen, dtype=DT)
    return mult * ((torch.tanh(x @ w1.T + b1) @ w2.T - y) ** 2).mean()


def _train(params: list[torch.Tensor], opt: torch.optim.Optimizer, steps: int, mult: float = 1.0) -> None:
    for t in range(steps):
        opt.zero_grad()
        _loss(params, t, mult).backward()
        opt.step()


def test_the_optimizer_steps_matrices_with_dion_and_the_rest_with_adamw():
    params = _params(0)
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt = Dion([{"params": params[:1], "scale": 2.0}, {"params": params[1:2]}, {"params": params[2:]}],
               lr=0.02, mu=0.9, weight_decay=0.1, betas=(0.8, 0.99), adam_eps=1e-7)
    assert [g["use_dion"] for g in opt.param_groups] == [True, False, True]
    assert opt.param_groups[1]["eps"] == 1e-7 and opt.param_groups[0]["eps"] == 1e-8
    adamw = torch.optim.AdamW(ref[1:2], lr=0.02, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
    # the matrices, by hand: each Q_0 is drawn at the matrix's first step from a generator seeded with seed=0
    state = {i: (torch.zeros_like(ref[i]), torch.randn(ref[i].shape[1], min(ref[i].shape), dtype=DT,
                                                       generator=torch.Generator().manual_seed(0)))
             for i in (0, 2)}
    for t in range(5):
        opt.zero_grad()
        _loss(params, t).backward()
        opt.step()
        adamw.zero_grad()
        for p in ref:
            p.grad = None
        _loss(ref, t).backward()
        adamw.step()
        with torch.no_grad():
            for i, scale in ((0, 2.0), (2, math.sqrt(3 / 6))):
                dion_matrix_step(ref[i], ref[i].grad, *state[i], lr=0.02, scale=scale, mu=0.9, weight_decay=0.1,
                                 eps=1e-8)
    for p, r in zip(params, ref):
        close(p.detach(), r.detach(), 1e-12)


def test_gradient_scale_invariance_and_state_dict():
    """Scaling the loss by s and every eps by s leaves the steps unchanged (the LR folds as Adam's); a state dict
    reloaded mid-run continues the same trajectory."""
    runs = []
    for s in (1.0, 1024.0):
        params = _params(1)
        opt = Dion([{"params": params[::2]}, {"params": params[1:2]}], lr=0.01, eps=1e-8 * s, adam_eps=1e-8 * s)
        _train(params, opt, 6, mult=s)
        runs.append(params)
    for a, b in zip(*runs):
        close(a.detach(), b.detach(), 1e-12)
    params = _params(1)
    opt = Dion([{"params": params[::2]}, {"params": params[1:2]}], lr=0.01)
    _train(params, opt, 3)
    again = [p.detach().clone().requires_grad_() for p in params]
    opt2 = Dion([{"params": again[::2]}, {"params": again[1:2]}], lr=0.01, seed=7)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # the live state is stepped in place
    for t in range(3, 6):
        for ps, o in ((params, opt), (again, opt2)):
            o.zero_grad()
            _loss(ps, t).backward()
            o.step()
    for a, b in zip(params, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mu=1.0), "mu"), (dict(rank_fraction=0.0), "rank_fraction"), (dict(rank=0), "rank"),
    (dict(lr=-1.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=rf"Dion: invalid {match}"):
        Dion([{"params": _params(0)[:1]}, {"params": _params(0)[1:2]}], **kwargs)


def test_vector_in_a_dion_group_is_refused():
    with pytest.raises(ValueError, match="use_dion"):
        Dion([{"params": _params(0)[1:2], "use_dion": True}])


# ------------------------------------------------------------------------------------------------ the rows
def test_rows_are_adams_with_the_spectral_hidden_entry():
    """Dion's explicit exponents c: Adam's full-alignment column for embeddings, vectors and the readout (AdamW
    steps them), the spectral row's -a for hidden matrices (the shape-scaled orthonormalized step)."""
    for param in ("sp", "ntk", "mup", "mf"):
        adam, spectral = LR_EXPONENTS[("adam", param, "full")], LR_EXPONENTS[("spectral", param, "full")]
        assert LR_EXPONENTS[("dion", param, "full")] == {**adam, "hidden": spectral["hidden"]}, param
    assert ("dion", "mup", "none") not in LR_EXPONENTS and OPTIMIZERS["dion"].alignment == "full"


def test_rows_at_width_4():
    """Folded muP at m = 4: the hidden LR is width-free (x1, where AdamW's is x1/4); the rest is AdamW's."""
    mup = RECIPES["mup"]
    rows = {r: tensor_scales(mup, OPTIMIZERS["dion"], TensorContext(role=r, width=4.0))[1]
            for r in ("embedding", "vector", "hidden", "readout")}
    adamw = {r: tensor_scales(mup, OPTIMIZERS["adamw"], TensorContext(role=r, width=4.0))[1] for r in rows}
    assert [rows[r].lr for r in rows] == pytest.approx([1, 1, 1, 0.25])
    assert [rows[r].wd for r in rows] == pytest.approx([1, 1, 1, 4])  # lr x wd kept (independent decay)
    for r in rows:
        assert rows[r].init == pytest.approx(adamw[r].init) and rows[r].eps == pytest.approx(adamw[r].eps)
        assert rows[r].multiplier == 1.0
    sp = tensor_scales(RECIPES["sp"], OPTIMIZERS["dion"], TensorContext(role="readout", width=4.0))[1]
    assert sp.lr == pytest.approx(1.0)  # one global LR


def test_plan_builds_dion_with_per_tensor_groups_and_explains_it():
    model = gpt.build(width=128, depth=2)
    plan = pt.parameterize(model, gpt.build(width=64, depth=2, device="meta"), recipe="mup", optimizer="dion")
    fc, proj = plan.tensors["blocks.0.mlp.fc.weight"], plan.tensors["blocks.0.mlp.proj.weight"]
    assert fc.muon and proj.muon and (fc.muon_scale, proj.muon_scale) == pytest.approx((2.0, 0.5))
    assert not any(tp.muon for tp in plan.tensors.values() if tp.role != "hidden")
    opt = plan.optimizer(lr=1e-2, weight_decay=0.1, muon_lr=2e-2, rank_fraction=0.5)
    assert isinstance(opt, Dion)
    want = {g["name"]: g for g in plan.param_groups(1e-2, 0.1, muon_lr=2e-2)}
    for group in opt.param_groups:
        for name in group["names"]:
            tp = plan.tensors[name]
            assert group["use_dion"] == tp.muon and group["lr"] == pytest.approx(want[name]["lr"]), name
            assert group["weight_decay"] == pytest.approx(want[name]["weight_decay"]), name
            assert group["lr"] == pytest.approx((2e-2 if tp.muon else 1e-2) * tp.folded.lr), name
            if tp.muon:
                assert group["scale"] == pytest.approx(tp.muon_scale) and group["rank_fraction"] == 0.5
    text = plan.explain(lr=1e-2, eps=1e-6)
    row = next(line for line in text.splitlines() if line.startswith("blocks.0.mlp.fc.weight "))
    assert "hidden/dion" in row and row.split()[-1] == f"{1e-8 * fc.folded.eps:.3g}"  # the column-norm eps
    head = next(line for line in text.splitlines() if line.startswith("lm_head.weight "))
    readout_eps = plan.tensors["lm_head.weight"].folded.eps
    assert head.split()[1] == "readout" and head.split()[-1] == f"{1e-6 * readout_eps:.3g}"  # AdamW's eps
    assert "dion: role/dion = Dion's matrix step" in text
    res = CliRunner().invoke(app, ["explain", "--width", "128", "--depth", "1", "--base-width", "64",
                                   "--base-depth", "1", "--optimizer", "dion", "--lr", "0.01"])
    assert res.exit_code == 0, res.output
    assert "hidden/dion" in res.output and "dion: role/dion" in res.output


def test_plan_notes_and_refusals():
    plan = pt.parameterize(mlp.build(width=64, depth=1), mlp.build(width=32, depth=1, device="meta"),
                           recipe="mup", optimizer="dion", alignment="none", muon_scale="rms")
    assert any("'full' alignment column" in n and "section 18" in n for n in plan.notes)
    assert any("muon_scale='rms' is Muon's" in n for n in plan.notes)
    assert plan.tensors["layers.0.weight"].muon_scale == pytest.approx(1.0)
    with pytest.raises(pt.PlanError, match="Adam-family optimizers"):
        pt.parameterize(gpt.build(width=64, depth=2), gpt.build(width=32, depth=2, device="meta"),
                        recipe="u-mup", optimizer="dion")
    cfgs = [TrainConfig(model="gpt", width=32, depth=1, base_width=16, optimizer="dion", lr=lr) for lr in (1e-3, 2e-3)]
    with pytest.raises(BatchError, match=r"optimizer 'dion' has no batched update .*train these configs one by one"):
        check_batchable(cfgs)
    with pytest.raises(ValueError, match="nesterov"):
        plan.optimizer(lr=1e-3, **optimizer_kwargs(TrainConfig(optimizer="dion", nesterov=True)))


# ------------------------------------------------------------------------------------ measured: width rule
def _effects(model: torch.nn.Module, plan: pt.Plan, x: torch.Tensor, y: torch.Tensor, loss_fn, *, lr: float,
             steps: int) -> dict[str, float]:
    """RMS of the output change each planned tensor's own update makes after ``steps`` steps on (x, y): ``h @ dW^T``
    for a linear weight (``h`` its input before the steps), the looked-up rows' change for an embedding table, the
    change itself for a vector (a bias, or a norm gain, which multiplies a unit-RMS input)."""
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    names = {m: n for n, m in model.named_modules() if n in kinds}
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(module: torch.nn.Module, args: tuple) -> None:
        if module in names:
            inputs[names[module]] = args[0].detach().clone()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(keep_input)  # one hook for every module
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = plan.optimizer(lr=lr)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {}
    for name, p in model.named_parameters():
        module, _, attr = name.rpartition(".")
        d = p.detach() - before[name]
        if kinds.get(module) is torch.nn.Linear and attr == "weight":
            out[name] = rms(inputs[module] @ d.T)
        elif kinds.get(module) is torch.nn.Embedding:
            out[name] = rms(d[inputs[module]])
        else:
            out[name] = rms(d)
    return out


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    tok = torch.randint(0, 256, (8, 17), generator=torch.Generator().manual_seed(1 + seed))
    return tok[:, :-1], tok[:, 1:]


def _features(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)


#: the width checks: the reference GPT (1 block, width by heads) on 8 x 16 tokens, 4 steps at lr 3e-3, one seed;
#: the reference MLP (depth 2, biases, 16 -> 4) on a batch of 64, 3 steps at lr 1e-2, the geometric mean over 4
#: seeds (model and batch: the 4-class readout of one seed moves by up to 0.1 from seed to seed). Full rank.
CHECKS = {
    "gpt": dict(build=lambda width, **kw: gpt.build(width=width, depth=1, seq_len=16, **kw), data=_tokens,
                loss=_lm_loss, lr=3e-3, steps=4, seeds=1),
    "mlp": dict(build=lambda width, **kw: mlp.build(width=width, depth=2, **kw), data=_features,
                loss=F.cross_entropy, lr=1e-2, steps=3, seeds=4),
}


def _rows(model: str, recipe: str) -> tuple[list[dict[str, float]], dict[str, str]]:
    """Per width, each tensor's own-update effect (``_effects``), and each tensor's role."""
    check = CHECKS[model]
    per_seed: list[list[dict[str, float]]] = [[] for _ in range(check["seeds"])]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # light on CPU; restored below
    try:
        for seed, rows in enumerate(per_seed):
            for width in WIDTHS:
                torch.manual_seed(seed)
                net = check["build"](width)
                plan = pt.parameterize(net, check["build"](64, device="meta"), recipe=recipe, optimizer="dion")
                rows.append(_effects(net, plan, *check["data"](seed), check["loss"], lr=check["lr"],
                                     steps=check["steps"]))
    finally:
        torch.set_num_threads(threads)
    mean = [{n: math.exp(sum(math.log(rows[i][n]) for rows in per_seed) / len(per_seed)) for n in per_seed[0][i]}
            for i in range(len(WIDTHS))]
    return mean, {n: plan.tensors[n].role for n in mean[0]}


@pytest.mark.parametrize("model", ["gpt", "mlp"])
def test_mup_keeps_every_tensor_class_width_free(model):
    rows, roles = _rows(model, "mup")
    wanted = {"embedding", "vector", "hidden", "readout"}
    assert wanted <= set(roles.values()), roles
    for name in rows[0]:
        # measured within 0.06 of 0 on the GPT, 0.05 on the MLP; an exponent moved by 1/2 is about 0.5 away
        assert_slope(WIDTHS, [r[name] for r in rows], 0.0, TOL, what=f"dion/mup {model} {name} ({roles[name]})")


@pytest.mark.parametrize("model", ["gpt", "mlp"])
def test_sp_moves_the_readout(model):
    """One global LR: the readout's update grows with width (measured +0.93 on the GPT, +0.68 on the MLP). The
    other classes keep their size under SP too: with one LR, AdamW's embedding and vector steps and Dion's
    shape-scaled hidden step are what muP gives them; the readout is where muP differs."""
    rows, roles = _rows(model, "sp")
    slopes = {n: loglog_slope(WIDTHS, [r[n] for r in rows]) for n in rows[0]}
    readout = [n for n in slopes if roles[n] == "readout"]
    assert readout and all(slopes[n] > 0.5 for n in readout), slopes
    for name, slope in slopes.items():
        if roles[name] in ("embedding", "hidden"):
            assert abs(slope) < TOL, (name, slope)

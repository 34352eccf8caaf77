"""Tests for AdamAtan2 and Muon (float64 so tolerances can be tight)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

from proxytune.optim.adam_atan2 import AdamAtan2
from proxytune.optim.muon import Muon, newton_schulz

DT = torch.float64


# --------------------------------------------------------------------------- helpers


def make_params(seed: int = 0) -> list[Tensor]:
    """Leaf tensors of a tiny MLP plus an extra 3-D tensor: several shapes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 6), (6,), (6, 3), (3,), (3, 2, 2)]
    return [(0.5 * torch.randn(s, generator=gen, dtype=DT)).requires_grad_() for s in shapes]


def clone_params(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def mlp_loss(params: list[Tensor], t: int, mult: float = 1.0) -> Tensor:
    """Deterministic loss for step ``t``; ``mult`` rescales it (and the gradients)."""
    w1, b1, w2, b2, e = params
    gen = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(8, 4, generator=gen, dtype=DT)
    y = torch.randn(8, 3, generator=gen, dtype=DT)
    out = torch.tanh(x @ w1 + b1) @ w2 + b2
    extra = (e.sin() * torch.arange(1, 13, dtype=DT).reshape(3, 2, 2)).sum()
    return mult * (((out - y) ** 2).mean() + 0.1 * extra)


def compute_grads(params: list[Tensor], t: int, mult: float = 1.0) -> None:
    for p in params:
        p.grad = None
    mlp_loss(params, t, mult).backward()


def skip_some(params: list[Tensor], t: int) -> None:
    """Drop a grad on odd steps so per-param step counts diverge."""
    if t % 2 == 1:
        params[3].grad = None


def group_spec(params: list[Tensor]) -> list[dict]:
    """Two groups with their own hyperparameters and an unknown key."""
    return [
        {"params": params[:2], "lr": 3e-2, "betas": (0.8, 0.99), "a": 1.0, "b": 0.5, "name": "hidden"},
        {"params": params[2:], "weight_decay": 0.1, "name": "rest"},
    ]


def reference_adam_atan2(params: list[Tensor], groups: list[dict], defaults: dict, steps: int) -> list[Tensor]:
    """Plain re-derivation of Adam-atan2 with torch.atan2 and explicit bias correction."""
    hp = {}
    for g in groups:
        for p in g["params"]:
            hp[id(p)] = {**defaults, **{k: v for k, v in g.items() if k != "params"}}
    m = {id(p): torch.zeros_like(p) for p in params}
    v = {id(p): torch.zeros_like(p) for p in params}
    n = {id(p): 0 for p in params}
    for t in range(steps):
        compute_grads(params, t)
        skip_some(params, t)
        with torch.no_grad():
            for p in params:
                if p.grad is None:
                    continue
                h, k = hp[id(p)], id(p)
                b1, b2 = h["betas"]
                n[k] += 1
                m[k] = b1 * m[k] + (1 - b1) * p.grad
                v[k] = b2 * v[k] + (1 - b2) * p.grad**2
                m_hat = m[k] / (1 - b1 ** n[k])
                v_hat = v[k] / (1 - b2 ** n[k])
                upd = torch.atan2(m_hat, h["b"] * v_hat.sqrt())
                p.copy_(p * (1 - h["lr"] * h["weight_decay"]) - h["lr"] * h["a"] * upd)
    return params


def checkpoint(opt: torch.optim.Optimizer) -> dict:
    """Serialize and reload a state dict, as a real checkpoint would.

    Loading an unserialized state dict would alias the original's state tensors.
    """
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


def run_opt(params: list[Tensor], opt: torch.optim.Optimizer, steps: int, start: int = 0, mult: float = 1.0) -> None:
    for t in range(start, start + steps):
        compute_grads(params, t, mult)
        skip_some(params, t)
        opt.step()


# --------------------------------------------------------------------------- AdamAtan2


@pytest.mark.parametrize("foreach", [True, False, None])
def test_adam_atan2_matches_reference(foreach: bool | None) -> None:
    defaults = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.05, a=1.27, b=1.0)
    ref = make_params()
    reference_adam_atan2(ref, group_spec(ref), defaults, 20)

    params = make_params()
    opt = AdamAtan2(group_spec(params), foreach=foreach, **defaults)
    run_opt(params, opt, 20)

    assert opt.param_groups[0]["name"] == "hidden" and opt.param_groups[1]["name"] == "rest"
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-10, atol=1e-12)
    # The skipped param really did fewer steps.
    assert float(opt.state[params[3]]["step"]) == 10.0
    assert float(opt.state[params[0]]["step"]) == 20.0


@pytest.mark.parametrize("foreach", [True, False])
def test_adam_atan2_gradient_scale_invariance(foreach: bool) -> None:
    results = []
    for mult in (1e3, 1e-3):
        params = make_params()
        opt = AdamAtan2(params, lr=1e-2, weight_decay=0.01, foreach=foreach)
        run_opt(params, opt, 20, mult=mult)
        results.append(params)
    moved = max((p - p0).abs().max().item() for p, p0 in zip(results[0], make_params()))
    assert moved > 1e-2
    for p_big, p_small in zip(*results):
        torch.testing.assert_close(p_big, p_small, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("foreach", [True, False])
def test_adam_atan2_step_is_bounded(foreach: bool) -> None:
    lr, a, wd = 1e-2, 1.27, 0.1
    bound = lr * a * math.pi / 2
    params = make_params()
    # Tiny b pushes atan2 towards its pi/2 ceiling, so the bound is actually approached.
    opt = AdamAtan2(params, lr=lr, a=a, b=1e-6, weight_decay=wd, foreach=foreach)
    largest = 0.0
    for t in range(10):
        before = [p.detach().clone() for p in params]
        compute_grads(params, t, mult=1e4)
        opt.step()
        for p, p0 in zip(params, before):
            step = (p.detach() - p0 * (1 - lr * wd)).abs().max().item()
            assert step <= bound * (1 + 1e-12)
            largest = max(largest, step)
    assert largest > 0.99 * bound


@pytest.mark.parametrize("foreach", [True, False])
def test_adam_atan2_zero_gradient(foreach: bool) -> None:
    lr, wd = 1e-2, 0.1
    w = torch.randn(3, 4, dtype=DT, requires_grad=True)
    u = torch.randn(5, dtype=DT, requires_grad=True)
    w0 = w.detach().clone()
    opt = AdamAtan2([w, u], lr=lr, weight_decay=wd, foreach=foreach)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        u.grad = torch.randn_like(u)
        opt.step()
    assert torch.isfinite(w).all() and torch.isfinite(u).all()
    torch.testing.assert_close(w.detach(), w0 * (1 - lr * wd) ** 3, rtol=1e-14, atol=0.0)


def test_adam_atan2_mixed_dtypes_and_float32() -> None:
    def build() -> list[Tensor]:
        gen = torch.Generator().manual_seed(3)
        return [
            torch.randn(4, 3, generator=gen, dtype=torch.float32).requires_grad_(),
            torch.randn(5, generator=gen, dtype=DT).requires_grad_(),
        ]

    outs = []
    for foreach in (None, True, False):
        params = build()
        opt = AdamAtan2(params, lr=1e-2, foreach=foreach)
        for t in range(5):
            gen = torch.Generator().manual_seed(t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        assert [p.dtype for p in params] == [torch.float32, DT]
        outs.append(params)
    for other in outs[1:]:
        for p, q in zip(outs[0], other):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adam_atan2_state_dict_round_trip() -> None:
    params = make_params()
    opt = AdamAtan2(group_spec(params), lr=1e-2)
    run_opt(params, opt, 5)

    resumed = clone_params(params)
    opt2 = AdamAtan2(group_spec(resumed), lr=1e-2)
    opt2.load_state_dict(checkpoint(opt))
    run_opt(params, opt, 5, start=5)
    run_opt(resumed, opt2, 5, start=5)
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "learning rate"),
        ({"betas": (1.0, 0.999)}, "beta1"),
        ({"betas": (0.9, -0.1)}, "beta2"),
        ({"a": 0.0}, "invalid a"),
        ({"b": -1.0}, "invalid b"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_adam_atan2_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdamAtan2([torch.zeros(2, requires_grad=True)], **kwargs)
    # Per-group overrides are validated too.
    with pytest.raises(ValueError, match=match):
        AdamAtan2([{"params": [torch.zeros(2, requires_grad=True)], **kwargs}])


# --------------------------------------------------------------------------- newton_schulz


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_newton_schulz_singular_values(shape: tuple[int, int]) -> None:
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    out = newton_schulz(g)
    assert out.shape == g.shape and out.dtype == DT
    sv = torch.linalg.svdvals(out)
    assert sv.min() > 0.5 and sv.max() < 1.3
    torch.testing.assert_close(newton_schulz(g.T), out.T, rtol=1e-12, atol=1e-12)


def test_newton_schulz_eps_is_added_not_clamped() -> None:
    g = torch.randn(6, 9, dtype=DT)
    norm = g.norm().item()
    # With zero iterations the output is the normalized input: g / (||g|| + eps).
    torch.testing.assert_close(newton_schulz(g, steps=0, eps=norm), g / (2 * norm))
    s = 2.0**10
    assert torch.equal(newton_schulz(g * s, eps=1e-3 * s), newton_schulz(g, eps=1e-3))


# --------------------------------------------------------------------------- Muon


def set_grads(params: list[Tensor], t: int, mult: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(500 + t)
    for p in params:
        p.grad = mult * torch.randn(p.shape, generator=gen, dtype=p.dtype)


def muon_params(seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=DT).requires_grad_() for s in [(16, 8), (8, 24), (4, 3, 3, 3)]]


@pytest.mark.parametrize("s", [2.0**10, 2.0**-10, 1e3, 1e-3])
def test_muon_gradient_scale_invariance(s: float) -> None:
    eps = 1e-3  # large enough that failing to scale it would show
    base, scaled = muon_params(), muon_params()
    opt_a = Muon(base, lr=0.05, eps=eps, weight_decay=0.1)
    opt_b = Muon(scaled, lr=0.05, eps=eps * s, weight_decay=0.1)
    for t in range(4):
        set_grads(base, t)
        set_grads(scaled, t, mult=s)
        opt_a.step()
        opt_b.step()
    for p, q in zip(base, scaled):
        if math.log2(s).is_integer():
            assert torch.equal(p, q)  # power-of-two scaling is exact end to end
        else:
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def first_update(shape: tuple[int, ...], **group: object) -> Tensor:
    p = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=DT).requires_grad_()
    p0 = p.detach().clone()
    opt = Muon([{"params": [p], **group}], lr=0.1)
    set_grads([p], 0)
    opt.step()
    return p.detach() - p0


def test_muon_scale_key() -> None:
    # Doubling the key doubles the update.
    torch.testing.assert_close(first_update((16, 8), scale=2.0), 2 * first_update((16, 8), scale=1.0))
    # Without the key the scale is sqrt(max(1, rows / cols)) ...
    torch.testing.assert_close(first_update((16, 8)), math.sqrt(2) * first_update((16, 8), scale=1.0))
    torch.testing.assert_close(first_update((8, 16)), first_update((8, 16), scale=1.0))
    # ... but a present key wins over the tensor's orientation.
    torch.testing.assert_close(first_update((16, 8), scale=0.5), 0.5 * first_update((16, 8), scale=1.0))


def test_muon_conv_kernel() -> None:
    lr, wd, mom = 0.1, 0.01, 0.95
    k = torch.randn(8, 3, 3, 3, dtype=DT, requires_grad=True)
    k0 = k.detach().clone()
    opt = Muon([k], lr=lr, momentum=mom, weight_decay=wd)
    assert opt.param_groups[0]["use_muon"] is True
    set_grads([k], 0)
    g = k.grad.clone()
    opt.step()
    # First step: buf = g, nesterov direction = (1 + mom) g; 8 x 27 gives scale 1.
    expected = k0 * (1 - lr * wd) - lr * newton_schulz((1 + mom) * g.reshape(8, 27)).reshape(k.shape)
    torch.testing.assert_close(k.detach(), expected, rtol=1e-13, atol=1e-14)
    set_grads([k], 1)
    opt.step()
    assert k.shape == (8, 3, 3, 3) and torch.isfinite(k).all()


def test_muon_adamw_groups_match_torch_adamw() -> None:
    gen = torch.Generator().manual_seed(7)
    shapes = [(10, 4), (4,), (3, 2, 2)]
    ours = [torch.randn(s, generator=gen, dtype=DT).requires_grad_() for s in shapes]
    theirs = clone_params(ours)
    hp = dict(lr=1e-2, betas=(0.85, 0.98), eps=1e-6, weight_decay=0.1)
    opt = Muon([{"params": ours, "use_muon": False, **hp}])
    ref = torch.optim.AdamW(theirs, **hp)
    for t in range(10):
        set_grads(ours, t)
        set_grads(theirs, t)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


def test_muon_group_defaults_and_keys() -> None:
    w, v = torch.zeros(4, 4, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = Muon(
        [{"params": [w], "name": "hidden"}, {"params": [w.new_zeros(3, 3).requires_grad_(), v], "tag": 1}],
        adam_eps=1e-10,
    )
    muon_group, adam_group = opt.param_groups
    assert muon_group["use_muon"] is True and muon_group["eps"] == 1e-7 and muon_group["name"] == "hidden"
    assert adam_group["use_muon"] is False and adam_group["eps"] == 1e-10 and adam_group["tag"] == 1
    assert "scale" not in muon_group  # default scale is computed per tensor, not stored
    explicit = Muon([{"params": [v], "use_muon": False, "lr": 1e-3, "eps": 1e-8}])
    assert explicit.param_groups[0]["eps"] == 1e-8 and explicit.param_groups[0]["lr"] == 1e-3


def test_muon_rejects_vector_in_muon_group() -> None:
    w, b = torch.zeros(4, 4, requires_grad=True), torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match=r"param group 1 \('blocks'\).*ndim=1"):
        Muon([{"params": [w]}, {"params": [w.new_zeros(2, 2).requires_grad_(), b], "use_muon": True, "name": "blocks"}])
    with pytest.raises(ValueError, match="param group 0"):
        Muon([{"params": [b], "use_muon": True}])


def test_muon_state_dict_round_trip() -> None:
    def build(params: list[Tensor]) -> Muon:
        return Muon(
            [
                {"params": params[:2], "scale": 1.5, "name": "hidden"},
                {"params": params[2:], "use_muon": False, "lr": 1e-2, "weight_decay": 0.1},
            ],
            lr=0.05,
        )

    def step_n(params: list[Tensor], opt: Muon, start: int, n: int) -> None:
        for t in range(start, start + n):
            set_grads(params, t)
            opt.step()

    gen = torch.Generator().manual_seed(11)
    params = [torch.randn(s, generator=gen, dtype=DT).requires_grad_() for s in [(8, 4), (4, 2, 3), (8,), (5, 4)]]
    opt = build(params)
    step_n(params, opt, 0, 3)

    resumed = clone_params(params)
    opt2 = build(resumed)
    opt2.load_state_dict(checkpoint(opt))
    assert opt2.param_groups[1]["eps"] == 1e-8 and opt2.param_groups[0]["scale"] == 1.5
    step_n(params, opt, 3, 3)
    step_n(resumed, opt2, 3, 3)
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)

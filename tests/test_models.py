"""The reference decoders: options, attention paths, RoPE, causality, vmap, MoE gating and roles."""

import itertools
import warnings

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

import proxytune as pt
from proxytune.models import gpt, moe

SMALL = dict(width=32, depth=1, head_dim=8, vocab=64, seq_len=8)


def _tokens(b: int = 2, t: int = 8, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def _names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters(remove_duplicate=False)]


# ------------------------------------------------------------------ building
COMBOS = list(itertools.product(gpt.MLPS, gpt.NORMS, gpt.POSITIONS, (True, False), (True, False), (True, False)))


@pytest.mark.parametrize("mlp,norm,positions,norm_affine,bias,tied", COMBOS)
def test_every_option_combination_builds_and_runs(mlp, norm, positions, norm_affine, bias, tied):
    kw = dict(SMALL, mlp=mlp, norm=norm, positions=positions, norm_affine=norm_affine, bias=bias, tied=tied)
    x = _tokens()
    meta = gpt.build(**kw, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert meta(x.to("meta")).shape == (2, 8, 64)
    model = gpt.build(**kw)
    assert _names(model) == _names(meta)
    out = model(x)
    assert out.shape == (2, 8, 64) and torch.isfinite(out).all()
    names = set(_names(model))
    assert ("wpe.weight" in names) == (positions == "learned")
    assert ("blocks.0.mlp.gate.weight" in names) == (mlp == "swiglu")
    assert ("blocks.0.ln1.weight" in names) == norm_affine
    assert ("blocks.0.ln1.bias" in names) == (norm == "layernorm" and norm_affine and bias)
    assert ("blocks.0.attn.q_proj.bias" in names) == bias
    norm_cls = torch.nn.RMSNorm if norm == "rmsnorm" else torch.nn.LayerNorm
    assert isinstance(model.blocks[0].ln1, norm_cls) and isinstance(model.ln_f, norm_cls)
    moe_model = moe.build(**kw, n_experts=3, top_k=2)
    assert moe_model(x).shape == (2, 8, 64)
    assert moe.build(**kw, n_experts=3, top_k=2, device="meta")(x.to("meta")).shape == (2, 8, 64)


def test_default_parameter_names_unchanged():
    model = gpt.build(width=32, depth=2)
    per_block = ["ln1.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
                 "attn.proj.weight", "ln2.weight", "mlp.fc.weight", "mlp.proj.weight"]
    expected = ["wte.weight", "wpe.weight"] + [f"blocks.{i}.{n}" for i in range(2) for n in per_block]
    assert _names(model) == expected + ["ln_f.weight", "lm_head.weight"]
    assert model.blocks[0].mlp.fc.weight.shape == (128, 32)


def test_moe_parameter_names():
    model = moe.build(width=32, depth=1, n_experts=3)
    names = _names(model)
    assert "blocks.0.mlp.router.weight" in names and "blocks.0.mlp.router.bias" not in names
    assert model.blocks[0].mlp.router.weight.shape == (3, 32)
    for e in range(3):
        assert model.get_parameter(f"blocks.0.mlp.experts.{e}.fc.weight").shape == (128, 32)
        assert model.get_parameter(f"blocks.0.mlp.experts.{e}.proj.weight").shape == (32, 128)
    assert moe.build(width=32, depth=1, expert_ratio=2).blocks[0].mlp.experts[0].fc.out_features == 64


def test_swiglu_hidden_and_forward():
    model = gpt.build(width=48, depth=1, mlp="swiglu", mlp_ratio=8 / 3)
    mlp = model.blocks[0].mlp
    assert mlp.fc.weight.shape == mlp.gate.weight.shape == (128, 48) and mlp.proj.weight.shape == (48, 128)
    x = torch.randn(3, 48)
    ref = mlp.proj(torch.nn.functional.silu(mlp.gate(x)) * mlp.fc(x))
    torch.testing.assert_close(mlp(x), ref)


def test_gpt2_init():
    torch.manual_seed(0)
    model = gpt.build(width=64, depth=2, bias=True, norm_affine=True)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif ".ln" in name or name.startswith("ln_f"):
            assert torch.all(p == 1), name
        else:
            assert abs(p.std().item() - 0.02) < 0.002, name
            assert abs(p.mean().item()) < 0.002, name


def test_tied_shares_storage():
    model = gpt.build(**SMALL, tied=True)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    assert "lm_head.weight" not in dict(model.named_parameters())
    assert gpt.build(**SMALL, tied=True, device="meta").lm_head.weight is not None
    assert gpt.build(**SMALL).lm_head.weight is not gpt.build(**SMALL).wte.weight


def test_dtype_and_seq_len():
    model = gpt.build(**SMALL, positions="rope", dtype=torch.float64)
    assert model(_tokens()).dtype == torch.float64
    with pytest.raises(ValueError, match="seq_len"):
        model(_tokens(t=9))


# ----------------------------------------------------------------- attention
@pytest.mark.parametrize("scale", [None, 0.05])
def test_math_attention_function_matches_sdpa(scale):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(gpt.causal_attention_math(q, k, v, scale), gpt.causal_attention(q, k, v, scale),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(), dict(positions="rope", mlp="swiglu", norm="rmsnorm"),
                                dict(n_heads=2, head_dim=None, tied=True)])
def test_math_attention_model_matches_sdpa(kw):
    torch.manual_seed(0)
    model = gpt.build(**{**SMALL, **kw, "depth": 2})
    x = _tokens()
    for attn in model.modules():
        if isinstance(attn, gpt.Attention):
            assert attn.attention_impl == "sdpa"
            attn.attn_scale = 0.2  # what the rules core does: the math path must honor it too
    sdpa = model(x)
    assert gpt.set_attention_impl(model, "math") is model
    assert all(m.attention_impl == "math" for m in model.modules() if isinstance(m, gpt.Attention))
    torch.testing.assert_close(model(x), sdpa, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="impl"):
        gpt.set_attention_impl(model, "flash")


def test_attn_scale_is_used():
    model = gpt.build(**SMALL)
    x = _tokens()
    before = model(x)
    model.blocks[0].attn.attn_scale = 1.0
    assert not torch.allclose(model(x), before)
    assert not hasattr(gpt.build(**SMALL, scale_attr=False).blocks[0].attn, "attn_scale")



def test_qk_norm_bounds_the_logits_and_takes_the_mup_factor_by_attribute():
    """QK-norm normalizes each head's query and key (scaling q_proj changes nothing), and under muP with a
    growing head dim the plan sets the logit factor through ``attn_scale``, never folding it into q_proj
    (which the norm would undo); without a scale attribute the plan refuses."""
    model = gpt.build(**SMALL, qk_norm=True)
    x = _tokens()
    before = model(x)
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight.mul_(50.0)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= set(_names(model))
    target = gpt.build(width=64, depth=1, n_heads=2, head_dim=None, qk_norm=True)
    plan = pt.parameterize(target, gpt.build(width=32, depth=1, n_heads=2, head_dim=None, qk_norm=True,
                                             device="meta"), recipe="mup")
    assert target.blocks[0].attn.attn_scale == pytest.approx(0.25 * 16 / 32)  # 1/sqrt(16) at the base, x 1/m
    assert plan.tensors["blocks.0.attn.q_norm.weight"].role == "vector"
    assert plan.tensors["blocks.0.attn.q_proj.weight"].explicit.multiplier == 1.0
    with pytest.raises(pt.PlanError, match="head dim 16 -> 32"):
        pt.parameterize(gpt.build(width=64, depth=1, n_heads=2, head_dim=None, qk_norm=True, scale_attr=False),
                        gpt.build(width=32, depth=1, n_heads=2, head_dim=None, qk_norm=True, scale_attr=False,
                                  device="meta"), recipe="mup")

# ---------------------------------------------------------------------- rope
def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    d, t = 8, 16
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
    cos, sin = gpt.rope_tables(t, d, 10000.0, torch.device("cpu"), torch.float64)
    qs = gpt.apply_rope(q.double().expand(t, d), cos, sin)  # q at every position
    ks = gpt.apply_rope(k.double().expand(t, d), cos, sin)
    scores = qs @ ks.T  # scores[m, n] = q(m) . k(n)
    for shift in (1, 5):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift])
    assert not torch.allclose(scores[0, 1], scores[0, 2])  # it does depend on the offset
    torch.testing.assert_close(qs.norm(dim=-1), q.double().norm().expand(t))  # rotations keep norms


def test_rope_model_has_no_wpe_and_differs_from_learned():
    torch.manual_seed(0)
    rope = gpt.build(**SMALL, positions="rope")
    torch.manual_seed(0)
    learned = gpt.build(**SMALL)
    assert "wpe.weight" not in dict(rope.named_parameters())
    learned_state = learned.state_dict()
    del learned_state["wpe.weight"]
    rope.load_state_dict(learned_state)
    x = _tokens()
    learned.wpe.weight.data.zero_()  # same weights, learned model without positions
    assert not torch.allclose(rope(x), learned(x), atol=1e-4)
    rope.blocks[0].attn.rope_base = None  # no rotation: the two models agree again
    torch.testing.assert_close(rope(x), learned(x))


# ------------------------------------------------------------------ causality
@pytest.mark.parametrize("build,kw", [(gpt.build, {}), (gpt.build, dict(positions="rope", mlp="swiglu")),
                                      (moe.build, {}), (moe.build, dict(positions="rope", top_k=1))],
                         ids=["gpt", "gpt-rope-swiglu", "moe", "moe-rope-top1"])
def test_causal(build, kw):
    model = build(**{**SMALL, **kw, "depth": 2})
    x = _tokens()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 64
    y[0, 5] = (y[0, 5] + 7) % 64
    a, b = model(x), model(y)
    torch.testing.assert_close(a[1, :-1], b[1, :-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0, :5], b[0, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, -1], b[:, -1])


# ----------------------------------------------------------------------- vmap
@pytest.mark.parametrize("build,kw,impl", [
    (gpt.build, dict(positions="rope", mlp="swiglu", norm="rmsnorm"), "sdpa"),
    (gpt.build, dict(positions="rope", mlp="swiglu", norm="rmsnorm", tied=True, bias=True), "math"),
    (moe.build, dict(n_experts=3, top_k=2), "sdpa"),
    (moe.build, dict(positions="rope", norm="rmsnorm", tied=True), "math"),
], ids=["gpt-rope-swiglu-rmsnorm", "gpt-all-tied-math", "moe", "moe-rope-tied-math"])
def test_vmap_over_stacked_params_matches_separate_runs(build, kw, impl):
    kw = dict(SMALL, depth=2, **kw)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(gpt.set_attention_impl(build(**kw), impl))
    params, buffers = stack_module_state(models)
    # a stateless copy: build it on meta (``deepcopy(m).to("meta")`` would untie a tied weight)
    stateless = gpt.set_attention_impl(build(**kw, device="meta"), impl)
    x = _tokens()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA's CPU kernel: slow fallback only
        out = vmap(lambda p, b, x: functional_call(stateless, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    ref = torch.stack([m(x) for m in models])
    assert out.shape == (3, 2, 8, 64)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(ref[0], ref[1])


# ------------------------------------------------------------------------ moe
@pytest.mark.parametrize("n_experts,top_k", [(4, 2), (4, 1), (5, 3), (3, 3)])
def test_moe_gates_top_k(n_experts, top_k):
    torch.manual_seed(0)
    layer = moe.build(width=32, depth=1, n_experts=n_experts, top_k=top_k).blocks[0].mlp
    layer.router.weight.data.normal_()  # spread the router so the top-k is well defined
    x = torch.randn(2, 6, 32)
    g = layer.gates(x)
    assert g.shape == (2, 6, n_experts)
    assert torch.all((g > 0).sum(-1) == top_k)
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 6))
    probs = layer.router(x).softmax(-1)
    top = probs.topk(top_k, dim=-1)
    torch.testing.assert_close(g.gather(-1, top.indices), top.values / top.values.sum(-1, keepdim=True))
    # the dense combination equals the per-token sparse sum over the chosen experts
    out = layer(x)
    ref = torch.zeros_like(out)
    for i in range(2):
        for t in range(6):
            for e in top.indices[i, t].tolist():
                ref[i, t] += g[i, t, e] * layer.experts[e](x[i, t])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_load_balancing_loss():
    balanced = 5.0 * torch.eye(4)  # 4 tokens, each prefers a different expert
    torch.testing.assert_close(moe.load_balancing_loss(balanced, top_k=1), torch.tensor(1.0))
    skewed = torch.zeros(4, 4)
    skewed[:, 0] = 5.0
    assert moe.load_balancing_loss(skewed, top_k=1) > 2.0
    assert moe.load_balancing_loss(balanced.expand(3, 4, 4), top_k=2).shape == ()


def test_moe_roles_under_mup():
    target = moe.build(width=128, depth=2, n_experts=4)
    base = moe.build(width=64, depth=2, n_experts=4, device="meta")
    plan = pt.parameterize(target, base, recipe="mup")
    tensors = plan.tensors
    for i in range(2):
        router = tensors[f"blocks.{i}.mlp.router.weight"]
        assert router.role == "readout" and router.m_in == 2 and router.m_out == 1
        for e in range(4):
            for part in ("fc", "proj"):
                tp = tensors[f"blocks.{i}.mlp.experts.{e}.{part}.weight"]
                assert tp.role == "hidden" and tp.m_in == 2 and tp.m_out == 2
    assert tensors["lm_head.weight"].role == "readout" and tensors["wte.weight"].role == "embedding"
    assert "router" in plan.explain() and "readout" in plan.explain()
    # the expert output projections are residual-branch outputs once their glob is given
    from proxytune.shapes import DEFAULT_BRANCH_OUTPUTS
    plan = pt.parameterize(moe.build(width=128, depth=2), moe.build(width=64, depth=2, device="meta"),
                           recipe="mup", branch_outputs=DEFAULT_BRANCH_OUTPUTS + ("*mlp.experts.*.proj.*",),
                           apply=False)
    assert plan.tensors["blocks.1.mlp.experts.2.proj.weight"].branch_output
    assert not plan.tensors["blocks.1.mlp.experts.2.fc.weight"].branch_output
    assert not plan.tensors["blocks.1.mlp.router.weight"].branch_output


# -------------------------------------------------------------------- options
@pytest.mark.parametrize("build,kw,option", [
    (gpt.build, dict(norm="batchnorm"), "norm"),
    (gpt.build, dict(mlp="relu"), "mlp"),
    (gpt.build, dict(positions="alibi"), "positions"),
    (gpt.build, dict(width=40, head_dim=16), "head_dim"),
    (gpt.build, dict(width=64, n_heads=3), "n_heads"),
    (gpt.build, dict(width=30, head_dim=15, positions="rope"), "head_dim"),
    (gpt.build, dict(width=64, n_heads=64, head_dim=None, positions="rope"), "rope"),
    (gpt.build, dict(mlp_ratio=0), "mlp_ratio"),
    (moe.build, dict(norm="batchnorm"), "norm"),
    (moe.build, dict(n_experts=4, top_k=5), "top_k"),
    (moe.build, dict(top_k=0), "top_k"),
    (moe.build, dict(n_experts=0, top_k=1), "n_experts"),
    (moe.build, dict(expert_ratio=-1), "expert_ratio"),
])
def test_invalid_options_raise(build, kw, option):
    with pytest.raises(ValueError, match=option):
        build(**kw, device="meta")

"""Plans: base identity, explain, serialization, wrappers, and bad input."""

import copy
import io

import pytest
import torch
from torch import nn

import proxytune as pt
from proxytune.models import gpt, mlp
from proxytune.nn.attention import ScaleAttribute
from proxytune.rules.recipes import OPTIMIZERS, RECIPES

BASE_LR, BASE_WD, BASE_EPS = 3e-3, 0.1, 1e-6


def _gpt(width=32, depth=2, seed=0, **kw):
    torch.manual_seed(seed)
    return gpt.build(width=width, depth=depth, **kw)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if not RECIPES[r].unit))
def test_base_identity(recipe, optimizer):
    """At the base shape every relative recipe reproduces the model's own init and the base HPs (u-mup is
    absolute: its base identity is its own table, tests/test_umup.py)."""
    target = _gpt(seed=1)
    own = {n: p.detach().clone() for n, p in target.named_parameters()}
    base = gpt.build(width=32, depth=2, device="meta")
    plan = pt.parameterize(target, base, recipe=recipe, optimizer=optimizer)
    for n, p in target.named_parameters():
        assert torch.equal(p, own[n]), n
    groups = plan.param_groups(BASE_LR, BASE_WD, eps=BASE_EPS)
    for g in groups:
        assert g["lr"] == pytest.approx(BASE_LR, rel=1e-12), g["name"]
        expected_wd = 0.0 if g["params"][0].ndim < 2 else BASE_WD
        assert g["weight_decay"] == pytest.approx(expected_wd, rel=1e-12), g["name"]
        if optimizer == "adafactor":
            assert g["eps"] == (None, pytest.approx(BASE_EPS))
        elif optimizer == "muon" and g["use_muon"]:
            assert g["eps"] == pytest.approx(1e-7)
        elif optimizer == "dion" and g["use_dion"]:
            assert g["eps"] == pytest.approx(1e-8)  # the column normalization's
        elif optimizer == "shampoo":
            assert g["matrix_eps"] == pytest.approx(BASE_EPS, rel=1e-12), g["name"]  # the damping
        elif "eps" in g:
            assert g["eps"] == pytest.approx(BASE_EPS, rel=1e-12), g["name"]
    for tp in plan.tensors.values():
        for sc in (tp.folded, tp.explicit):
            assert sc.multiplier == 1.0
    opt = plan.optimizer(lr=BASE_LR, weight_decay=BASE_WD)
    assert isinstance(opt, torch.optim.Optimizer)


def test_materialized_base_sets_init_std():
    torch.manual_seed(0)
    base = mlp.build(width=32, depth=2)
    target = mlp.build(width=256, depth=2)
    pt.parameterize(target, base, recipe="mup")
    b = base.layers[0].weight.std().item()
    t = target.layers[0].weight.std().item()
    assert t == pytest.approx(b * (256 / 32) ** -0.5, rel=0.03)
    # readout: muP init std ~ 1/m_in relative to the base
    assert target.out.weight.std().item() == pytest.approx(base.out.weight.std().item() / 8, rel=0.1)


def test_meta_base_recognizes_torch_default_init():
    torch.manual_seed(0)
    target = mlp.build(width=256, depth=2)
    plan = pt.parameterize(target, mlp.build(width=32, depth=2, device="meta"), recipe="mup")
    tp = plan.tensors["layers.0.weight"]
    assert "torch default" in tp.init_source
    # torch default = uniform(+-1/sqrt(fan_in)); muP keeps the hidden std at base_std * m^-1/2,
    # which is exactly the default at the target's fan-in.
    assert target.layers[0].weight.std().item() == pytest.approx((3 * 256) ** -0.5, rel=0.03)


def test_roles_and_multipliers_gpt():
    target = _gpt(width=128, depth=4)
    base = gpt.build(width=32, depth=2, device="meta")
    plan = pt.parameterize(target, base, recipe="completep")
    t = plan.tensors
    assert t["wte.weight"].role == "embedding"
    assert t["lm_head.weight"].role == "readout"
    assert t["blocks.3.attn.q_proj.weight"].role == "hidden"
    assert t["blocks.3.ln1.weight"].role == "vector"
    assert t["blocks.3.attn.proj.weight"].branch_output
    assert not t["blocks.3.attn.q_proj.weight"].branch_output
    assert t["blocks.3.mlp.fc.weight"].m_in == 4 and t["blocks.3.mlp.fc.weight"].depth == 2
    text = plan.explain(lr=1e-3)
    for col in ("role", "m_in", "m_out", "m_L", "init std", "mult", "lr", "wd", "eps"):
        assert col in text
    assert "blocks.3.mlp.proj.weight" in text


def test_hf_conv1d_layout_is_transposed():
    class Conv1D(nn.Module):  # the HF GPT-2 layout: weight (in, out)
        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
            self.bias = nn.Parameter(torch.zeros(nf))

        def forward(self, x):
            return x @ self.weight + self.bias

    class Net(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.emb = nn.Embedding(10, d)
            self.up = Conv1D(4 * d, d)
            self.head = nn.Linear(d, 10)

    plan = pt.parameterize(Net(64), Net(16), recipe="mup", optimizer="muon")
    up = plan.tensors["up.weight"]
    assert (up.fan_in, up.fan_out) == (64, 256)  # from the layout, not dim order
    assert up.muon_scale == pytest.approx(2.0)  # sqrt(fan_out / fan_in)


def test_save_load_round_trip(tmp_path):
    target = _gpt(width=64, depth=4)
    plan = pt.parameterize(target, gpt.build(width=32, depth=2, device="meta"), recipe="completep")
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = pt.Plan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    g1 = plan.param_groups(1e-3, 0.1)
    g2 = loaded.param_groups(1e-3, 0.1, model=target)
    assert [(g["name"], g["lr"], g["weight_decay"], g["eps"]) for g in g1] == \
        [(g["name"], g["lr"], g["weight_decay"], g["eps"]) for g in g2]


def test_plan_survives_wrappers_copy_and_torch_save():
    target = _gpt(width=64, depth=2)
    plan = pt.parameterize(target, gpt.build(width=32, depth=2, device="meta"), recipe="mup")
    expected = {g["name"]: g["lr"] for g in plan.param_groups(1e-3)}

    class DDPLike(nn.Module):  # DistributedDataParallel's naming: a `module.` prefix
        def __init__(self, m):
            super().__init__()
            self.module = m

    buf = io.BytesIO()
    torch.save(target, buf)
    buf.seek(0)
    reloaded = torch.load(buf, weights_only=False)
    for model in (DDPLike(target), torch.compile(target), copy.deepcopy(target), reloaded):
        groups = plan.param_groups(1e-3, model=model)
        assert {g["name"]: g["lr"] for g in groups} == expected
        owned = {id(p) for g in groups for p in g["params"]}
        assert owned == {id(p) for p in model.parameters()}
    assert not any(hasattr(p, "infshape") or len(p.__dict__) for p in target.parameters())


def test_explicit_mode_state_survives_deepcopy():
    target = _gpt(width=64, depth=2, n_heads=2, head_dim=None)
    base = gpt.build(width=32, depth=2, n_heads=2, head_dim=None, device="meta")
    plan = pt.parameterize(target, base, recipe="mup", mode="explicit")
    clone = copy.deepcopy(target)
    x = torch.randint(0, 256, (2, 8))
    assert torch.equal(clone(x), target(x))
    plan.param_groups(1e-3, model=clone)


def test_transfer_down_is_allowed_and_said():
    plan = pt.parameterize(_gpt(width=32), gpt.build(width=64, device="meta"), recipe="mup")
    assert plan.tensors["blocks.0.mlp.fc.weight"].m_in == 0.5
    assert "transferring down" in plan.explain()


def test_tied_embedding_gets_readout_multiplier():
    target = _gpt(width=128, tied=True)
    base = gpt.build(width=32, tied=True, device="meta")
    plan = pt.parameterize(target, base, recipe="mup")
    tp = plan.tensors["wte.weight"]
    assert tp.role == "embedding" and tp.readout_use == "lm_head.weight"
    assert tp.readout_multiplier == pytest.approx(0.25)
    assert target.lm_head.weight.data_ptr() == target.wte.weight.data_ptr() or \
        target.lm_head.parametrizations.weight.original is target.wte.weight


# ---------------------------------------------------------------- bad input
def test_error_different_names():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.foo = nn.Linear(4, 4)

    with pytest.raises(pt.PlanError, match=r"different parameter names.*'inp.weight'.*'foo.weight'"):
        pt.parameterize(mlp.build(width=8), Other())


def test_error_finite_dimension_differs():
    with pytest.raises(pt.PlanError, match=r"'wte.weight'.*finite.*\(128, 32\).*\(256, 64\)"):
        pt.parameterize(_gpt(width=64), gpt.build(width=32, vocab=128, device="meta"))


def test_error_output_vocab_differs():
    with pytest.raises(pt.PlanError, match=r"'out.weight'.*base \(4, 8\), target \(6, 16\)"):
        class Net(nn.Module):
            def __init__(self, d, k):
                super().__init__()
                self.emb = nn.Embedding(4, d)
                self.out = nn.Linear(d, k)
        pt.parameterize(Net(16, 6), Net(8, 4))


def test_depth_from_a_stack_under_any_name_and_error_when_none_is_visible():
    """A run of numbered siblings whose length differs between target and base is the block stack, whatever its
    container (ModuleList, ModuleDict with numbered keys, numbered attributes); blocks whose names carry their
    number elsewhere are not a visible stack: the error asks for a pattern, which then works. These toy models
    have no readout (no forward at all): readout='none' says so."""
    class Deep(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.stack = nn.ModuleList(nn.Linear(8, 8) for _ in range(n))

    plan = pt.parameterize(Deep(4), Deep(2), readout="none")
    assert plan.tensors["stack.3.weight"].depth == 2 and plan.tensors["stack.3.weight"].block == "stack.3"

    class Keyed(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.stack = nn.ModuleDict({f"blk{i}": nn.Linear(8, 8) for i in range(n)})

    plan = pt.parameterize(Keyed(4), Keyed(2), readout="none")
    assert plan.tensors["stack.blk3.weight"].depth == 2 and plan.tensors["stack.blk3.weight"].block == "stack.blk3"

    class Attrs(nn.Module):
        def __init__(self, n):
            super().__init__()
            for i in range(n):
                setattr(self, f"layers_{i}", nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))

    plan = pt.parameterize(Attrs(4), Attrs(2), readout="none")
    assert plan.tensors["layers_3.1.weight"].depth == 2 and plan.tensors["layers_3.1.weight"].block == "layers_3"

    class Hidden(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.stack = nn.ModuleDict({f"blk_{i}_x": nn.Linear(8, 8) for i in range(n)})

    with pytest.raises(pt.PlanError, match=r"differ in depth .*only in block numbers.*block_pattern="):
        pt.parameterize(Hidden(4), Hidden(2), readout="none")
    plan = pt.parameterize(Hidden(4), Hidden(2), block_pattern=r"^stack\.blk_(\d+)_x\.", readout="none")
    assert plan.tensors["stack.blk_3_x.weight"].depth == 2


def test_error_tied_policy():
    with pytest.raises(pt.PlanError, match=r"'wte.weight' is used with different roles.*through 'lm_head.weight'.*roles="):
        pt.parameterize(_gpt(width=64, tied=True), gpt.build(width=32, tied=True, device="meta"), tied="error")


def test_error_unknown_names_list_valid_choices():
    t, b = mlp.build(width=16), mlp.build(width=8, device="meta")
    with pytest.raises(ValueError, match=r"unknown recipe 'mupp'.*completep.*Did you mean 'mup'"):
        pt.parameterize(t, b, recipe="mupp")
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'.*adam-atan2"):
        pt.parameterize(t, b, optimizer="adamx")
    with pytest.raises(ValueError, match=r"unknown weight-decay policy 'sqrt'.*sqrt-width"):
        pt.parameterize(t, b, weight_decay="sqrt")
    with pytest.raises(ValueError, match=r"unknown mode 'fold'.*folded"):
        pt.parameterize(t, b, mode="fold")


def test_error_non_positive_lr():
    plan = pt.parameterize(mlp.build(width=16), mlp.build(width=8, device="meta"))
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(pt.PlanError, match="lr must be a finite number > 0"):
            plan.optimizer(lr=bad)


def test_error_shape_rank_differs():
    class A(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(shape))

    with pytest.raises(pt.PlanError, match=r"'w' has shape \(4, 4\) in the target but \(4,\) in the base"):
        pt.parameterize(A((4, 4)), A((4,)))


def test_error_attention_head_dim_without_route():
    target = _gpt(width=64, n_heads=2, head_dim=None, scale_attr=False)
    base = gpt.build(width=32, n_heads=2, head_dim=None, scale_attr=False, device="meta")
    plan = pt.parameterize(target, base, recipe="mup")  # q_proj route: folded
    assert plan.tensors["blocks.0.attn.q_proj.weight"].attn_factor == pytest.approx(2 ** -0.5)

    class Fused(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.num_heads, self.embed_dim = 2, d
            self.qkv = nn.Linear(d, 3 * d)

    class Net(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.emb = nn.Embedding(4, d)
            self.attn = Fused(d)
            self.out = nn.Linear(d, 4)

    with pytest.raises(pt.PlanError, match=r"attention module 'attn' \(\w+\) changes head dim 8 -> 16.*ScaleAttribute\('my_scale'\)"):
        pt.parameterize(Net(32), Net(16), recipe="mup")
    pt.parameterize(Net(32), Net(16), recipe="sp")  # SP keeps 1/sqrt(d_head): nothing to do


def test_error_depth_recipe_without_branch_outputs():
    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.a = nn.Linear(d, d)

    class Net(nn.Module):
        def __init__(self, d, n):
            super().__init__()
            self.emb = nn.Embedding(4, d)
            self.blocks = nn.ModuleList(Block(d) for _ in range(n))
            self.out = nn.Linear(d, 4)

    with pytest.raises(pt.PlanError, match=r"no branch-output tensor was found in block\(s\) blocks.0.*branch_outputs="):
        pt.parameterize(Net(16, 4), Net(8, 2), recipe="completep")
    plan = pt.parameterize(Net(16, 4), Net(8, 2), recipe="completep", branch_outputs=["*.a.*"])
    assert plan.tensors["blocks.3.a.weight"].branch_output


def test_apply_twice_changes_nothing_and_another_plan_is_refused(tmp_path):
    """A second apply of the same plan (or of its saved copy) must not stack multipliers, rescale the init again
    or scale the attention logits twice; a different plan on an already parameterized model is an error."""
    from torch.nn.utils import parametrize

    target = _gpt(width=64, depth=2, n_heads=2, head_dim=None)  # head dim grows: the attention scale changes
    base = gpt.build(width=32, depth=2, n_heads=2, head_dim=None, device="meta")
    plan = pt.parameterize(target, base, recipe="mup", mode="explicit")
    x = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        out = target(x)
    state = {k: v.clone() for k, v in target.state_dict().items()}
    n_mult = sum(len(m.parametrizations[a]) for m in target.modules() if parametrize.is_parametrized(m)
                 for a in m.parametrizations)
    assert n_mult > 0
    plan.save(tmp_path / "plan.json")
    for again in (plan, pt.Plan.load(tmp_path / "plan.json")):
        again.apply(target)
        with torch.no_grad():
            assert torch.equal(target(x), out)
        assert all(torch.equal(v, state[k]) for k, v in target.state_dict().items())
        assert sum(len(m.parametrizations[a]) for m in target.modules() if parametrize.is_parametrized(m)
                   for a in m.parametrizations) == n_mult
    other = pt.parameterize(_gpt(width=64, depth=2, n_heads=2, head_dim=None), base, recipe="ntk", mode="explicit")
    with pytest.raises(pt.PlanError, match="already parameterized by another plan"):
        other.apply(target)


class _ScaledAttn(nn.Module):
    """Attention with its own scale attribute name and no q_proj: only a user adapter can reach it."""

    def __init__(self, width, head_dim):
        super().__init__()
        self.n_heads, self.head_dim = width // head_dim, head_dim
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.my_scale = head_dim ** -0.5

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.my_scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, w))


class _AttnNet(nn.Module):
    """Embedding, one residual attention module (``_ScaledAttn`` unless given, stored as ``name``), readout."""

    def __init__(self, width, head_dim, vocab=32, attn_cls=None, name="attn"):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.name = name
        setattr(self, name, (attn_cls or _ScaledAttn)(width, head_dim))
        self.out = nn.Linear(width, vocab)

    def forward(self, x):
        h = self.emb(x)
        return self.out(h + getattr(self, self.name)(h))


class _MyScale(ScaleAttribute):
    name = "my-scale"


def test_user_attention_adapters_are_installed_and_survive_save_load(tmp_path):
    """A user's ScaleAttribute("my_scale") (and a subclass with its own name) set `my_scale` with the muP
    factor (16/64)^1 x base scale, and nothing else; a saved plan applied to a fresh model does the same."""
    base = _AttnNet(16, 4)
    for adapter in (ScaleAttribute("my_scale"), _MyScale("my_scale")):
        torch.manual_seed(0)
        target = _AttnNet(64, 16)
        plan = pt.parameterize(target, base, recipe="mup", attention=[adapter])
        # muP's 1/d_head: the target's own 16^-0.5 scale becomes 16^-1 ... written as base value x (d/d0)^-1 with
        # the base value measured at the base's head dim 4, i.e. 4^-0.5 x 4/16
        expected = 4 ** -0.5 * (4 / 16)
        assert target.attn.my_scale == pytest.approx(expected)
        assert not hasattr(target.attn, "attn_scale")
        plan.save(tmp_path / "plan.json")
        fresh = _AttnNet(64, 16)
        # a built-in is rebuilt by name; a user's adapter is passed again (a plan file never imports code)
        pt.Plan.load(tmp_path / "plan.json", attention=[] if type(adapter) is ScaleAttribute else [adapter]).apply(fresh)
        assert fresh.attn.my_scale == pytest.approx(expected) and not hasattr(fresh.attn, "attn_scale")

    class Local(ScaleAttribute):  # a user adapter not passed when loading: the plan says how to pass it
        name = "local"

    plan = pt.parameterize(_AttnNet(64, 16), base, recipe="mup", attention=[Local("my_scale")])
    plan.save(tmp_path / "local.json")
    with pytest.raises(pt.PlanError, match=r"attention=\[Local"):
        pt.Plan.load(tmp_path / "local.json").apply(_AttnNet(64, 16))


class _BertLikeSelfAttention(nn.Module):
    """BERT's naming: `attention_head_size`, `num_attention_heads`, `all_head_size`, separate `query`."""

    def __init__(self, width, head_size):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = width // head_size, head_size
        self.all_head_size = width
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = (z.view(b, t, -1, self.attention_head_size).transpose(1, 2)
                   for z in (self.query(x), self.key(x), self.value(x)))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).reshape(b, t, w)


def test_bert_style_head_size_gets_the_attention_rule():
    """The head size grows 4 -> 16: muP's 1/d_head needs the logits x(4/16)^(1/2) on top of SDPA's own
    1/sqrt(d); it goes into the query projection (init and LR), and the plan says so."""
    def net(width, head_size):
        return _AttnNet(width, head_size, attn_cls=_BertLikeSelfAttention, name="attention")

    plan = pt.parameterize(net(64, 16), net(16, 4), recipe="mup")
    (site,) = plan.attention
    assert site["module"] == "attention" and site["adapter"] == "query-projection"
    assert site["site"]["head_dim"] == 16 and site["site"]["base_head_dim"] == 4
    assert site["factor"] == pytest.approx((16 / 4) ** -0.5)
    assert any("attention 'attention': head dim 4 -> 16" in n for n in plan.notes)

"""Named multipliers: defined at the base, carried by the recipe, equal in folded and explicit form."""

import math

import pytest
import torch

import proxytune as pt
from proxytune.models import gpt, mlp
from proxytune.rules.recipes import OPTIMIZERS
from proxytune.sweep.config import apply_point, field_name
from proxytune.train import TrainConfig, train, train_batched

NAMED = pt.Multipliers(lr={"embedding": 4.0, "readout": 0.5, "vector": 2.0}, init={"readout": 3.0, "hidden": 0.5},
                       output=2.0, embedding=10.0, attention=1.5)
LR, WD, EPS = 3e-3, 0.1, 1e-6


def _gpt(width=32, depth=2, seed=0, **kw):
    torch.manual_seed(seed)
    return gpt.build(width=width, depth=depth, seq_len=16, **kw)


def _logits(model, seed=5):
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx).double()


def test_dict_round_trip_and_bad_values():
    assert pt.Multipliers.from_dict(NAMED.to_dict()) == NAMED
    assert pt.Multipliers().is_default and not NAMED.is_default
    with pytest.raises(ValueError, match="unknown role 'readuot'"):
        pt.Multipliers(lr={"readuot": 2.0})
    with pytest.raises(ValueError, match="output multiplier must be"):
        pt.Multipliers(output=0.0)
    with pytest.raises(ValueError, match="unknown multiplier key"):
        pt.Multipliers.from_dict({"outptu": 2.0})
    with pytest.raises(pt.PlanError, match="multipliers: "):
        pt.parameterize(_gpt(), gpt.build(width=32, depth=2, seq_len=16, device="meta"), multipliers={"x": 1})


@pytest.mark.parametrize("mode", ["folded", "explicit"])
def test_base_shape_applies_exactly_the_named_multipliers(mode):
    """At the base shape the plan is the model's own init and the base HPs, changed by the named constants only."""
    target = _gpt(seed=1)
    own = {n: p.detach().clone() for n, p in target.named_parameters()}
    plan = pt.parameterize(target, gpt.build(width=32, depth=2, seq_len=16, device="meta"), recipe="mup",
                           mode=mode, multipliers=NAMED)
    fwd = {"embedding": NAMED.embedding, "readout": NAMED.output}
    for name, tp in plan.tensors.items():
        query = name.endswith("q_proj.weight")
        forward = fwd.get(tp.role, 1.0) * (NAMED.attention if query else 1.0)
        init = NAMED.init_for(tp.role) * (forward if mode == "folded" else 1.0)
        p = dict(target.named_parameters())[name if mode == "folded" or tp.scale(mode).multiplier == 1
                                            else name.replace(".weight", ".parametrizations.weight.original")]
        assert torch.allclose(p, own[name] * init, rtol=1e-12, atol=0), name
        sc = tp.scale(mode)
        assert sc.multiplier == pytest.approx(1.0 if mode == "folded" else forward), name
        # AdamW: lr follows the forward multiplier when folded (abc symmetry, power 1)
        assert sc.lr == pytest.approx(NAMED.lr_for(tp.role) * (forward if mode == "folded" else 1.0)), name
    assert "named multipliers" in plan.explain() and "output x2" in plan.explain()


def test_forward_multipliers_mean_what_they_say():
    """output scales the logits, embedding the input embeddings, attention the attention logits."""
    base = gpt.build(width=32, depth=2, seq_len=16, device="meta")
    plain = _gpt(seed=3)
    ref = _logits(plain)
    for mode in ("folded", "explicit"):
        m = _gpt(seed=3)
        pt.parameterize(m, base, mode=mode, multipliers={"output": 2.5})
        assert torch.allclose(_logits(m), 2.5 * ref, rtol=1e-5, atol=1e-6)
    # embedding x10: the same as scaling the embedding tables by hand
    hand = _gpt(seed=3)
    with torch.no_grad():
        hand.wte.weight.mul_(10.0)
        hand.wpe.weight.mul_(10.0)
    m = _gpt(seed=3)
    pt.parameterize(m, base, multipliers={"embedding": 10.0})
    assert torch.allclose(_logits(m), _logits(hand), rtol=1e-5, atol=1e-6)
    # attention x1.5: the same as setting the attention scale by hand; folded into q_proj
    hand = _gpt(seed=3)
    for block in hand.blocks:
        block.attn.attn_scale = 1.5 / math.sqrt(block.attn.head_dim)
    m = _gpt(seed=3)
    plan = pt.parameterize(m, base, multipliers={"attention": 1.5})
    assert torch.allclose(_logits(m), _logits(hand), rtol=1e-5, atol=1e-6)
    assert plan.tensors["blocks.0.attn.q_proj.weight"].folded.init == pytest.approx(1.5)
    assert all(r["factor"] == 1.0 for r in plan.attention)  # nothing set on the module: trials still batch


def test_attention_multiplier_needs_attention():
    target = mlp.build(width=32, depth=2)
    with pytest.raises(pt.PlanError, match="attention multiplier 2: no attention module"):
        pt.parameterize(target, mlp.build(width=32, depth=2, device="meta"), multipliers={"attention": 2.0})


@pytest.mark.parametrize("mode", ["folded", "explicit"])
def test_tied_embedding_readout_gets_both_multipliers(mode):
    base = gpt.build(width=32, depth=2, seq_len=16, tied=True, device="meta")
    plain = _gpt(seed=4, tied=True)
    m = _gpt(seed=4, tied=True)
    pt.parameterize(m, base, mode=mode, multipliers={"output": 2.0, "embedding": 5.0})
    hand = _gpt(seed=4, tied=True)
    hand.wpe.weight.data.mul_(5.0)
    # tied: the readout use must see the plain table times the output multiplier, the input use x5
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = hand.wte(x) * 5.0 + hand.wpe(torch.arange(16))
        for block in hand.blocks:
            h = block(h)
        want = 2.0 * torch.nn.functional.linear(hand.ln_f(h), plain.wte.weight)
        got = m(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", ["mup", "sp-perlayer", "completep"])
def test_recipe_carries_the_constants_to_the_target(recipe):
    """At a wider and deeper target, each tensor's setting is the recipe's value times the named constant."""
    base = gpt.build(width=32, depth=2, seq_len=16)
    plain = pt.parameterize(_gpt(width=128, depth=4), base, recipe=recipe)
    named = pt.parameterize(_gpt(width=128, depth=4), base, recipe=recipe, multipliers=NAMED)
    fwd = {"embedding": NAMED.embedding, "readout": NAMED.output}
    for name, tp in named.tensors.items():
        ref = plain.tensors[name]
        forward = fwd.get(tp.role, 1.0) * (NAMED.attention if name.endswith(("q_proj.weight",)) else 1.0)
        assert tp.explicit.multiplier == pytest.approx(ref.explicit.multiplier * forward), name
        assert tp.folded.init == pytest.approx(ref.folded.init * forward * NAMED.init_for(tp.role)), name
        assert tp.folded.lr == pytest.approx(ref.folded.lr * forward * NAMED.lr_for(tp.role)), name
        assert tp.folded.eps == pytest.approx(ref.folded.eps), name  # eps follows the folded gradient: unchanged
    g_named = {g["name"]: g for g in named.param_groups(LR, WD, eps=EPS)}
    g_plain = {g["name"]: g for g in plain.param_groups(LR, WD, eps=EPS)}
    assert g_named["wte.weight"]["lr"] == pytest.approx(g_plain["wte.weight"]["lr"] * 40.0)  # lr x4, embedding x10
    assert g_named["lm_head.weight"]["lr"] == pytest.approx(g_plain["lm_head.weight"]["lr"] * 0.5 * 2.0)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_folded_equals_explicit_with_named_multipliers(optimizer):
    """The fold-equivalence test of test_fold.py, with every named multiplier set (float64, 12 steps)."""
    options = {"sgd": dict(lr=0.02, momentum=0.9), "adam": dict(lr=1e-3, eps=1e-4),
               "adamw": dict(lr=1e-3, eps=1e-4), "adam-atan2": dict(lr=1e-3), "adafactor": dict(lr=1e-2),
               "muon": dict(lr=1e-3, muon_lr=1e-2, eps=1e-4), "soap": dict(lr=1e-3, eps=1e-4),
               "shampoo": dict(lr=1e-3, eps=1e-4), "dion": dict(lr=1e-3, muon_lr=1e-2, eps=1e-4)}[optimizer]

    def run(mode):
        torch.manual_seed(0)
        model = gpt.build(width=64, depth=4, n_heads=2, head_dim=None, seq_len=16).double()
        base = gpt.build(width=32, depth=2, n_heads=2, head_dim=None, seq_len=16, device="meta")
        plan = pt.parameterize(model, base, recipe="completep", optimizer=optimizer, mode=mode, multipliers=NAMED)
        opt = plan.optimizer(weight_decay=0.05, **options)
        g = torch.Generator().manual_seed(9)
        data = [torch.randint(0, 256, (4, 16), generator=g) for _ in range(2)]
        losses = []
        for step in range(12):
            idx = data[step % 2]
            logits = model(idx[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), idx[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    folded, explicit = run("folded"), run("explicit")
    # SOAP's eigenbasis of the statistics' null space (rank-deficient G G^T) is set by rounding, and Adam's
    # per-entry step there depends on it: a 1e-9 change of the gradient's scale moves this loss by 3e-4 after 12
    # steps. Folded and explicit agree within 5e-3; a wrong LR or eps fold is off by 0.1 to 1.
    assert folded == pytest.approx(explicit, rel=2e-2 if optimizer == "soap" else 1e-6, abs=0)
    assert folded[-2] < folded[0]


def test_train_config_multipliers_and_sweep_axes():
    cfg = TrainConfig(role_lr={"embedding": 4.0}, role_init={"readout": 0.0}, init_scale=2.0, output_mult=3.0,
                      attn_mult=0.5)
    m = cfg.multipliers()
    assert m.lr == {"embedding": 4.0}
    assert m.init == {"embedding": 2.0, "hidden": 2.0, "readout": 0.0}
    assert (m.output, m.embedding, m.attention) == (3.0, 1.0, 0.5)
    for axis, field in (("output_mult", "output_mult"), ("log2_attn_mult", "attn_mult"),
                        ("log2_role_lr.embedding", "role_lr"), ("role_init.readout", "role_init")):
        assert field_name(axis) == field
    point = apply_point({"role_lr": {"readout": 0.5}}, {"log2_role_lr.embedding": 2, "log2_output_mult": -1})
    assert point == {"role_lr": {"readout": 0.5, "embedding": 4.0}, "output_mult": 0.5}
    with pytest.raises(ValueError, match="did you mean 'log2_attn_mult'"):
        field_name("log2_atn_mult")
    with pytest.raises(ValueError):
        TrainConfig(output_mult=0)


def test_batched_members_differ_in_named_multipliers():
    """Members that differ only in named multipliers train together and match train() one by one."""
    common = dict(model="gpt", width=32, depth=1, base_width=16, base_depth=1, steps=6, batch_size=4, seq_len=16,
                  eval_every=6, eval_batches=1, precision="fp64", lr=3e-3, model_options={"head_dim": 8})
    cfgs = [TrainConfig(**common), TrainConfig(**common, output_mult=2.0, role_lr={"embedding": 4.0}),
            TrainConfig(**common, embedding_mult=3.0, attn_mult=0.5, role_init={"readout": 0.0})]
    batched = train_batched(cfgs)
    for cfg, res in zip(cfgs, batched):
        single = train(cfg)
        assert res.train_losses == pytest.approx(single.train_losses, rel=1e-9)
    assert len({round(r.final_val_loss, 9) for r in batched}) == 3  # the multipliers really differ


def test_forward_multiplier_equals_init_and_lr_constants_under_adam():
    """The redundancy the docs state: output_mult a trains like readout init x a with readout LR x a (AdamW, no
    clipping), and embedding_mult likewise for the embeddings."""
    common = dict(model="gpt", width=32, depth=1, base_width=16, base_depth=1, steps=8, batch_size=4, seq_len=16,
                  eval_every=8, eval_batches=1, precision="fp64", lr=1e-2, grad_clip=None,
                  model_options={"head_dim": 8})
    a = train(TrainConfig(**common, output_mult=3.0, embedding_mult=0.5))
    b = train(TrainConfig(**common, role_init={"readout": 3.0, "embedding": 0.5},
                          role_lr={"readout": 3.0, "embedding": 0.5}))
    assert a.train_losses == pytest.approx(b.train_losses, rel=1e-9)
    c = train(TrainConfig(**common))
    assert abs(a.train_losses[-1] - c.train_losses[-1]) > 1e-3  # the multipliers do change training


def test_explain_command_takes_named_multipliers():
    from typer.testing import CliRunner

    from proxytune.cli import app

    assert pt.Multipliers.from_items(["lr.readout=0.5", "role_init.readout=0", "attn_mult=2"]) == pt.Multipliers(
        lr={"readout": 0.5}, init={"readout": 0.0}, attention=2.0)
    args = ["explain", "--width", "64", "--depth", "2", "--base-width", "32", "--base-depth", "2"]
    res = CliRunner().invoke(app, [*args, "--mult", "init.readout=0", "--mult", "output=2", "--lr", "0.01"])
    assert res.exit_code == 0, res.output
    assert "named multipliers" in res.output and "init[readout] x0, output x2" in res.output
    readout = next(line for line in res.output.splitlines() if line.startswith("lm_head.weight"))
    assert readout.split()[6] == "0"  # the init std column: a zero readout
    res = CliRunner().invoke(app, [*args, "--mult", "outptu=2"])
    assert res.exit_code == 2 and "unknown multiplier 'outptu'" in res.output

"""The rules tables: Everett et al.'s LR exponents re-derived, and the abc symmetry."""

from fractions import Fraction

import pytest

from proxytune.rules.everett import LAYERS, LR_EXPONENTS, is_stable, stability_margins
from proxytune.rules.recipes import (
    OPTIMIZERS, RECIPES, Scale, TensorContext, fold, tensor_scales, unfold,
)
from scale_helpers import assert_power

HALF = Fraction(1, 2)


@pytest.mark.parametrize("key", sorted(LR_EXPONENTS))
def test_everett_table_entry_is_maximal_stable(key):
    family, param, alignment = key
    c = LR_EXPONENTS[key]
    margins = stability_margins(family, param, alignment, c)
    assert all(v >= 0 for v in margins.values()), margins
    for layer in LAYERS:
        # A larger LR (exponent lowered by 1/2) must break a constraint.
        bigger = dict(c)
        bigger[layer] = c[layer] - HALF
        assert not is_stable(family, param, alignment, bigger), (key, layer)


def test_a_wrong_entry_is_caught():
    c = dict(LR_EXPONENTS[("adam", "mup", "full")])
    c["hidden"] = HALF  # SP-like hidden LR under muP: too large at width
    assert not is_stable("adam", "mup", "full", c)


def test_fold_unfold_round_trip():
    e = Scale(multiplier=0.25, init=2.0, lr=0.5, wd=3.0, eps=0.1)
    for p in (0, 1, 2):
        f = fold(e, p)
        assert f.multiplier == 1.0
        back = unfold(f, 0.25, p)
        for k in ("init", "lr", "wd", "eps"):
            assert getattr(back, k) == pytest.approx(getattr(e, k))
        assert f.lr * f.wd == pytest.approx(e.lr * e.wd)  # lr-coupled decay fraction kept


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("role", ["embedding", "hidden", "readout", "vector"])
def test_abc_symmetry_sp_equals_ntk_and_mup_equals_mf(opt, role):
    """Everett et al.: SP = NTK and muP = MF once multipliers are folded."""
    spec = OPTIMIZERS[opt]
    ctx = TensorContext(role=role, width=8.0, muon_matrix=(opt == "muon" and role == "hidden"))
    for a, b in (("sp-perlayer", "ntk"), ("mup", "mf")):
        _, fa = tensor_scales(RECIPES[a], spec, ctx)
        _, fb = tensor_scales(RECIPES[b], spec, ctx)
        for k in ("multiplier", "init", "lr", "wd", "eps"):
            assert getattr(fa, k) == pytest.approx(getattr(fb, k)), (a, b, k)


def test_mup_adam_table_in_folded_form():
    """SCIENCE.md's muP table (weights carry their scale), m = 4."""
    adam = OPTIMIZERS["adam"]
    mup = RECIPES["mup"]
    f = {r: tensor_scales(mup, adam, TensorContext(role=r, width=4.0))[1] for r in
         ("embedding", "hidden", "readout", "vector")}
    assert (f["embedding"].init, f["embedding"].lr, f["embedding"].eps) == pytest.approx((1, 1, 0.25))
    assert (f["hidden"].init, f["hidden"].lr, f["hidden"].eps) == pytest.approx((0.5, 0.25, 0.25))
    assert (f["readout"].init, f["readout"].lr, f["readout"].eps) == pytest.approx((0.25, 0.25, 1))
    assert (f["vector"].init, f["vector"].lr) == pytest.approx((1, 1))
    sgd = {r: tensor_scales(mup, OPTIMIZERS["sgd"], TensorContext(role=r, width=4.0))[1] for r in
           ("embedding", "hidden", "readout", "vector")}
    assert [sgd[r].lr for r in ("embedding", "hidden", "readout", "vector")] == pytest.approx([4, 1, 0.25, 4])


def test_depth_rules_completep_and_depth_mup():
    adam = OPTIMIZERS["adamw"]
    for name, alpha in (("depth-mup", 0.5), ("completep", 1.0)):
        rec = RECIPES[name]
        inner = TensorContext(role="hidden", width=1.0, depth=4.0, in_block=True)
        out = TensorContext(role="hidden", width=1.0, depth=4.0, in_block=True, branch_output=True)
        e_in, f_in = tensor_scales(rec, adam, inner)
        e_out, f_out = tensor_scales(rec, adam, out)
        # depth ratio L = 4: each setting is L to the rule's exponent
        assert_power(f_in.lr, 4.0, alpha - 1, what=f"{name} in-block lr")
        assert_power(f_in.eps, 4.0, -alpha, what=f"{name} in-block eps")
        assert_power(e_out.multiplier, 4.0, -alpha, what=f"{name} branch multiplier")
        assert_power(f_out.init, 4.0, -alpha, what=f"{name} branch init")  # branch multiplier folded into the init
        assert_power(f_out.lr, 4.0, (alpha - 1) - alpha, what=f"{name} branch lr (in-block lr x branch multiplier)")
        sgd = tensor_scales(rec, OPTIMIZERS["sgd"], inner)[1]
        assert_power(sgd.lr, 4.0, 2 * alpha - 1, what=f"{name} in-block SGD lr")

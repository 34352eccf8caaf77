"""coord_check: forward-hook coordinate check across width and depth."""

import math

import pytest

from proxytune.diagnose import CoordCheck, coord_check
from scale_helpers import assert_exponent, assert_exponent_outside, loglog_slope, rms

WIDTHS = [32, 64, 128, 256]
DEPTHS = [2, 4, 8, 16]
SMALL = dict(seq_len=16, batch_size=4, steps=3)


@pytest.fixture(scope="module")
def width_mup():
    return coord_check("gpt", widths=WIDTHS, depth=1, recipe="mup", seeds=2, **SMALL)


@pytest.fixture(scope="module")
def width_sp():
    return coord_check("gpt", widths=WIDTHS, depth=1, recipe="sp", seeds=1, **SMALL)


def _slopes(cc: CoordCheck) -> dict[str, float]:
    return {m: s["slope_delta"] for m, s in cc.last_step_slopes().items()}


def test_width_mup_passes(width_mup):
    assert width_mup.passed, width_mup.table()
    assert width_mup.line.startswith("PASS")
    assert not width_mup.blowups and not width_mup.vanishing
    # measured within 0.26 at lr 1e-3 (2 seeds); the shared tolerance is 0.4
    for module, slope in _slopes(width_mup).items():
        assert_exponent(slope, 0.0, 0.3, what=f"{module} update RMS vs width under muP\n{width_mup.table()}")


def test_width_sp_blows_up_readout_and_hidden(width_sp):
    assert not width_sp.passed
    assert width_sp.line.startswith("FAIL") and "blow up with width" in width_sp.line
    s = _slopes(width_sp)
    assert "lm_head" in width_sp.blowups and s["lm_head"] > 0.7, width_sp.table()
    # at the check's lr 1e-3 the hidden layers measure +0.54 .. +0.74 (the shared tolerance is 0.4)
    for hidden in ("blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.0"):
        assert hidden in width_sp.blowups and s[hidden] > 0.5, width_sp.table()


def test_depth_completep_passes_mup_fails():
    # lr=3e-3: at lr=1e-2 the depth-2 model (the base) is already in a nonlinear,
    # non-monotone regime after 3 Adam steps for every recipe, which skews the fit.
    common = dict(depths=DEPTHS, width=32, seeds=1, lr=3e-3, **SMALL)
    cp = coord_check("gpt", recipe="completep", **common)
    mup = coord_check("gpt", recipe="mup", **common)
    assert cp.passed, cp.table()
    assert not mup.passed and "blow up with depth" in mup.line, mup.table()
    s_cp, s_mup = _slopes(cp), _slopes(mup)
    # the residual stream after the last block: flat under CompleteP, ~linear in depth under muP
    assert_exponent(s_cp["blocks.-1"], 0.0, 0.25, what="stream update vs depth under CompleteP")
    assert s_mup["blocks.-1"] > 0.7
    assert "blocks.-1" in mup.blowups and "blocks.*" in mup.blowups
    # branch outputs inside the blocks shrink as 1/depth under CompleteP: listed, not judged
    inner = cp.last_step_slopes()["blocks.*.mlp.proj"]
    assert not inner["judged"] and inner["verdict"] == "not judged" and inner["slope_delta"] < -0.6


def test_records_tidy_and_complete(width_mup, tmp_path):
    recs = width_mup.to_records()
    keys = {"axis", "size", "seed", "step", "module", "rms_out", "rms_delta"}
    assert all(set(r) == keys for r in recs)
    modules = {r["module"] for r in recs}
    assert {"wte", "wpe", "blocks.0", "blocks.0.attn.q_proj", "blocks.0.mlp.proj", "ln_f", "lm_head"} <= modules
    assert len(recs) == len(WIDTHS) * 2 * (SMALL["steps"] + 1) * len(modules)
    seen = {(r["size"], r["seed"], r["step"], r["module"]) for r in recs}
    assert len(seen) == len(recs)
    for r in recs:
        assert r["axis"] == "width" and math.isfinite(r["rms_out"]) and r["rms_out"] > 0
        assert math.isnan(r["rms_delta"]) if r["step"] == 0 else r["rms_delta"] > 0
    assert "lm_head" in width_mup.table() and "PASS" in width_mup.table()
    png = tmp_path / "coord.png"
    width_mup.figure(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlp_and_module_filter():
    cc = coord_check("mlp", widths=[32, 128], depth=2, recipe="mup", seeds=1, steps=2, batch_size=8,
                     modules=["layers.*", "out"])
    assert {r["module"] for r in cc.records} == {"layers.0", "layers.1", "out"}
    assert cc.passed, cc.table()


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=[32, 64], depths=[2, 4]), "exactly one of widths"),
    (dict(), "exactly one of widths"),
    (dict(widths=[32, 64], recipe="mupp"), "unknown recipe"),
    (dict(widths=[32]), "at least two"),
    (dict(widths=[32, 64], lr=0), "lr must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        coord_check("gpt", **kwargs)


# ------------------------------------------------- depth rules, measured: alpha from what training does
def _depth_exponents(recipe: str, optimizer: str = "adamw", lr: float = 3e-3, alpha: float | None = None,
                     depths: tuple[int, ...] = (2, 4, 8, 16, 32), steps: int = 5) -> tuple[float, float]:
    """Two exponents over depth, measured on the reference GPT (width 32, base depth 2) trained ``steps`` steps
    on one batch: the slope of log(rms of the branch outputs at init) and of log(relative update
    ``|W_t - W_0| / |W_0|`` of the in-block hidden matrices), against log(depth). ``alpha`` replaces the recipe's
    branch exponent (a mutation, to show the measurement notices it)."""
    import dataclasses

    import numpy as np
    import torch
    import torch.nn.functional as F

    import proxytune as pt
    import proxytune.rules.recipes as rules
    from proxytune.models import gpt

    original = rules.RECIPES[recipe]
    if alpha is not None:
        rules.RECIPES[recipe] = dataclasses.replace(original, depth_alpha=alpha)
    branch, update = [], []
    try:
        for depth in depths:
            torch.manual_seed(0)
            opts = dict(width=32, head_dim=8, vocab=256, seq_len=16)
            model = gpt.build(depth=depth, **opts)
            plan = pt.parameterize(model, gpt.build(depth=depths[0], **opts), recipe=recipe, optimizer=optimizer)
            idx = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(1))
            seen: list[float] = []
            hooks = [b.mlp.proj.register_forward_hook(lambda m, i, o: seen.append(rms(o))) for b in model.blocks]
            model(idx[:, :-1])
            for h in hooks:
                h.remove()
            hidden = {n: p.detach().clone() for n, p in model.named_parameters()
                      if n.startswith("blocks.") and n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                                 "fc.weight"))}
            opt = plan.optimizer(lr=lr)
            for _ in range(steps):
                logits = model(idx[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            params = dict(model.named_parameters())
            branch.append(float(np.mean(seen)))
            update.append(float(np.mean([float((params[n].detach() - w0).norm() / w0.norm())
                                         for n, w0 in hidden.items()])))
    finally:
        rules.RECIPES[recipe] = original
    return loglog_slope(depths, branch), loglog_slope(depths, update)


@pytest.mark.parametrize("recipe, optimizer, lr, alpha", [
    ("completep", "adamw", 3e-3, 1.0), ("depth-mup", "adamw", 3e-3, 0.5), ("completep", "sgd", 0.05, 1.0)])
def test_depth_alpha_is_measured(recipe, optimizer, lr, alpha):
    """Over depths 2..32 the branch outputs at init scale as ``L^-alpha`` and the in-block matrices move by
    ``L^(alpha-1)`` relative to their init (CompleteP: depth-independent, "complete" feature learning; depth-muP:
    lazier with depth), for Adam's sign-like steps and for SGD (whose in-block LR rule is ``L^(2 alpha - 1)``).
    Measured within 0.1 of the exponents; the mutation test below shows a wrong alpha lands far outside."""
    branch, update = _depth_exponents(recipe, optimizer, lr)
    assert_exponent(branch, -alpha, 0.1, what=f"{recipe}/{optimizer} branch output at init vs depth")
    assert_exponent(update, alpha - 1, 0.1, what=f"{recipe}/{optimizer} relative in-block update vs depth")


@pytest.mark.parametrize("alpha", [0.5, 0.75])
def test_a_wrong_completep_alpha_fails_the_measurement(alpha):
    """CompleteP with its branch exponent mutated (1 -> 0.5, 1 -> 0.75): both measured exponents leave the 0.1
    band around CompleteP's (-1 and 0), where the stream-update coordinate check cannot tell
    (each block's share of the stream's update is 1/L for every alpha)."""
    branch, update = _depth_exponents("completep", alpha=alpha)
    # 0.1 outside CompleteP's band, at the least
    assert_exponent_outside(branch, -1.0, 0.2, what=f"branch output vs depth, alpha mutated to {alpha}")
    assert_exponent_outside(update, 0.0, 0.2, what=f"relative in-block update vs depth, alpha mutated to {alpha}")
    assert_exponent(branch, -alpha, 0.1, what=f"branch output vs depth, alpha mutated to {alpha}")
    assert_exponent(update, alpha - 1, 0.1, what=f"relative in-block update vs depth, alpha mutated to {alpha}")

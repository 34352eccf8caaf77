"""Spectral, alignment and Adam-eps diagnostics on small GPT proxies."""


import pytest
import torch

from proxytune.diagnose.alignment import alignment_check, log_alignment
from proxytune.diagnose.eps import eps_check
from proxytune.diagnose.spectral import loglog_slope, spectral_check, train_proxy

WIDTHS = (32, 64, 128, 256)


# ------------------------------------------------------------------ spectral
@pytest.fixture(scope="module")
def spectral_mup():
    return spectral_check(WIDTHS, recipe="mup", optimizer="adam", lr=1e-2, steps=5)


@pytest.fixture(scope="module")
def spectral_sp():
    return spectral_check(WIDTHS, recipe="sp", optimizer="adam", lr=1e-2, steps=5)


def test_loglog_slope():
    assert loglog_slope([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert loglog_slope([1, 2, 4], [5, 5, 5]) == pytest.approx(0.0, abs=1e-12)


def test_train_proxy_returns_init_and_moves_weights():
    model, plan, init, _opt = train_proxy("gpt", 32, 1, 32, None, "mup", "adam", 1e-2, 2, 0)
    params = plan.parameters(model)
    assert set(init) == set(plan.tensors)
    assert all(params[n].data_ptr() != init[n].data_ptr() for n in init)
    assert (params["blocks.0.mlp.fc.weight"] - init["blocks.0.mlp.fc.weight"]).abs().max() > 0
    # deterministic
    model2, plan2, _, _ = train_proxy("gpt", 32, 1, 32, None, "mup", "adam", 1e-2, 2, 0)
    assert torch.equal(params["lm_head.weight"], plan2.parameters(model2)["lm_head.weight"])


def test_spectral_mup_passes(spectral_mup):
    r = spectral_mup
    assert r.passed, r.table()
    assert "passed" in r.line
    names = {s["tensor"] for s in r.slopes}
    assert {"blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "lm_head.weight", "wte.weight"} <= names
    assert all(abs(s["slope_dW"]) < 0.2 for s in r.slopes), r.table()
    # fans come from the plan: fc maps width -> 4 width, proj the reverse
    fc = next(x for x in r.records if x["tensor"] == "blocks.0.mlp.fc.weight" and x["width"] == 64)
    assert (fc["fan_in"], fc["fan_out"]) == (64, 256)
    assert fc["dW_norm"] == pytest.approx(fc["dW_norm_raw"] / 2.0)
    assert len(r.records) == len(WIDTHS) * len(r.slopes)


def test_spectral_sp_fails_on_hidden_and_readout(spectral_sp):
    r = spectral_sp
    assert not r.passed
    by = {s["tensor"]: s for s in r.slopes}
    for name in ("blocks.0.attn.v_proj.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc.weight",
                 "blocks.0.mlp.proj.weight", "lm_head.weight"):
        assert by[name]["slope_dW"] > 0.6, r.table()  # ~ +1: update norm grows linearly with width
        assert name in r.failing and name in r.line
    # embeddings keep a constant LR under both recipes: not blamed
    assert by["wte.weight"]["ok"] and "wte.weight" not in r.failing
    assert "FAILED" in r.line and "mup" in r.line


def test_spectral_table_and_figure(spectral_mup, tmp_path):
    text = spectral_mup.table()
    assert "slope_dW" in text and "lm_head.weight" in text
    path = spectral_mup.figure(tmp_path / "spectral.png")
    assert path.exists() and path.stat().st_size > 1000


# ----------------------------------------------------------------- alignment
def test_log_alignment_reference_values():
    g = torch.Generator().manual_seed(0)
    n = 256
    z = torch.randn(64, n, generator=g, dtype=torch.float64)
    rnd = torch.randn(n, n, generator=g, dtype=torch.float64)
    assert log_alignment(rnd, z) == pytest.approx(0.5, abs=0.03)
    # fully aligned: dW = u v^T with v along the (single) input direction
    v = z[0]
    u = torch.randn(n, generator=g, dtype=torch.float64)
    assert log_alignment(torch.outer(u, v), z[:1]) == pytest.approx(1.0, abs=0.03)


@pytest.fixture(scope="module")
def alignment():
    return alignment_check(128, recipe="mup", optimizer="adam", lr=1e-2, steps=5)


def test_alignment_adam_gpt_hidden_layers_aligned(alignment):
    r = alignment
    hidden = [x for x in r.records if x["role"] == "hidden"]
    assert len(hidden) == 6  # q, k, v, attn.proj, mlp.fc, mlp.proj
    assert all(0.2 < x["A"] < 1.3 for x in r.records), r.table()
    # the null reference (random matrix of the same RMS) sits at ~1/2
    assert all(abs(x["A_random"] - 0.5) < 0.06 for x in r.records), r.table()
    # the real update is aligned with the inputs, layer by layer
    assert all(x["A"] > x["A_random"] + 0.1 for x in hidden), r.table()
    assert r.mean_hidden > 0.7
    assert r.mean_hidden == pytest.approx(sum(x["A"] for x in hidden) / len(hidden))
    assert r.column == "full" and r.passed
    assert "'full'" in r.line and "A" in r.table()


def test_alignment_mismatch_reported():
    r = alignment_check(64, steps=3, assumed="none")
    assert r.column == "full" and not r.passed
    assert "alignment='full'" in r.line


# ------------------------------------------------------------------------ eps
def test_eps_constant_large_eps_flagged():
    r = eps_check(WIDTHS, recipe="mup", optimizer="adam", eps=1e-4, eps_mode="constant", steps=3)
    assert r.applicable and not r.passed
    by = {s["tensor"]: s for s in r.summary}
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "blocks.0.attn.v_proj.weight"):
        assert name in r.flagged
        assert by[name]["frac_at_min"] < 0.1 < by[name]["frac_at_max"], r.table()  # grows with width
    assert all(x["eps"] == 1e-4 for x in r.records)
    assert "adam-atan2" in r.line and "blocks.0.mlp.fc.weight" in r.line


def test_eps_plan_scaled_eps_not_flagged():
    r = eps_check(WIDTHS, recipe="mup", optimizer="adam", eps=1e-8, steps=3)
    assert r.applicable and r.passed, r.table()
    assert max(s["frac_at_max"] for s in r.summary) < 0.01
    # the plan really scaled eps with width for hidden tensors (muP: eps x base/width)
    fc = {x["width"]: x["eps"] for x in r.records if x["tensor"] == "blocks.0.mlp.fc.weight"}
    assert fc[256] == pytest.approx(1e-8 * 32 / 256)


def test_eps_adam_atan2_not_applicable():
    r = eps_check((32, 64), recipe="mup", optimizer="adam-atan2", steps=2)
    assert not r.applicable and r.passed
    assert "no eps" in r.line and r.records == []
    assert "not applicable" in r.table()

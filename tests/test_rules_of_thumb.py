"""Empirical HP rules of thumb: numbers, scaling exponents, validation, registry.

Expected values are written independently of the module: literals computed by
hand (40-digit Decimal ln/exp) from the formulas as stated in the papers, and
direct re-statements of the formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxytune.analysis.rules_of_thumb import (
    RULES,
    RuleInfo,
    adamw_timescale,
    apply_rule,
    batch_scaled_lr,
    ema_momentum,
    explain_rules,
    get_rule,
    power_lines_batch,
    power_lines_weight_decay,
    steplaw_batch_tokens,
    steplaw_lr,
    token_horizon_lr,
)

REL = 1e-12

# ---------------------------------------------------------------- steplaw


def test_steplaw_hand_computed_example():
    # N = 1.2e9 non-embedding params, D = 2.4e10 tokens (Li et al. 2025):
    # lr* = 1.79 * 1.2e9^-0.713 * 2.4e10^0.307 = 9.249572349335728e-4
    # B*  = 0.58 * 2.4e10^0.571                 = 490375.3290768227 tokens
    out = apply_rule("steplaw", params=1.2e9, tokens=2.4e10, seq_len=4096)
    assert out["lr"] == pytest.approx(9.249572349335728e-4, rel=REL)
    assert out["batch_tokens"] == pytest.approx(490375.3290768227, rel=REL)
    assert out["batch_sequences"] == pytest.approx(119.72053932539617, rel=REL)
    # independent re-statement via logs
    assert math.log(out["lr"]) == pytest.approx(
        math.log(1.79) - 0.713 * math.log(1.2e9) + 0.307 * math.log(2.4e10), rel=REL
    )
    assert out["rule"] == "steplaw"
    assert isinstance(out["notes"], list) and all(isinstance(n, str) for n in out["notes"])


def test_steplaw_without_seq_len_has_no_sequences():
    out = apply_rule("steplaw", params=4e8, tokens=4e10)
    assert "batch_sequences" not in out


def test_steplaw_exponents():
    n, d = 3e8, 1e10
    assert steplaw_lr(n, 2 * d) / steplaw_lr(n, d) == pytest.approx(2**0.307, rel=REL)
    assert steplaw_lr(2 * n, d) / steplaw_lr(n, d) == pytest.approx(2**-0.713, rel=REL)
    assert steplaw_batch_tokens(2 * d) / steplaw_batch_tokens(d) == pytest.approx(2**0.571, rel=REL)
    # batch does not depend on N
    a = apply_rule("steplaw", params=n, tokens=d)
    b = apply_rule("steplaw", params=8 * n, tokens=d)
    assert a["batch_tokens"] == b["batch_tokens"]


def test_steplaw_domain_notes():
    inside = apply_rule("steplaw", params=4e8, tokens=4e10)
    assert not any("extrapolation" in n for n in inside["notes"])
    big = apply_rule("steplaw", params=7e10, tokens=2e12)
    assert any("params" in n and "extrapolation" in n for n in big["notes"])
    assert any("tokens" in n and "extrapolation" in n for n in big["notes"])


# ---------------------------------------------------------- token-horizon


def test_token_horizon_hand_computed_example():
    # 3e-3 tuned at 1e10 tokens, moved to 4e10: 3e-3 * 4^-0.32 = 1.925138846344356e-3
    out = apply_rule("token-horizon", lr_ref=3e-3, tokens_ref=1e10, tokens=4e10)
    assert out["lr"] == pytest.approx(1.925138846344356e-3, rel=REL)
    assert out["tokens_ratio"] == pytest.approx(4.0, rel=REL)


def test_token_horizon_scaling():
    lr0, d0 = 1e-3, 2e9
    assert token_horizon_lr(lr0, d0, d0) == pytest.approx(lr0, rel=REL)
    assert token_horizon_lr(lr0, d0, 2 * d0) / lr0 == pytest.approx(2**-0.32, rel=REL)
    # halving the horizon raises the LR by 2^0.32
    assert token_horizon_lr(lr0, d0, d0 / 2) / lr0 == pytest.approx(2**0.32, rel=REL)
    # composes: D0 -> D1 -> D2 equals D0 -> D2
    via = token_horizon_lr(token_horizon_lr(lr0, d0, 7 * d0), 7 * d0, 30 * d0)
    assert via == pytest.approx(token_horizon_lr(lr0, d0, 30 * d0), rel=REL)
    # longer training -> smaller LR
    assert token_horizon_lr(lr0, d0, 10 * d0) < lr0


def test_token_horizon_extrapolation_note():
    out = apply_rule("token-horizon", lr_ref=1e-3, tokens_ref=1e9, tokens=1e12)
    assert any("extrapolation" in n for n in out["notes"])


# ---------------------------------------------------------- power lines


REF = {"wd_ref": 0.1, "lr_ref": 1e-3, "batch_ref": 5e5, "params_ref": 1e8, "tokens_ref": 2e9}


def test_power_lines_wd_hand_computed_example():
    # tau_ref = 5e5 / (1e-3 * 0.1 * 2e9) = 2.5 ; TPP 20 -> 80 (ratio 4)
    # tau = 2.5 * 4^-0.527 = 1.204077367525185 ; wd = 2e6 / (5e-4 * 8e10 * tau) = 0.04152557082172229
    out = apply_rule("power-lines-wd", **REF, lr=5e-4, batch=2e6, params=1e9, tokens=8e10)
    assert out["tau_ref"] == pytest.approx(2.5, rel=REL)
    assert out["tau"] == pytest.approx(1.204077367525185, rel=REL)
    assert out["weight_decay"] == pytest.approx(0.04152557082172229, rel=REL)
    assert out["tokens_per_param"] == pytest.approx(80.0, rel=REL)
    assert out["tokens_per_param_ref"] == pytest.approx(20.0, rel=REL)
    assert out["steps"] == pytest.approx(8e10 / 2e6, rel=REL)
    assert out["tau_iter"] == pytest.approx(1.0 / (5e-4 * out["weight_decay"]), rel=REL)


def test_power_lines_wd_reproduces_tau_target():
    target = {"lr": 7e-4, "batch": 1.5e6, "params": 3e9, "tokens": 6e11}
    out = apply_rule("power-lines-wd", **REF, **target)
    tau_back = target["batch"] / (target["lr"] * out["weight_decay"] * target["tokens"])
    assert tau_back == pytest.approx(out["tau"], rel=REL)
    assert adamw_timescale(target["batch"], target["lr"], out["weight_decay"], target["tokens"]) == pytest.approx(
        out["tau"], rel=REL
    )
    tau_ref = REF["batch_ref"] / (REF["lr_ref"] * REF["wd_ref"] * REF["tokens_ref"])
    tpp_ratio = (target["tokens"] / target["params"]) / (REF["tokens_ref"] / REF["params_ref"])
    assert out["tau"] == pytest.approx(tau_ref * tpp_ratio**-0.527, rel=REL)


def test_power_lines_wd_identity_and_scaling():
    same = apply_rule(
        "power-lines-wd", **REF, lr=REF["lr_ref"], batch=REF["batch_ref"],
        params=REF["params_ref"], tokens=REF["tokens_ref"],
    )
    assert same["weight_decay"] == pytest.approx(REF["wd_ref"], rel=REL)

    def wd(**kw):
        t = {"lr": 1e-3, "batch": 5e5, "params": 1e8, "tokens": 2e9}
        t.update(kw)
        return power_lines_weight_decay(**REF, **t)

    base = wd()
    # same TPP (N and D both x10): tau unchanged, so wd ~ 1/D at fixed lr and B
    assert wd(params=1e9, tokens=2e10) / base == pytest.approx(0.1, rel=REL)
    # wd linear in B at fixed N, D, lr
    assert wd(batch=1e6) / base == pytest.approx(2.0, rel=REL)
    # wd ~ 1/lr
    assert wd(lr=2e-3) / base == pytest.approx(0.5, rel=REL)
    # doubling D at fixed N: wd ratio = 2^-1 * 2^0.527 = 2^-0.473
    assert wd(tokens=4e9) / base == pytest.approx(2**-0.473, rel=REL)
    # doubling N at fixed D: tau ratio 2^0.527, wd ratio 2^-0.527
    assert wd(params=2e8) / base == pytest.approx(2**-0.527, rel=REL)


def test_power_lines_batch():
    # 256 at D0 -> D = 10 D0: 256 * 10^0.383 = 618.3579736179047 ; 256 * 10^0.462 = 741.7199584515387
    opt = apply_rule("power-lines-batch", batch_ref=256, tokens_ref=1e10, tokens=1e11)
    crit = apply_rule("power-lines-batch", batch_ref=256, tokens_ref=1e10, tokens=1e11, kind="crit")
    assert opt["kind"] == "opt" and crit["kind"] == "crit"
    assert opt["batch"] == pytest.approx(618.3579736179047, rel=REL)
    assert crit["batch"] == pytest.approx(741.7199584515387, rel=REL)
    assert power_lines_batch(100.0, 1e9, 2e9) / 100.0 == pytest.approx(2**0.383, rel=REL)
    assert power_lines_batch(100.0, 1e9, 2e9, kind="crit") / 100.0 == pytest.approx(2**0.462, rel=REL)
    with pytest.raises(ValueError, match="kind"):
        apply_rule("power-lines-batch", batch_ref=256, tokens_ref=1e10, tokens=1e11, kind="critical")


# ---------------------------------------------------------- ema momentum


def test_ema_momentum_example_and_composition():
    # 0.999^4 = 0.998001^2 = 0.996005996001 exactly
    out = apply_rule("ema-momentum", rho=0.999, batch_scale=4)
    assert out["rho"] == pytest.approx(0.996005996001, rel=REL)
    for rho, k1, k2 in ((0.999, 2.0, 8.0), (0.9999, 0.5, 3.0), (0.99, 4.0, 0.25)):
        assert ema_momentum(ema_momentum(rho, k1), k2) == pytest.approx(ema_momentum(rho, k1 * k2), rel=REL)
    # unchanged at k = 1, and moves away from 1 when the batch grows
    assert ema_momentum(0.997, 1) == pytest.approx(0.997, rel=REL)
    assert ema_momentum(0.997, 2) < 0.997 < ema_momentum(0.997, 0.5)


def test_ema_momentum_rejects_rho_above_one():
    with pytest.raises(ValueError, match="rho"):
        apply_rule("ema-momentum", rho=1.5, batch_scale=2)
    assert apply_rule("ema-momentum", rho=1.0, batch_scale=3)["rho"] == 1.0


# ---------------------------------------------------------- batch-lr


def test_batch_lr_linear_vs_sqrt():
    sgd = apply_rule("batch-lr", lr=0.1, batch_scale=4, optimizer="sgd")
    adam = apply_rule("batch-lr", lr=3e-4, batch_scale=4, optimizer="adam")
    assert sgd["lr"] == pytest.approx(0.4, rel=REL) and sgd["scaling"] == "linear"
    assert adam["lr"] == pytest.approx(6e-4, rel=REL) and adam["scaling"] == "sqrt"
    for opt in ("adamw", "adam-atan2", "AdamW", "adam_atan2"):
        assert batch_scaled_lr(1e-3, 9.0, opt) == pytest.approx(3e-3, rel=REL)
    # linear vs sqrt exponents
    assert batch_scaled_lr(1e-3, 16.0, "sgd") / batch_scaled_lr(1e-3, 16.0, "adam") == pytest.approx(4.0, rel=REL)
    # scaling down works too
    assert apply_rule("batch-lr", lr=1e-3, batch_scale=0.25, optimizer="adamw")["lr"] == pytest.approx(5e-4, rel=REL)


def test_batch_lr_adam_betas_and_eps():
    out = apply_rule("batch-lr", lr=3e-4, batch_scale=4, optimizer="adamw", beta1=0.9, beta2=0.95, eps=1e-8)
    assert out["beta1"] == pytest.approx(1 - 4 * 0.1, rel=REL)  # 0.6
    assert out["beta2"] == pytest.approx(1 - 4 * 0.05, rel=REL)  # 0.8
    assert out["eps"] == pytest.approx(5e-9, rel=REL)
    # the rule composes in k (scaling by 2 twice == scaling by 4)
    half = apply_rule("batch-lr", lr=3e-4, batch_scale=2, optimizer="adamw", beta1=0.9, beta2=0.95, eps=1e-8)
    twice = apply_rule(
        "batch-lr", lr=half["lr"], batch_scale=2, optimizer="adamw",
        beta1=half["beta1"], beta2=half["beta2"], eps=half["eps"],
    )
    for key in ("lr", "beta1", "beta2", "eps"):
        assert twice[key] == pytest.approx(out[key], rel=1e-9)
    # adam-atan2 has no eps: not returned, noted
    atan2 = apply_rule("batch-lr", lr=3e-4, batch_scale=4, optimizer="adam-atan2", beta2=0.95, eps=1e-8)
    assert "eps" not in atan2 and any("eps" in n for n in atan2["notes"])
    assert atan2["beta2"] == pytest.approx(0.8, rel=REL)
    # SGD: betas/eps are not part of the linear rule
    sgd = apply_rule("batch-lr", lr=0.1, batch_scale=4, optimizer="sgd", beta1=0.9)
    assert "beta1" not in sgd


def test_batch_lr_beta_rule_out_of_range():
    with pytest.raises(ValueError, match="beta1"):
        apply_rule("batch-lr", lr=3e-4, batch_scale=20, optimizer="adam", beta1=0.9)
    with pytest.raises(ValueError, match="beta2"):
        apply_rule("batch-lr", lr=3e-4, batch_scale=2, optimizer="adam", beta2=1.0)


def test_batch_lr_unknown_optimizer_suggests():
    with pytest.raises(ValueError, match="adamw"):
        apply_rule("batch-lr", lr=1e-3, batch_scale=2, optimizer="adamww")


# ---------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name, inputs, missing",
    [
        ("steplaw", {"params": 1e8}, "tokens"),
        ("token-horizon", {"lr_ref": 1e-3, "tokens": 1e10}, "tokens_ref"),
        ("ema-momentum", {"batch_scale": 2}, "rho"),
        ("batch-lr", {"lr": 1e-3, "batch_scale": 2}, "optimizer"),
        ("power-lines-batch", {"batch_ref": 256, "tokens_ref": 1e9}, "tokens"),
    ],
)
def test_missing_input_names_argument_and_rule(name, inputs, missing):
    with pytest.raises(ValueError) as err:
        apply_rule(name, **inputs)
    assert repr(missing) in str(err.value) and repr(name) in str(err.value)


@pytest.mark.parametrize("bad", [0, -1.0, 0.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_rejected(bad):
    with pytest.raises(ValueError) as err:
        apply_rule("steplaw", params=bad, tokens=1e10)
    assert "'params'" in str(err.value) and "'steplaw'" in str(err.value)
    with pytest.raises(ValueError, match="'batch_scale'"):
        apply_rule("ema-momentum", rho=0.99, batch_scale=bad)
    with pytest.raises(ValueError, match="'wd_ref'"):
        apply_rule("power-lines-wd", **{**REF, "wd_ref": bad}, lr=1e-3, batch=5e5, params=1e8, tokens=2e9)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="'seq_len'"):
        apply_rule("steplaw", params=1e8, tokens=1e10, seq_len=2048.5)
    with pytest.raises(ValueError, match="number"):
        apply_rule("steplaw", params="1e8", tokens=1e10)
    with pytest.raises(ValueError, match="number"):
        apply_rule("steplaw", params=True, tokens=1e10)
    # a typo in an argument name gets a suggestion
    with pytest.raises(ValueError, match="Did you mean 'tokens'"):
        apply_rule("steplaw", params=1e8, token=1e10)
    # numpy scalars are fine
    out = apply_rule("steplaw", params=np.float64(1.2e9), tokens=np.int64(24_000_000_000))
    assert out["lr"] == pytest.approx(9.249572349335728e-4, rel=REL)


@pytest.mark.parametrize(
    "typo, suggestion",
    [("step-law", "steplaw"), ("tokenhorizon", "token-horizon"), ("ema-momentun", "ema-momentum"),
     ("powerlines-wd", "power-lines-wd")],
)
def test_unknown_rule_suggests(typo, suggestion):
    with pytest.raises(ValueError) as err:
        apply_rule(typo, params=1e8, tokens=1e10)
    assert "unknown rule" in str(err.value)
    assert f"Did you mean {suggestion!r}" in str(err.value)


def test_rule_names_are_normalized():
    assert get_rule("Token_Horizon").name == "token-horizon"
    assert apply_rule("BATCH_LR", lr=1e-3, batch_scale=4, optimizer="sgd")["rule"] == "batch-lr"


# ---------------------------------------------------------- registry


def test_registry_entries_are_documented():
    assert {"steplaw", "token-horizon", "power-lines-wd", "ema-momentum", "batch-lr"} <= set(RULES)
    for key, info in RULES.items():
        assert isinstance(info, RuleInfo) and info.name == key
        for field in ("summary", "formula", "source", "domain"):
            assert getattr(info, field).strip(), (key, field)
        assert "\n" not in info.summary
        assert info.inputs and all(isinstance(a, str) and a for a in info.inputs)
        assert any(ch.isdigit() for ch in info.source)  # a year
    with pytest.raises(AttributeError):
        RULES["steplaw"].name = "x"  # frozen


def test_every_rule_runs_on_its_declared_inputs():
    samples = {
        "params": 3e8, "tokens": 3e10, "lr_ref": 1e-3, "tokens_ref": 1e10, "wd_ref": 0.1,
        "batch_ref": 5e5, "params_ref": 1e8, "lr": 1e-3, "batch": 1e6, "rho": 0.999,
        "batch_scale": 2, "optimizer": "adamw",
    }
    for name, info in RULES.items():
        out = apply_rule(name, **{arg: samples[arg] for arg in info.inputs})
        assert out["rule"] == name and isinstance(out["notes"], list)
        assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))


def test_explain_rules_lists_everything():
    text = explain_rules()
    for info in RULES.values():
        assert info.name in text
    text = explain_rules(width=1000)  # wide enough that no cell wraps
    for needle in ("0.713", "0.571", "0.32", "0.527", "rho^k", "sqrt(k)", "Predictable Scale",
                   "Power Lines", "How to Scale Your EMA", "Token Horizons", "critical batch"):
        assert needle in text
    assert max(len(line) for line in explain_rules().splitlines()) <= 120
    assert max(len(line) for line in explain_rules(width=90).splitlines()) <= 90

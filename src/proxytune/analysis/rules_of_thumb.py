"""Named, documented empirical hyperparameter rules, usable without any sweep.

Each rule is a small pure function (the formula, nothing else) plus an entry in
:data:`RULES` that says where the numbers come from and where they were
measured. :func:`apply_rule` is the checked front door: it validates the
inputs, runs the formula and adds notes when the inputs leave the rule's
measured domain. :func:`explain_rules` renders the registry as a table for the
``proxytune rules`` command.

>>> out = apply_rule("steplaw", params=1.2e9, tokens=2.4e10)
>>> round(out["lr"], 6), round(out["batch_tokens"])
(0.000925, 490375)

Rules (each function's docstring repeats its formula and source):

- ``steplaw``: Li et al. 2025, "Predictable Scale: Part I -- Optimal
  Hyperparameter Scaling Law in Large Language Model Pretraining" (Step Law).
- ``token-horizon``: Bjorck et al. 2024, "Scaling Optimal LR Across Token
  Horizons".
- ``power-lines-wd`` and ``power-lines-batch``: Bergsma et al. 2025, "Power
  Lines: Scaling Laws for Weight Decay and Batch Size in LLM Pre-training".
- ``ema-momentum``: Busbridge et al. 2023, "How to Scale Your EMA".
- ``batch-lr``: Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training
  ImageNet in 1 Hour" (linear rule, SGD) and Malladi et al. 2022, "On the SDEs
  and Scaling Rules for Adaptive Gradient Algorithms" (square-root rule, Adam).

These are rules of thumb: fitted or derived in specific settings, they give a
starting point, not a tuned value. Nothing here replaces a sweep at the scale
that matters; it tells you where to centre one.
"""

from __future__ import annotations

import difflib
import math
import numbers
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RuleInfo",
    "RULES",
    "apply_rule",
    "get_rule",
    "explain_rules",
    "steplaw_lr",
    "steplaw_batch_tokens",
    "token_horizon_lr",
    "adamw_timescale",
    "power_lines_tau",
    "power_lines_weight_decay",
    "power_lines_batch",
    "ema_momentum",
    "batch_scaled_lr",
    "sqrt_rule_beta",
    "sqrt_rule_eps",
    "STEPLAW_LR_COEF",
    "STEPLAW_LR_N_EXP",
    "STEPLAW_LR_D_EXP",
    "STEPLAW_BATCH_COEF",
    "STEPLAW_BATCH_D_EXP",
    "TOKEN_HORIZON_EXP",
    "POWER_LINES_TAU_EXP",
    "POWER_LINES_BOPT_EXP",
    "POWER_LINES_BCRIT_EXP",
    "BATCH_LR_OPTIMIZERS",
]

# --------------------------------------------------------------------------
# Constants (each from the paper named next to it)
# --------------------------------------------------------------------------

#: Step Law (Li et al. 2025): lr* = 1.79 N^-0.713 D^0.307.
STEPLAW_LR_COEF: float = 1.79
STEPLAW_LR_N_EXP: float = -0.713
STEPLAW_LR_D_EXP: float = 0.307
#: Step Law (Li et al. 2025): B* = 0.58 D^0.571, B in tokens.
STEPLAW_BATCH_COEF: float = 0.58
STEPLAW_BATCH_D_EXP: float = 0.571

#: Bjorck et al. 2024: lr*(D) proportional to D^-0.32 at fixed N and batch.
TOKEN_HORIZON_EXP: float = -0.32

#: Bergsma et al. 2025 (Power Lines): tau_opt proportional to (D/N)^-0.527.
POWER_LINES_TAU_EXP: float = -0.527
#: Bergsma et al. 2025 (Power Lines): B_opt proportional to D^0.383.
POWER_LINES_BOPT_EXP: float = 0.383
#: Bergsma et al. 2025 (Power Lines): B_crit proportional to D^0.462.
POWER_LINES_BCRIT_EXP: float = 0.462

#: Optimizer name -> batch-size LR scaling ("linear": Goyal et al. 2017;
#: "sqrt": Malladi et al. 2022).
BATCH_LR_OPTIMIZERS: dict[str, str] = {
    "sgd": "linear",
    "adam": "sqrt",
    "adamw": "sqrt",
    "adam-atan2": "sqrt",
}

# Approximate measured ranges, used only for the out-of-domain notes.
# Our reading of the papers; deliberately loose.
_STEPLAW_N_RANGE = (6e7, 1e9)  # non-embedding parameters
_STEPLAW_D_MAX = 1e11  # training tokens
_POWER_LINES_N_RANGE = (1.11e8, 3.3e9)  # parameters
_MAX_EXTRAPOLATION = 100.0  # ratios beyond this (either way) get a note


# --------------------------------------------------------------------------
# Pure formulas
# --------------------------------------------------------------------------


def steplaw_lr(params: float, tokens: float) -> float:
    """Step Law optimal peak learning rate.

    ``lr* = 1.79 * N^-0.713 * D^0.307``, N = non-embedding parameters,
    D = training tokens (Li et al. 2025, "Predictable Scale: Part I -- Optimal
    Hyperparameter Scaling Law in Large Language Model Pretraining"; AdamW,
    warmup + cosine decay).
    """
    return STEPLAW_LR_COEF * params**STEPLAW_LR_N_EXP * tokens**STEPLAW_LR_D_EXP


def steplaw_batch_tokens(tokens: float) -> float:
    """Step Law optimal batch size, in tokens.

    ``B* = 0.58 * D^0.571`` with D = training tokens; independent of model size
    (Li et al. 2025, "Predictable Scale: Part I -- Optimal Hyperparameter
    Scaling Law in Large Language Model Pretraining").
    """
    return STEPLAW_BATCH_COEF * tokens**STEPLAW_BATCH_D_EXP


def token_horizon_lr(lr_ref: float, tokens_ref: float, tokens: float) -> float:
    """Transfer an optimal LR from one token horizon to another.

    ``lr*(D) = lr*(D0) * (D / D0)^-0.32`` at fixed model size and batch size
    (Bjorck et al. 2024, "Scaling Optimal LR Across Token Horizons").
    """
    return lr_ref * (tokens / tokens_ref) ** TOKEN_HORIZON_EXP


def adamw_timescale(batch: float, lr: float, weight_decay: float, tokens: float) -> float:
    """AdamW EMA timescale as a fraction of training.

    AdamW's decoupled weight decay makes the weights an EMA of the updates
    with coefficient ``lr * wd``, so ``tau_iter = 1 / (lr * wd)`` iterations.
    Dividing by the number of iterations ``S = D / B`` gives the normalized
    timescale ``tau = tau_iter / S = B / (lr * wd * D)`` (Bergsma et al. 2025,
    "Power Lines: Scaling Laws for Weight Decay and Batch Size in LLM
    Pre-training"; building on Wang & Aitchison 2024, "How to set AdamW's
    weight decay as you scale model and dataset size"). ``batch`` and
    ``tokens`` must be in the same unit (both tokens, or both sequences).
    """
    return batch / (lr * weight_decay * tokens)


def power_lines_tau(
    tau_ref: float, params_ref: float, tokens_ref: float, params: float, tokens: float
) -> float:
    """Optimal AdamW timescale at (N, D) from a tuned reference at (N0, D0).

    ``tau_opt`` is proportional to ``(D/N)^-0.527`` (tokens per parameter), so
    ``tau = tau_ref * ((D/N) / (D0/N0))^-0.527`` (Bergsma et al. 2025, "Power
    Lines: Scaling Laws for Weight Decay and Batch Size in LLM Pre-training").
    """
    return tau_ref * ((tokens / params) / (tokens_ref / params_ref)) ** POWER_LINES_TAU_EXP


def power_lines_weight_decay(
    wd_ref: float,
    lr_ref: float,
    batch_ref: float,
    params_ref: float,
    tokens_ref: float,
    lr: float,
    batch: float,
    params: float,
    tokens: float,
) -> float:
    """AdamW weight decay for a target run that keeps tau on the Power Lines law.

    ``tau_ref = B0 / (lr0 * wd0 * D0)``;
    ``tau = tau_ref * ((D/N) / (D0/N0))^-0.527``;
    ``wd = B / (lr * D * tau)`` (Bergsma et al. 2025, "Power Lines: Scaling
    Laws for Weight Decay and Batch Size in LLM Pre-training"). Batch sizes
    and token counts in one unit (tokens, or sequences) throughout.
    """
    tau_ref = adamw_timescale(batch_ref, lr_ref, wd_ref, tokens_ref)
    tau = power_lines_tau(tau_ref, params_ref, tokens_ref, params, tokens)
    return batch / (lr * tokens * tau)


def power_lines_batch(batch_ref: float, tokens_ref: float, tokens: float, kind: str = "opt") -> float:
    """Scale an optimal (``kind="opt"``) or critical (``kind="crit"``) batch size with D.

    ``B_opt(D) = B_opt(D0) * (D / D0)^0.383`` and
    ``B_crit(D) = B_crit(D0) * (D / D0)^0.462``; both independent of model size
    (Bergsma et al. 2025, "Power Lines: Scaling Laws for Weight Decay and Batch
    Size in LLM Pre-training").
    """
    if kind == "opt":
        exponent = POWER_LINES_BOPT_EXP
    elif kind == "crit":
        exponent = POWER_LINES_BCRIT_EXP
    else:
        raise ValueError(f"kind must be 'opt' or 'crit', got {kind!r}")
    return batch_ref * (tokens / tokens_ref) ** exponent


def ema_momentum(rho: float, batch_scale: float) -> float:
    """EMA momentum after scaling the batch by ``k``: ``rho -> rho^k``.

    The EMA Scaling Rule of Busbridge et al. 2023, "How to Scale Your EMA": one
    step at batch ``k*B`` should decay the EMA as much as ``k`` steps at ``B``.
    Pair it with the optimizer's own batch rule (see :func:`batch_scaled_lr`).
    """
    return rho**batch_scale


def batch_scaled_lr(lr: float, batch_scale: float, optimizer: str) -> float:
    """LR after scaling the batch by ``k``.

    SGD: linear rule ``lr * k`` (Goyal et al. 2017, "Accurate, Large Minibatch
    SGD: Training ImageNet in 1 Hour"). Adam, AdamW, Adam-atan2: square-root
    rule ``lr * sqrt(k)`` (Malladi et al. 2022, "On the SDEs and Scaling Rules
    for Adaptive Gradient Algorithms"). Both hold below the critical batch size.
    """
    rule = BATCH_LR_OPTIMIZERS.get(_normalize(optimizer))
    if rule is None:
        raise ValueError(f"unknown optimizer {optimizer!r}; {_suggest(optimizer, tuple(BATCH_LR_OPTIMIZERS))}")
    return lr * batch_scale if rule == "linear" else lr * math.sqrt(batch_scale)


def sqrt_rule_beta(beta: float, batch_scale: float) -> float:
    """Adam beta under the square-root rule: ``beta -> 1 - k * (1 - beta)``.

    Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient
    Algorithms" (applies to beta1 and beta2). Only meaningful while the result
    stays in ``[0, 1)``, i.e. ``k < 1 / (1 - beta)``.
    """
    return 1.0 - batch_scale * (1.0 - beta)


def sqrt_rule_eps(eps: float, batch_scale: float) -> float:
    """Adam eps under the square-root rule: ``eps -> eps / sqrt(k)``.

    Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient
    Algorithms".
    """
    return eps / math.sqrt(batch_scale)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleInfo:
    """One empirical HP rule.

    Attributes:
        name: what users pass to :func:`apply_rule` (``"steplaw"``).
        summary: one line.
        formula: the formula, as text.
        source: paper title, authors, year.
        domain: where the rule was measured or derived and where it is valid
            (optimizer, schedule, model family, ranges of N / D / B).
        inputs: names of the required arguments.
        optional: names of the optional arguments.
    """

    name: str
    summary: str
    formula: str
    source: str
    domain: str
    inputs: tuple[str, ...]
    optional: tuple[str, ...] = ()


RULES: dict[str, RuleInfo] = {
    r.name: r
    for r in (
        RuleInfo(
            name="steplaw",
            summary="Optimal peak LR from model size and tokens, optimal batch (tokens) from tokens alone.",
            formula="lr* = 1.79 * N^-0.713 * D^0.307 ;  B* = 0.58 * D^0.571 tokens "
            "(N = non-embedding params, D = training tokens; batch_sequences = B* / seq_len)",
            source='Li, Zheng, Hu, Wang, Zhang, Wang, Xuyang, Fan, Zhou, Zhang, Jiang (2025), '
            '"Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large Language '
            'Model Pretraining" (Step Law)',
            domain="Measured on (our reading of the paper; hedged): LLaMA-style decoder-only LLMs, dense "
            "(roughly 60M-1B non-embedding params) plus MoE variants, trained on up to ~100B tokens; "
            "AdamW with warmup then cosine decay; batch counted in tokens. The paper reports the fit "
            "holds across model shapes, MoE sparsity and data mixtures. Outside these ranges it is "
            "an extrapolation.",
            inputs=("params", "tokens"),
            optional=("seq_len",),
        ),
        RuleInfo(
            name="token-horizon",
            summary="Move a tuned LR to a longer/shorter training horizon at fixed model and batch size.",
            formula="lr*(D) = lr*(D0) * (D / D0)^-0.32",
            source='Bjorck, Benhaim, Chaudhary, Wei, Song (2024), "Scaling Optimal LR Across Token '
            'Horizons" (ICLR 2025)',
            domain="Measured on (hedged): LLaMA-style decoder-only LLMs from ~50M to a few billion "
            "params, token horizons from a few billion to a few hundred billion tokens; AdamW, "
            "warmup + cosine decay; model size and batch size held fixed while D changes. The "
            "paper reports the horizon dependence also under muP.",
            inputs=("lr_ref", "tokens_ref", "tokens"),
        ),
        RuleInfo(
            name="power-lines-wd",
            summary="AdamW weight decay for a target run that keeps the EMA timescale on the Power Lines law.",
            formula="tau = B / (lr * wd * D) (fraction of training; tau_iter = 1/(lr*wd) iterations, "
            "B and D in tokens) ;  tau_opt ~ (D/N)^-0.527 ;  tau = tau_ref * ((D/N)/(D0/N0))^-0.527 ;  "
            "wd = B / (lr * D * tau)",
            source='Bergsma, Dey, Gosal, Gray, Soboleva, Hestness (2025), "Power Lines: Scaling Laws '
            'for Weight Decay and Batch Size in LLM Pre-training"',
            domain="Measured on (hedged): GPT-2-style decoder-only LLMs (ALiBi, SwiGLU) of roughly "
            "111M-3.3B params on SlimPajama, context 2048; AdamW with decoupled weight decay and "
            "a muP-set peak LR; a wide range of tokens-per-parameter. At fixed N, D the paper "
            "confirms optimal wd scales linearly with B. Needs a reference whose wd was tuned.",
            inputs=(
                "wd_ref",
                "lr_ref",
                "batch_ref",
                "params_ref",
                "tokens_ref",
                "lr",
                "batch",
                "params",
                "tokens",
            ),
        ),
        RuleInfo(
            name="power-lines-batch",
            summary="Scale an optimal (kind='opt') or critical (kind='crit') batch size with the token budget.",
            formula="B_opt(D) = B_opt(D0) * (D / D0)^0.383 ;  B_crit(D) = B_crit(D0) * (D / D0)^0.462 "
            "(independent of N)",
            source='Bergsma, Dey, Gosal, Gray, Soboleva, Hestness (2025), "Power Lines: Scaling Laws '
            'for Weight Decay and Batch Size in LLM Pre-training"',
            domain="Measured on (hedged): same setting as power-lines-wd (GPT-2-style LLMs of roughly "
            "111M-3.3B params, AdamW, SlimPajama, wd re-tuned per batch size via the timescale). "
            "B_opt: the batch with the lowest loss at given N, D; B_crit: the batch beyond which "
            "more data parallelism stops paying off. The reference batch must be of the same kind.",
            inputs=("batch_ref", "tokens_ref", "tokens"),
            optional=("kind",),
        ),
        RuleInfo(
            name="ema-momentum",
            summary="EMA momentum after scaling the batch by k (EMA Scaling Rule).",
            formula="rho_new = rho^k",
            source='Busbridge, Ramapuram, Ablin, Likhomanenko, Dhekane, Suau, Webb (2023), "How to '
            'Scale Your EMA" (NeurIPS 2023)',
            domain="Derived from an SDE argument for SGD with the linear LR rule, and shown by the "
            "paper on model EMAs (Polyak-Ruppert averaging), pseudo-labelling and self-supervised "
            "teacher EMAs (e.g. BYOL), including with adaptive optimizers and their own LR scaling "
            "rule. Like every SDE scaling rule it holds while (1 - rho) and the LR stay small, and "
            "below the critical batch size.",
            inputs=("rho", "batch_scale"),
        ),
        RuleInfo(
            name="batch-lr",
            summary="LR (and Adam betas/eps) after scaling the batch by k: linear for SGD, sqrt for Adam.",
            formula="sgd: lr_new = lr * k ;  adam/adamw/adam-atan2: lr_new = lr * sqrt(k), "
            "beta_new = 1 - k * (1 - beta), eps_new = eps / sqrt(k)",
            source='Goyal, Dollar, Girshick, Noordhuis, Wesolowski, Kyrola, Tulloch, Jia, He (2017), '
            '"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (linear, SGD); Malladi, '
            'Lyu, Panigrahi, Arora (2022), "On the SDEs and Scaling Rules for Adaptive Gradient '
            'Algorithms" (square root, Adam/RMSprop)',
            domain="Holds below the critical batch size only (beyond it the optimal LR stops growing; "
            "see McCandlish et al. 2018, \"An Empirical Model of Large-Batch Training\"). Linear: SGD "
            "with momentum on ImageNet/ResNet-50 up to 8k images per batch with gradual warmup. "
            "Square root: Adam/RMSprop from an SDE approximation, validated on vision and language "
            "tasks; needs k < 1/(1 - beta) for the beta rule. adam-atan2 has no eps.",
            inputs=("lr", "batch_scale", "optimizer"),
            optional=("beta1", "beta2", "eps"),
        ),
    )
}


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------

_STRING_INPUTS: dict[str, tuple[str, ...]] = {
    "optimizer": tuple(BATCH_LR_OPTIMIZERS),
    "kind": ("opt", "crit"),
}
_INTEGER_INPUTS = frozenset({"seq_len"})
_BETA_INPUTS = frozenset({"beta1", "beta2"})  # in [0, 1)
_UNIT_INPUTS = frozenset({"rho"})  # in (0, 1]


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _suggest(value: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"valid: {', '.join(valid)}.{hint}"


def get_rule(name: str) -> RuleInfo:
    """Look a rule up by name (case and ``_``/``-`` insensitive).

    Raises:
        ValueError: unknown name; the message lists the rules and suggests the
            closest one.
    """
    if not isinstance(name, str):
        raise ValueError(f"rule name must be a string, got {name!r}")
    key = _normalize(name)
    if key not in RULES:
        close = difflib.get_close_matches(key, list(RULES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown rule {name!r}; valid: {', '.join(RULES)}.{hint}")
    return RULES[key]


def _check_value(rule: str, arg: str, value: Any) -> Any:
    """Validate one input; returns the value to use (floats, or a normalized string)."""
    if arg in _STRING_INPUTS:
        valid = _STRING_INPUTS[arg]
        if not isinstance(value, str):
            raise ValueError(f"rule {rule!r}: argument {arg!r} must be a string, got {value!r}; "
                             f"valid: {', '.join(valid)}")
        norm = _normalize(value)
        if norm not in valid:
            raise ValueError(f"rule {rule!r}: unknown {arg} {value!r}; {_suggest(norm, valid)}")
        return norm
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real
        raise ValueError(f"rule {rule!r}: argument {arg!r} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"rule {rule!r}: argument {arg!r} must be finite, got {value!r}")
    if arg in _BETA_INPUTS:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"rule {rule!r}: argument {arg!r} must be in [0, 1), got {value!r}")
        return value
    if value <= 0.0:
        raise ValueError(f"rule {rule!r}: argument {arg!r} must be positive, got {value!r}")
    if arg in _UNIT_INPUTS and value > 1.0:
        raise ValueError(f"rule {rule!r}: argument {arg!r} must be in (0, 1], got {value!r}")
    if arg in _INTEGER_INPUTS:
        if value != int(value):
            raise ValueError(f"rule {rule!r}: argument {arg!r} must be an integer, got {value!r}")
        return int(value)
    return value


def _validate(info: RuleInfo, inputs: Mapping[str, Any]) -> dict[str, Any]:
    allowed = info.inputs + info.optional
    for arg in inputs:
        if arg not in allowed:
            raise ValueError(
                f"rule {info.name!r} does not take argument {arg!r}; {_suggest(arg, allowed)}"
            )
    missing = [arg for arg in info.inputs if inputs.get(arg) is None]
    if missing:
        raise ValueError(
            f"rule {info.name!r} is missing argument {missing[0]!r} "
            f"(required: {', '.join(info.inputs)})"
        )
    return {arg: _check_value(info.name, arg, v) for arg, v in inputs.items() if v is not None}


def _ratio_note(label: str, ratio: float) -> list[str]:
    if ratio > _MAX_EXTRAPOLATION or ratio < 1.0 / _MAX_EXTRAPOLATION:
        return [
            (
                f"{label} changes by a factor {ratio:.3g} (more than {_MAX_EXTRAPOLATION:g}x): "
                "a long extrapolation of a fitted power law; sweep around the result"
            )
        ]
    return []


# --------------------------------------------------------------------------
# Per-rule appliers: validated inputs -> (outputs, notes)
# --------------------------------------------------------------------------

_Result = tuple[dict[str, Any], list[str]]


def _apply_steplaw(params: float, tokens: float, seq_len: int | None = None) -> _Result:
    lr = steplaw_lr(params, tokens)
    batch_tokens = steplaw_batch_tokens(tokens)
    out: dict[str, Any] = {"lr": lr, "batch_tokens": batch_tokens}
    notes = ["params must be the non-embedding parameter count (as in the Step Law fit)"]
    if seq_len is not None:
        out["batch_sequences"] = batch_tokens / seq_len
        notes.append("round batch_sequences to a hardware-friendly integer; the optimum is a broad plateau")
    lo, hi = _STEPLAW_N_RANGE
    if not lo <= params <= hi:
        notes.append(f"params={params:.3g} is outside the measured range (~{lo:.0e}-{hi:.0e} "
                     "non-embedding params): extrapolation")
    if tokens > _STEPLAW_D_MAX:
        notes.append(f"tokens={tokens:.3g} is beyond the measured range (up to ~{_STEPLAW_D_MAX:.0e} "
                     "tokens): extrapolation")
    if batch_tokens > tokens:
        notes.append("batch_tokens exceeds the token budget: fewer than one optimizer step")
    return out, notes


def _apply_token_horizon(lr_ref: float, tokens_ref: float, tokens: float) -> _Result:
    ratio = tokens / tokens_ref
    out = {"lr": token_horizon_lr(lr_ref, tokens_ref, tokens), "tokens_ratio": ratio}
    notes = ["assumes lr_ref was tuned at tokens_ref with the same model size, batch size and schedule"]
    notes += _ratio_note("the token horizon", ratio)
    return out, notes


def _apply_power_lines_wd(
    wd_ref: float,
    lr_ref: float,
    batch_ref: float,
    params_ref: float,
    tokens_ref: float,
    lr: float,
    batch: float,
    params: float,
    tokens: float,
) -> _Result:
    tau_ref = adamw_timescale(batch_ref, lr_ref, wd_ref, tokens_ref)
    tau = power_lines_tau(tau_ref, params_ref, tokens_ref, params, tokens)
    wd = power_lines_weight_decay(wd_ref, lr_ref, batch_ref, params_ref, tokens_ref, lr, batch, params, tokens)
    tpp_ref, tpp = tokens_ref / params_ref, tokens / params
    out = {
        "weight_decay": wd,
        "tau": tau,
        "tau_ref": tau_ref,
        "tau_iter": 1.0 / (lr * wd),
        "steps": tokens / batch,
        "tokens_per_param": tpp,
        "tokens_per_param_ref": tpp_ref,
    }
    notes = [
        "batch and tokens (and batch_ref, tokens_ref) must share one unit: tokens, or sequences",
        "use one parameter-count convention for params and params_ref; only D/N ratios enter",
    ]
    notes += _ratio_note("tokens-per-parameter", tpp / tpp_ref)
    lo, hi = _POWER_LINES_N_RANGE
    if not lo <= params <= hi:
        notes.append(f"params={params:.3g} is outside the measured range (~{lo:.3g}-{hi:.3g}): extrapolation")
    if lr * wd >= 1.0:
        notes.append(f"lr * weight_decay = {lr * wd:.3g} >= 1: the EMA view of AdamW breaks down; "
                     "the result is not meaningful")
    if tau > 1.0:
        notes.append(f"tau = {tau:.3g} > 1: the weight EMA spans more than the whole run")
    return out, notes


def _apply_power_lines_batch(batch_ref: float, tokens_ref: float, tokens: float, kind: str = "opt") -> _Result:
    exponent = POWER_LINES_BOPT_EXP if kind == "opt" else POWER_LINES_BCRIT_EXP
    out = {"batch": power_lines_batch(batch_ref, tokens_ref, tokens, kind), "kind": kind, "exponent": exponent}
    what = "optimal" if kind == "opt" else "critical"
    notes = [f"batch_ref must be the {what} batch size at tokens_ref (same unit as the output)"]
    notes += _ratio_note("the token budget", tokens / tokens_ref)
    return out, notes


def _apply_ema_momentum(rho: float, batch_scale: float) -> _Result:
    new = ema_momentum(rho, batch_scale)
    notes = ["scale the LR with the optimizer's own batch rule too (see rule 'batch-lr')"]
    if new < 0.9 and batch_scale > 1:
        notes.append(f"rho^k = {new:.3g}: the EMA now averages over fewer than ~10 steps; the SDE argument "
                     "behind the rule assumes 1 - rho small")
    if batch_scale > 1:
        notes.append("holds below the critical batch size only")
    return {"rho": new}, notes


def _apply_batch_lr(
    lr: float,
    batch_scale: float,
    optimizer: str,
    beta1: float | None = None,
    beta2: float | None = None,
    eps: float | None = None,
) -> _Result:
    rule = BATCH_LR_OPTIMIZERS[optimizer]
    out: dict[str, Any] = {"lr": batch_scaled_lr(lr, batch_scale, optimizer), "scaling": rule}
    notes: list[str] = []
    if batch_scale > 1:
        notes.append("holds below the critical batch size only; beyond it the optimal LR stops growing")
    if rule == "linear":
        notes.append("Goyal et al. pair the linear rule with a gradual LR warmup")
        if beta1 is not None or beta2 is not None or eps is not None:
            notes.append("sgd: momentum and other arguments are left unchanged by the linear rule")
        return out, notes
    for arg, beta in (("beta1", beta1), ("beta2", beta2)):
        if beta is None:
            continue
        new = sqrt_rule_beta(beta, batch_scale)
        if not 0.0 <= new < 1.0:
            raise ValueError(
                f"rule 'batch-lr': {arg}={beta!r} cannot be scaled by batch_scale={batch_scale!r}: "
                f"1 - k(1 - {arg}) = {new:.4g} is outside [0, 1); the square-root rule needs "
                f"k < 1/(1 - {arg}) = {1.0 / (1.0 - beta):.4g}"
            )
        out[arg] = new
    if eps is not None:
        if optimizer == "adam-atan2":
            notes.append("adam-atan2 has no eps (Everett et al. 2024); eps ignored")
        else:
            out["eps"] = sqrt_rule_eps(eps, batch_scale)
    if optimizer != "adam-atan2" and (beta1 is None or beta2 is None or eps is None):
        notes.append("the full square-root rule also rescales beta1, beta2 and eps; pass them to get their values")
    return out, notes


_APPLIERS: dict[str, Callable[..., _Result]] = {
    "steplaw": _apply_steplaw,
    "token-horizon": _apply_token_horizon,
    "power-lines-wd": _apply_power_lines_wd,
    "power-lines-batch": _apply_power_lines_batch,
    "ema-momentum": _apply_ema_momentum,
    "batch-lr": _apply_batch_lr,
}
assert set(_APPLIERS) == set(RULES)


def apply_rule(name: str, **inputs: Any) -> dict[str, Any]:
    """Validate ``inputs``, apply rule ``name`` and return its outputs.

    Returns:
        The rule's outputs (e.g. ``{"lr": ..., "batch_tokens": ...}`` for
        ``steplaw``) plus ``"rule"`` (the canonical name) and ``"notes"`` (a
        list of strings: caveats, and warnings when inputs leave the rule's
        measured domain).

    Raises:
        ValueError: unknown rule (with a "did you mean" suggestion), an
            argument the rule does not take, a missing required argument, or a
            non-positive / non-finite / out-of-range value. The message names
            the argument and the rule.
    """
    info = get_rule(name)
    values = _validate(info, inputs)
    out, notes = _APPLIERS[info.name](**values)
    return {**out, "rule": info.name, "notes": notes}


# --------------------------------------------------------------------------
# Table for ``proxytune rules``
# --------------------------------------------------------------------------


def explain_rules(width: int = 120) -> str:
    """All rules as a text table: name (with inputs), formula, source, domain.

    Columns wrap to fit ``width`` characters (at least 80).
    """
    width = max(int(width), 80)
    headers = ("rule / inputs", "formula", "source", "domain")
    sep = " | "
    name_w = 20
    rest = width - name_w - 3 * len(sep)
    formula_w = rest * 3 // 10
    source_w = rest * 3 // 10
    domain_w = rest - formula_w - source_w
    widths = (name_w, formula_w, source_w, domain_w)

    def row(cells: tuple[str, ...]) -> list[str]:
        wrapped = [textwrap.wrap(c, w, break_on_hyphens=False) or [""] for c, w in zip(cells, widths)]
        height = max(len(w) for w in wrapped)
        return [
            sep.join(
                (w[i] if i < len(w) else "").ljust(cw) for w, cw in zip(wrapped, widths)
            ).rstrip()
            for i in range(height)
        ]

    rule_line = "-+-".join("-" * w for w in widths)
    lines = row(headers) + [rule_line]
    for info in RULES.values():
        args = ", ".join(info.inputs)
        if info.optional:
            args += " [" + ", ".join(info.optional) + "]"
        lines += row((f"{info.name} ({args})", info.formula, info.source, info.domain))
        lines.append(rule_line)
    return "\n".join(lines)

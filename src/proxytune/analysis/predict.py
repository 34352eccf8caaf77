"""Predict the target: HPs and expected loss from a sweep's fitted laws, and the target's per-tensor plan.

Where the sweep has data for an axis, its fitted law is used; where it has
none (e.g. the target trains on more tokens than the proxies), a rule of
thumb fills in and the result says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..builders import build_model, load_builder
from ..plan import parameterize
from ..sweep import Sweep
from ..sweep.config import base_config
from ..thresholds import THRESHOLDS, shallow_base_warning
from .carry import carry_lr, size_axis_of
from .laws import fit_log_linear, fit_saturating_power_law
from .optimum import Optimum, optima_by_group
from .prediction import HPEstimate, LossEstimate, Prediction, ProxySummary, RecipeRef, TargetSize
from .rules_of_thumb import apply_rule
from .snippet import training_snippet
from .verdict import lsq_slope, optimum_draws

#: What a "base LR" is, in the words every output uses: the sweeps' LR axis, the tuned LR and the predicted one are
#: all values of this one quantity (at the base shape, at a proxy's width, at the target's).
BASE_LR_MEANING = "the lr given to plan.optimizer(lr=...) of a plan built for the target, which scales it per tensor"


def count_params(model_name: str, width: int, depth: int, options: dict[str, Any]) -> int:
    model = build_model(load_builder(model_name), width, depth, "meta", options)
    return sum(p.numel() for p in model.parameters())


def predict_from_sweep(sweep: Sweep, width: int, depth: int | None = None, tokens: float | None = None,
                       hp: str = "log2_lr", confidence: float = 0.9, plan_path: str | Path | None = None,
                       batch_tokens: float | None = None, params: float | None = None,
                       probe_widths: tuple[int, ...] = (), pool_noise: bool = False) -> Prediction:
    """HPs, expected loss (with intervals) and per-tensor plan for a target of ``width`` x ``depth``.

    The optimal HP follows ``log hp* = log c + sum_k alpha_k log X_k`` over the
    variables the sweep varied among N (parameters), D (tokens) and B (tokens
    per step), fitted on the per-size optima; the loss follows Mu-scaling
    ``L = a N^b + c`` over the best loss per N.

    ``params``: the target's parameter count, instead of building the model (a sweep of the user's own
    program, whose model proxytune cannot build, needs it unless the count can be fitted: see
    :func:`_program_sizes`).

    ``probe_widths``: widths that trained a single LR (``proxytune tune``'s probes): one point says nothing about
    where the optimum is, so they are left out. ``pool_noise``: as ``optima_by_group``'s, for tune's short scans.

    Returns a :class:`~proxytune.analysis.prediction.Prediction` (``.to_dict()`` for the JSON form).
    Many parameters because: the target's size, what is predicted, the plan's path and how tune's scans are read
    are independent choices, each with a default.
    """
    cfg = sweep.cfg
    first = base_config(cfg)
    depth = depth or first.depth
    records = [r for r in sweep.records() if r.get("width") not in probe_widths]
    optima = _finite_optima(records, hp, pool_noise)
    notes: list[str] = []
    program = cfg.program is not None
    if program:
        depth = depth or cfg.base.get("depth") or first.depth
        nvars, n_target, tokens_known = _program_sizes(records, optima, first, width, depth, params, notes)
    else:
        nvars, n_target = _model_sizes(first, optima, width, depth, params)
        tokens_known = True
    tokens_proxy = max(nvars["D"])
    target_vars = {"N": n_target, "D": tokens if tokens is not None else tokens_proxy,
                   "B": batch_tokens if batch_tokens is not None else max(nvars["B"])}
    target = TargetSize(width=width, depth=depth, params=n_target,
                        tokens=target_vars["D"] if tokens_known or tokens is not None else None,
                        batch_tokens=target_vars["B"] if not program else batch_tokens)
    target_vars.update(width=width, depth=depth)
    value, lo, hi, source = _hp_from_optima(hp, optima, nvars, target_vars, confidence, notes, first.recipe)
    if tokens is not None and not tokens_known:
        notes.append("the program did not report its training tokens (trial.set(tokens=...)): the LR is not moved "
                     "for the target's token budget")
    elif tokens is not None and "D" not in _varying(nvars) and hp == "log2_lr" and tokens != tokens_proxy:
        lr = apply_rule("token-horizon", lr_ref=2.0 ** value, tokens_ref=tokens_proxy, tokens=tokens)["lr"]
        shift = math.log2(lr) - value
        value, lo, hi = value + shift, lo + shift, hi + shift
        source += f"; then moved {shift:+.2f} octaves for the target's tokens by the token-horizon rule (not measured)"
        notes.append(f"the sweep has no data on tokens: moved by {shift:+.2f} octaves from {tokens_proxy:.3g} to "
                     f"{tokens:.3g} tokens with the token-horizon rule (Bjorck et al. 2024, lr ∝ D^-0.32)")
    estimate = HPEstimate(name=hp, value=value, interval=(lo, hi), confidence=confidence, source=source)
    loss = _loss_from_optima(optima, nvars, n_target, tokens, confidence, notes)
    if loss is not None and not tokens_known:
        loss = replace(loss, at_tokens=None)
    if program:
        first = first.model_copy(update={"depth": cfg.base.get("depth") or first.depth})
    proxies = ProxySummary(widths=tuple(sorted({int(g) for g in _swept(optima, first, "width")})),
                           depths=tuple(sorted({int(g) for g in _swept(optima, first, "depth")})),
                           base_depth=int(first.base_depth or first.depth) if first.depth else None,
                           base_residual=first.residual_mult, tokens=tokens_proxy if tokens_known else None,
                           batch_tokens=tuple(sorted(set(nvars["B"]))) if not program else (),
                           seeds=min(o.n_seeds for o in optima))
    recipe = RecipeRef(recipe=first.recipe, optimizer=first.optimizer, sweep=cfg.name)
    warnings = trust_warnings(Prediction(target, estimate, loss, (), recipe, proxies, (), None), hp)
    if program:
        # proxytune cannot build the user's model: the proxies' plans are on disk, the target's is one call away
        plan = None
        notes.append(f"the program builds its own model: the per-tensor plans of the proxies are in "
                     f"{cfg.run_dir / 'plans'}; at the target, trial.parameterize (or proxytune.parameterize("
                     f"target, base, recipe={first.recipe!r}, optimizer={first.optimizer!r})) gives the target's")
    else:
        plan = target_plan(sweep, width, depth, estimate, plan_path)
    return Prediction(target=target, hp=estimate, loss=loss, notes=tuple(notes), recipe=recipe, proxies=proxies,
                      warnings=tuple(warnings), plan=plan)


def _finite_optima(records: list[dict[str, Any]], hp: str, pool_noise: bool = False) -> list[Optimum]:
    """The sweep's optima with a finite value; raises, in words, when there is nothing to predict from."""
    if not any(hp in r for r in records):
        raise ValueError(f"the sweep has no axis {hp!r} to predict")
    every = optima_by_group(records, hp, pool_noise=pool_noise)
    optima = [o for o in every if math.isfinite(o.value)]
    if not optima:
        if every:
            raise ValueError(f"every point of the sweep diverged: no {hp} optimum anywhere; lower the {hp} range")
        raise ValueError("no completed trials with a finite loss in this sweep yet")
    size_of = [(o.group.get("width", 0), o.group.get("depth", 0)) for o in every]
    largest = max(size_of)
    if all((o.group.get("width", 0), o.group.get("depth", 0)) != largest for o in optima):
        raise ValueError(f"the largest size swept ({_fmt_size(every[size_of.index(largest)].group)}) diverged at every "
                         f"{hp}: no prediction from a smaller proxy; add lower {hp} values there and resume the sweep")
    return optima


def _model_sizes(first: Any, optima: list[Optimum], width: int, depth: int,
                 params: float | None) -> tuple[dict[str, list[float]], float]:
    """Each optimum's N (parameters), D (training tokens) and B (tokens per step), and the target's N, for a
    sweep of a model proxytune builds."""
    options = dict(first.model_options)
    if first.model in ("gpt", "moe"):
        options.setdefault("seq_len", first.seq_len)
    nvars: dict[str, list[float]] = {"N": [], "D": [], "B": []}
    for o in optima:
        g = {**first.model_dump(), **o.group}
        nvars["N"].append(count_params(first.model, int(g["width"]), int(g["depth"]), options))
        per_step = int(g["batch_size"]) * (int(g["seq_len"]) if first.data != "teacher" else 1)
        nvars["B"].append(per_step)
        nvars["D"].append(int(g["steps"]) * per_step)
    n_target = params if params is not None else count_params(first.model, width, depth, options)
    return nvars, n_target


def _varying(nvars: dict[str, list[float]]) -> list[str]:
    return [k for k, v in nvars.items() if len(set(v)) >= 2]


def _hp_from_optima(hp: str, optima: list[Optimum], nvars: dict[str, list[float]], target_vars: dict[str, float],
                    confidence: float, notes: list[str], recipe: str = "the recipe") -> tuple[float, float, float, str]:
    """(value, lo, hi, source) of ``hp`` at the target; ``source`` says how it was found.

    The LR over sizes alone: :func:`proxytune.analysis.carry.carry_lr` (the drift extrapolated only when the
    verdict resolved it). Other cases: a law over the varied sizes when the optima allow one, else the largest
    proxy's optimum."""
    varying = _varying(nvars)
    ys = [2.0 ** o.value for o in optima] if hp.startswith("log2_") else [o.value for o in optima]
    if varying == ["N"] and hp == "log2_lr":
        # Only the size varies: one LR, carried with the drift only when the verdict resolved one (analysis.carry)
        axis = size_axis_of(optima)
        target_size = target_vars.get(axis) if axis else None
        carried = carry_lr(optima, np.log2(np.asarray(nvars["N"], dtype=float)).tolist(),
                           math.log2(target_vars["N"]), target_size=target_size, confidence=confidence,
                           recipe=recipe)
        return carried.value, carried.interval[0], carried.interval[1], carried.source
    if varying == ["N"] and hp.startswith("log2_"):
        # Another log2 HP: the line of the optimum against log2 N, refitted to every bootstrap draw of the
        # optima, so its interval carries each optimum's measured noise (as the transfer verdict's drift does)
        # instead of a t-quantile on the 1-2 residual degrees of freedom of a few points.
        value, lo, hi, slope = _line_through_draws(optima, nvars["N"], target_vars["N"], confidence)
        source = (f"the law fitted on {len(optima)} optima: {hp} = {slope:+.3f} log2 N + const, its interval from "
                  "the optima's bootstrap draws")
    elif varying and len(optima) >= len(varying) + 2 and len(set(nvars["N"])) >= 2:
        law = fit_log_linear({k: nvars[k] for k in varying}, ys, confidence=confidence,
                             y_name=hp[5:] + "*" if hp.startswith("log2_") else hp)
        at = {k: target_vars[k] for k in varying}
        value = float(math.log2(law.predict(at)))
        lo, hi = (float(math.log2(v)) for v in law.interval(at, confidence))
        source = f"the law fitted on {len(optima)} optima: {law}"
    else:
        largest = max(optima, key=lambda o: nvars["N"][optima.index(o)])
        value, (lo, hi) = largest.value, largest.interval
        source = (f"the optimum measured at the largest proxy ({len(optima)} optima; a law in "
                  f"{', '.join(varying) or 'N'} needs {len(varying or ['N']) + 2} or more)")
    return value, lo, hi, source


def _loss_from_optima(optima: list[Optimum], nvars: dict[str, list[float]], n_target: float,
                      tokens: float | None, confidence: float, notes: list[str]) -> LossEstimate | None:
    """The target's loss from ``L = a N^b + c`` over the best loss per N at the largest token budget, or None
    (with a note) with fewer than 4 sizes."""
    tokens_proxy = max(nvars["D"])
    best: dict[float, float] = {}
    for o, n, d in zip(optima, nvars["N"], nvars["D"]):
        if d == tokens_proxy:  # the loss law is across N at the largest token budget
            best[n] = min(best.get(n, math.inf), o.best_grid_loss)
    if len(best) < 4:
        notes.append(f"no loss prediction: L = a N^b + c (3 parameters) needs 4 or more sizes, the sweep has "
                     f"{len(best)}")
        return None
    law = fit_saturating_power_law(list(best), list(best.values()), confidence=confidence)
    lo_l, hi_l = law.interval(n_target, confidence)
    if tokens is not None and tokens != tokens_proxy:
        notes.append(f"expected loss is for the proxies' token budget ({tokens_proxy:.3g}); a tokens axis in "
                     "the sweep is needed to predict it at another budget")
    return LossEstimate(value=float(law.predict(n_target)), interval=(float(lo_l), float(hi_l)), law=str(law),
                        at_tokens=tokens_proxy, fit=law)


def _program_sizes(records: list[dict[str, Any]], optima: list[Any], first: Any, width: int, depth: int,
                   params: float | None, notes: list[str]) -> tuple[dict[str, list[float]], float, bool]:
    """N and D of each optimum of a program sweep, from what its trials stored, and the target's N.

    The target's N is ``params`` when given; else a fit of the stored counts against width at the proxies'
    depth, ``N = a w^2 + b w (+ c with 3 or more widths)``, exact for the usual layers (every weight
    matrix is width x width, width x fixed or fixed x width)."""
    nvars: dict[str, list[float]] = {"N": [], "D": [], "B": []}
    tokens_known = True
    for o in optima:
        same = [r for r in records if r.get("status") in ("complete", "diverged")
                and all(r.get(k) == v for k, v in o.group.items())]
        counts = [r["params"] for r in same if r.get("params")]
        if not counts:
            raise ValueError(f"the program stored no parameter count for {o.group or 'its trials'}: call "
                             "trial.parameterize(model, base) (it records the count) or trial.set(n_params=...)")
        nvars["N"].append(float(np.median(counts)))
        tokens = [r["tokens"] for r in same if r.get("tokens")]
        tokens_known = tokens_known and bool(tokens)
        nvars["D"].append(float(np.median(tokens)) if tokens else 1.0)
        nvars["B"].append(1.0)
    if not tokens_known:
        nvars["D"] = [1.0] * len(optima)
    if params is not None:
        return nvars, float(params), tokens_known
    depths = {int(o.group.get("depth", first.depth)) for o in optima}
    pairs = sorted({(int(o.group.get("width", first.width)), n) for o, n in zip(optima, nvars["N"])
                    if int(o.group.get("depth", first.depth)) == depth})
    widths = sorted({w for w, _ in pairs})
    if len(widths) < 2:
        raise ValueError(f"cannot count the target's parameters: the program's model is its own, and the sweep "
                         f"has {len(widths)} width(s) at depth {depth} (depths swept: {sorted(depths)}) to fit "
                         "the count on; give it: proxytune predict ... --params N")
    w = np.asarray([p[0] for p in pairs], dtype=float)
    n = np.asarray([p[1] for p in pairs], dtype=float)
    cols = [w ** 2, w] + ([np.ones_like(w)] if len(widths) >= 3 else [])
    coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), n, rcond=None)
    target = float(sum(c * x for c, x in zip(coef, [width ** 2, width, 1.0])))
    notes.append(f"target parameters {target:.4g}: fitted on the proxies' stored counts, N = a w^2 + b w"
                 + (" + c" if len(widths) >= 3 else "") + f" at depth {depth} (--params to give it)")
    return nvars, target, tokens_known


def _line_through_draws(optima: list[Any], ns: list[float], n_target: float,
                        confidence: float) -> tuple[float, float, float, float]:
    """(value, lo, hi, slope) at ``n_target`` of the least-squares line of the optima against log2 N."""
    x = np.log2(np.asarray(ns, dtype=float))
    dx = math.log2(n_target) - float(x.mean())
    point = np.asarray([[o.value for o in optima]])
    rng = np.random.default_rng(0)
    draws = np.stack([optimum_draws(o, 1000, rng)[0] for o in optima], axis=1)
    slope = float(lsq_slope(x, point)[0])
    at_target = draws.mean(axis=1) + lsq_slope(x, draws) * dx
    value = float(point.mean()) + slope * dx
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(at_target, [tail, 100 - tail])
    return value, float(min(lo, value)), float(max(hi, value)), slope


def _fmt_size(group: dict[str, Any]) -> str:
    return " ".join(f"{k} {v}" for k, v in group.items()) or "the only size"


def _swept(optima: list[Any], first: Any, axis: str) -> list[Any]:
    return [o.group.get(axis, getattr(first, axis)) for o in optima]


def trust_warnings(result: Prediction | Mapping[str, Any], hp: str = "log2_lr") -> list[str]:
    """What limits the trust in a prediction, in words, each with what to do about it.

    Flags (limits from :mod:`proxytune.thresholds`): an HP interval wider than
    ``max_trusted_interval_octaves``; a target deeper or shallower than every
    proxy; a batch or token budget outside the swept ones; a width more than
    ``max_width_extrapolation`` times the largest proxy's; a base too shallow for a depth recipe.
    ``result`` is a :class:`Prediction` (or its dict form).
    """
    if isinstance(result, Mapping):
        result = _prediction_of(result)
    th = THRESHOLDS
    out = []
    lo, hi = result.hp.interval
    px, t = result.proxies, result.target
    if hp.startswith("log2_") and hi - lo > th.max_trusted_interval_octaves:
        out.append(f"the {hp[5:]} interval spans a factor {2 ** (hi - lo):.0f} ({hi - lo:.1f} octaves, more than "
                   f"{th.max_trusted_interval_octaves:g}): do not stake a large run on it yet; run more seeds (now "
                   f"{px.seeds}), more proxy widths (now {len(px.widths)}) or longer proxy runs"
                   + (f" (now {px.tokens:.3g} tokens)" if px.tokens is not None else "")
                   + ", then predict again")
    depths = px.depths
    if depths and not depths[0] <= t.depth <= depths[-1]:
        out.append(f"depth {t.depth} was never swept (proxies: depth {', '.join(map(str, depths))}): the "
                   f"prediction assumes the recipe's depth rule holds that far; sweep a depth axis (or check it "
                   f"with proxytune coord-check --depths) before trusting it")
    widths = px.widths
    if widths and t.width > th.max_width_extrapolation * widths[-1]:
        out.append(f"width {t.width} is {t.width / widths[-1]:.0f}x the largest proxy ({widths[-1]}), more "
                   f"than {th.max_width_extrapolation:g}x: add a wider proxy to shorten the extrapolation")
    if t.tokens is not None and px.tokens is not None and t.tokens > px.tokens * (1 + 1e-9):
        out.append(f"the target trains on {t.tokens:.3g} tokens, the proxies on at most {px.tokens:.3g}: "
                   "beyond the swept token budgets (see the notes, or the lr's source, for how the LR was moved)")
    shallow = shallow_base_warning(result.recipe.recipe, px.base_depth, t.depth, px.base_residual)
    if shallow:
        out.append(shallow)
    b = px.batch_tokens
    if b and t.batch_tokens is not None and not b[0] * (1 - 1e-9) <= t.batch_tokens <= b[-1] * (1 + 1e-9):
        out.append(f"a batch of {t.batch_tokens:.3g} tokens per step is outside the swept ones "
                   f"({', '.join(f'{x:g}' for x in b)}): the LR depends on the batch; sweep a batch_size axis (in a tune "
                   "file: larger horizon.batches)")
    return out


def _prediction_of(d: Mapping[str, Any]) -> Prediction:
    """A :class:`Prediction` from a dict form, the entries :func:`trust_warnings` does not read filled in."""
    t, px, h = d["target"], d["proxies"], d["hp"]
    target = TargetSize(width=t["width"], depth=t["depth"], params=t.get("params", 0), tokens=t["tokens"],
                        batch_tokens=t["batch_tokens"])
    proxies = ProxySummary(widths=tuple(px["widths"]), depths=tuple(px["depths"]), base_depth=px.get("base_depth"),
                           base_residual=px.get("base_residual", 1.0), tokens=px["tokens"],
                           batch_tokens=tuple(px["batch_tokens"]), seeds=px["seeds"])
    hp = HPEstimate(name=h.get("name", "log2_lr"), value=h.get("value", math.nan), interval=tuple(h["interval"]),
                    confidence=h.get("confidence", 0.9))
    r = d.get("recipe") or {}
    recipe = RecipeRef(recipe=r.get("recipe", ""), optimizer=r.get("optimizer", ""), sweep=r.get("sweep", ""))
    return Prediction(target, hp, None, (), recipe, proxies, (), None)


def target_plan(sweep: Sweep, width: int, depth: int, hp: HPEstimate | Mapping[str, Any],
                path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The target's per-tensor plan (role, init, lr, wd, eps) as a dict, optionally saved as JSON.

    ``hp`` is the prediction's :class:`HPEstimate` (or its dict form): when it is the LR, the plan's groups and
    the training code use it; else the sweep's ``train.lr``. ``overrides``: TrainConfig fields of the target run
    that differ from the proxies' (``batch_size``, ``steps``, ``weight_decay``, ``betas``...), which the plan's
    groups and the training code then use."""
    if isinstance(hp, Mapping):
        hp = HPEstimate(name=hp["name"], value=hp["value"], interval=tuple(hp["interval"]),
                        confidence=hp.get("confidence", 0.9))
    cfg = sweep.cfg
    first = base_config(cfg)
    if overrides:
        first = first.model_copy(update=dict(overrides))
    options = dict(first.model_options)
    if first.model in ("gpt", "moe"):
        options.setdefault("seq_len", first.seq_len)
    builder = load_builder(first.model)
    base = build_model(builder, first.base_width or first.width, first.base_depth or first.depth, "cpu", options)
    target = build_model(builder, width, depth, "meta", options)
    plan = parameterize(target, base, recipe=first.recipe, optimizer=first.optimizer, mode=first.mode,
                        alignment=first.alignment, weight_decay=first.weight_decay_policy,
                        roles=first.roles or None, multipliers=first.multipliers())
    lr = hp.lr if hp.lr is not None else first.lr
    d = plan.to_dict()
    hparams = first.group_kwargs(lr)  # the base eps and Muon's matrix LR, as the proxies' trainer gives them
    d["base_hparams"] = {"lr": lr, "weight_decay": first.weight_decay,
                         **{k: v for k, v in hparams.items() if v is not None or k == "eps"}}
    d["groups"] = [{k: v for k, v in g.items() if k != "params"}
                   for g in plan.param_groups(lr, first.weight_decay, model=target, **hparams)]
    if path is not None:
        Path(path).write_text(json.dumps(d, indent=1, default=str))
    if hp.lr is None:
        source = f"the sweep's train.lr: the prediction was for {hp.name}, not the LR"
    else:
        source = (f"the LR predicted for this target (width {width}, depth {depth})"
                  + (f": {hp.source}" if hp.source else " from the sweep's optima"))
    d["snippet"] = training_snippet(first, width=width, depth=depth, lr=lr,
                                    params=sum(p.numel() for p in target.parameters()), lr_source=source)
    return d

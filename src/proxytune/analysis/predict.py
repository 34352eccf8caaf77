"""Predict the target: HPs and expected loss from a sweep's fitted laws, and the target's per-tensor plan.

Where the sweep has data for an axis, its fitted law is used; where it has
none (e.g. the target trains on more tokens than the proxies), a rule of
thumb fills in and the result says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..builders import build_model, load_builder
from ..sweep import Sweep
from ..sweep.config import base_config
from .laws import fit_log_linear, fit_saturating_power_law
from .optimum import optima_by_group
from .rules_of_thumb import apply_rule


def count_params(model_name: str, width: int, depth: int, options: dict[str, Any]) -> int:
    model = build_model(load_builder(model_name), width, depth, "meta", options)
    return sum(p.numel() for p in model.parameters())


def predict_from_sweep(sweep: Sweep, width: int, depth: int | None = None, tokens: float | None = None,
                       hp: str = "log2_lr", confidence: float = 0.9, plan_path: str | Path | None = None,
                       batch_tokens: float | None = None) -> dict[str, Any]:
    """HPs, expected loss (with intervals) and per-tensor plan for a target of ``width`` x ``depth``.

    The optimal HP follows ``log hp* = log c + sum_k alpha_k log X_k`` over the
    variables the sweep varied among N (parameters), D (tokens) and B (tokens
    per step), fitted on the per-size optima; the loss follows Mu-scaling
    ``L = a N^b + c`` over the best loss per N.
    """
    cfg = sweep.cfg
    first = base_config(cfg)
    depth = depth or first.depth
    records = sweep.records()
    if not any(hp in r for r in records):
        raise ValueError(f"the sweep has no axis {hp!r} to predict")
    optima = [o for o in optima_by_group(records, hp) if math.isfinite(o.value)]
    if not optima:
        raise ValueError("no completed trials with a finite loss in this sweep yet")
    options = dict(first.model_options)
    if first.model in ("gpt", "moe"):
        options.setdefault("seq_len", first.seq_len)
    # Each optimum's N (parameters), D (training tokens) and B (tokens per step).
    nvars: dict[str, list[float]] = {"N": [], "D": [], "B": []}
    for o in optima:
        g = {**first.model_dump(), **o.group}
        nvars["N"].append(count_params(first.model, int(g["width"]), int(g["depth"]), options))
        per_step = int(g["batch_size"]) * (int(g["seq_len"]) if first.data != "teacher" else 1)
        nvars["B"].append(per_step)
        nvars["D"].append(int(g["steps"]) * per_step)
    n_target = count_params(first.model, width, depth, options)
    tokens_proxy = max(nvars["D"])
    target_vars = {"N": n_target, "D": tokens if tokens is not None else tokens_proxy,
                   "B": batch_tokens if batch_tokens is not None else max(nvars["B"])}
    varying = [k for k, v in nvars.items() if len(set(v)) >= 2]
    notes: list[str] = []
    out: dict[str, Any] = {"target": {"width": width, "depth": depth, "params": n_target,
                                      "tokens": target_vars["D"], "batch_tokens": target_vars["B"]}}
    ys = [2.0 ** o.value for o in optima] if hp.startswith("log2_") else [o.value for o in optima]
    if varying and len(optima) >= len(varying) + 2 and len(set(nvars["N"])) >= 2:
        law = fit_log_linear({k: nvars[k] for k in varying}, ys, confidence=confidence,
                             y_name=hp[5:] + "*" if hp.startswith("log2_") else hp)
        at = {k: target_vars[k] for k in varying}
        value = float(math.log2(law.predict(at)))
        lo, hi = (float(math.log2(v)) for v in law.interval(at, confidence))
        notes.append(f"{hp} from the law fitted on {len(optima)} optima: {law}")
    else:
        largest = max(optima, key=lambda o: nvars["N"][optima.index(o)])
        value, (lo, hi) = largest.value, largest.interval
        notes.append(f"{hp} transferred from the largest proxy ({len(optima)} optima; a law in "
                     f"{', '.join(varying) or 'N'} needs {len(varying or ['N']) + 2} or more)")
    if tokens is not None and "D" not in varying and hp == "log2_lr" and tokens != tokens_proxy:
        lr = apply_rule("token-horizon", lr_ref=2.0 ** value, tokens_ref=tokens_proxy, tokens=tokens)["lr"]
        shift = math.log2(lr) - value
        value, lo, hi = value + shift, lo + shift, hi + shift
        notes.append(f"the sweep has no data on tokens: moved by {shift:+.2f} octaves from {tokens_proxy:.3g} to "
                     f"{tokens:.3g} tokens with the token-horizon rule (Bjorck et al. 2024, lr ∝ D^-0.32)")
    ns = nvars["N"]
    out["hp"] = {"name": hp, "value": value, "interval": [lo, hi], "confidence": confidence}
    if hp.startswith("log2_"):
        out["hp"].update({hp[5:]: 2.0 ** value, f"{hp[5:]}_interval": [2.0 ** lo, 2.0 ** hi]})
    best = {}
    for o, n, d in zip(optima, ns, nvars["D"]):
        if d == tokens_proxy:  # the loss law is across N at the largest token budget
            best[n] = min(best.get(n, math.inf), o.best_grid_loss)
    if len(best) >= 4:
        law = fit_saturating_power_law(list(best), list(best.values()), confidence=confidence)
        lo_l, hi_l = law.interval(n_target, confidence)
        out["loss"] = {"value": float(law.predict(n_target)), "interval": [float(lo_l), float(hi_l)],
                       "law": str(law), "at_tokens": tokens_proxy, "fit": law}
        if tokens is not None and tokens != tokens_proxy:
            notes.append(f"expected loss is for the proxies' token budget ({tokens_proxy:.3g}); a tokens axis in "
                         "the sweep is needed to predict it at another budget")
    else:
        out["loss"] = None
        notes.append(f"no loss prediction: L = a N^b + c (3 parameters) needs 4 or more sizes, the sweep has "
                     f"{len(best)}")
    out["notes"] = notes
    out["plan"] = target_plan(sweep, width, depth, out["hp"], plan_path)
    return out


def target_plan(sweep: Sweep, width: int, depth: int, hp: dict[str, Any],
                path: str | Path | None = None) -> dict[str, Any]:
    """The target's per-tensor plan (role, init, lr, wd, eps) as a dict, optionally saved as JSON."""
    from ..plan import parameterize

    cfg = sweep.cfg
    first = base_config(cfg)
    options = dict(first.model_options)
    if first.model in ("gpt", "moe"):
        options.setdefault("seq_len", first.seq_len)
    builder = load_builder(first.model)
    base = build_model(builder, first.base_width or first.width, first.base_depth or first.depth, "cpu", options)
    target = build_model(builder, width, depth, "meta", options)
    plan = parameterize(target, base, recipe=first.recipe, optimizer=first.optimizer, mode=first.mode,
                        alignment=first.alignment, weight_decay=first.weight_decay_policy)
    lr = hp.get("lr", first.lr)
    d = plan.to_dict()
    d["base_hparams"] = {"lr": lr, "weight_decay": first.weight_decay, "eps": first.eps}
    d["groups"] = [{k: v for k, v in g.items() if k != "params"}
                   for g in plan.param_groups(lr, first.weight_decay, eps=first.eps, model=target)]
    if path is not None:
        import json

        Path(path).write_text(json.dumps(d, indent=1, default=str))
    if first.model in ("gpt", "mlp", "moe"):
        imports, fn = f"from proxytune.models import {first.model}\n", f"{first.model}.build"
    else:
        module, fn = first.model.split(":", 1)
        imports = f"from {module} import {fn}\n"
    opts = "".join(f", {k}={v!r}" for k, v in options.items())
    d["snippet"] = (
        f"import proxytune as pt\n{imports}\n"
        f"target = {fn}(width={width}, depth={depth}{opts})\n"
        f"base = {fn}(width={first.base_width or first.width}, depth={first.base_depth or first.depth}{opts}, "
        "device=\"meta\")\n"
        f"plan = pt.parameterize(target, base, recipe=\"{first.recipe}\", optimizer=\"{first.optimizer}\")\n"
        f"opt = plan.optimizer(lr={lr:.4g}, weight_decay={first.weight_decay:g})\n")
    return d

"""Adam eps check: does eps swamp the second moment at large width?

Adam divides by ``sqrt(v_hat) + eps``. Under muP-like parameterizations the
gradient RMS of most tensors shrinks with width, so a width-independent eps
ends up comparable to ``sqrt(v_hat)`` and silently turns Adam into SGD with a
tiny LR (Everett et al. 2024). :func:`eps_check` trains a few steps at several
widths and reports, per tensor, the fraction of entries with
``eps >= 0.1 * sqrt(v_hat)`` (``v_hat = exp_avg_sq / (1 - beta2^t)``, eps = the
tensor's param-group eps). A tensor is flagged when the fraction exceeds
``max_fraction`` at any width or grows with width by more than ``growth``.
Optimizers without eps (Adam-atan2, SGD) report "not applicable" and pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..optim.registry import has_eps
from .spectral import _ProxyRun, _train_proxy, format_table

__all__ = ["EpsCheck", "eps_check", "eps_fractions"]

ADVICE = "scale eps with the gradient (the plan's eps) or use adam-atan2"


def eps_fractions(optimizer: torch.optim.Optimizer, names: dict[int, str], ratio: float = 0.1) -> dict[str, dict[str, Any]] | None:
    """Per tensor (named through ``names``: id(param) -> name): the fraction of
    entries with ``eps >= ratio * sqrt(v_hat)`` among the entries that received a
    gradient (``v_hat > 0``), the group's eps, the median ``sqrt(v_hat)`` and
    the fraction of entries that never received a gradient (``zero_grad_frac``,
    e.g. embedding rows of unseen tokens). None when the optimizer keeps no ``exp_avg_sq``/eps."""
    out: dict[str, dict[str, Any]] = {}
    for g in optimizer.param_groups:
        eps = g.get("eps")
        if eps is None or isinstance(eps, tuple) or "betas" not in g:
            continue
        beta2 = g["betas"][1]
        for p in g["params"]:
            st = optimizer.state.get(p, {})
            if "exp_avg_sq" not in st or "step" not in st:
                continue
            t = float(st["step"])
            v_hat = st["exp_avg_sq"].double() / (1.0 - beta2 ** t)
            root = v_hat.sqrt()
            live = root > 0  # entries that never got a gradient (unseen tokens) are not an eps problem
            n_live = int(live.sum())
            frac = float((eps >= ratio * root[live]).double().mean()) if n_live else 0.0
            out[names.get(id(p), f"param{len(out)}")] = {
                "eps": float(eps), "frac": frac,
                "sqrt_v_median": float(root[live].median()) if n_live else 0.0,
                "zero_grad_frac": 1.0 - n_live / max(1, root.numel()), "step": int(t)}
    return out or None


@dataclass
class EpsCheck:
    """Result of :func:`eps_check`.

    ``records``: one dict per (width, tensor) with ``eps``, ``frac`` (the
    fraction of entries where eps >= 0.1 sqrt(v_hat)) and the median
    ``sqrt(v_hat)``. ``flagged``: tensors whose fraction exceeds
    ``max_fraction`` or grows with width. ``applicable`` is False for
    optimizers without eps (then ``passed`` is True).
    """

    recipe: str
    optimizer: str
    widths: list[int]
    records: list[dict[str, Any]]
    flagged: list[str]
    applicable: bool
    passed: bool
    line: str
    summary: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        if not self.applicable:
            return self.line
        return format_table(self.summary, ["tensor", "role", "eps_at_max", "frac_at_min", "frac_at_max",
                                           "growth", "flagged"]) + "\n" + self.line


def eps_check(
    widths: Sequence[int] = (32, 64, 128, 256), *, model: str = "gpt", depth: int = 1,
    base_width: int | None = None, recipe: str = "mup", optimizer: str = "adam", lr: float = 1e-2,
    eps: float | None = None, eps_mode: str = "plan", steps: int = 3, seed: int = 0, batch_size: int = 8,
    seq_len: int = 32, ratio: float = 0.1, max_fraction: float = 0.1, growth: float = 0.05,
    model_options: dict[str, Any] | None = None,
) -> EpsCheck:
    """Train ``steps`` steps at each width and measure where eps dominates Adam's denominator.

    ``eps`` is the base eps the plan scales per tensor (``eps_mode="plan"``)
    or, with ``eps_mode="constant"``, one value used for every tensor at every
    width (what a plain ``torch.optim.Adam(eps=...)`` does).

    Many parameters because: each is an independent, documented knob of the
    public call; internally the proxy's travel as one ``_ProxyRun``.
    """
    widths = sorted(int(w) for w in widths)
    run = _ProxyRun(model=model, depth=depth, base_width=widths[0] if base_width is None else base_width,
                    recipe=recipe, optimizer=optimizer, lr=lr, steps=steps, seed=seed, batch_size=batch_size,
                    seq_len=seq_len, eps=eps, model_options=model_options,
                    eps_mode=eps_mode if has_eps(optimizer) else "plan")
    records: list[dict[str, Any]] = []
    applicable = True
    for w in widths:
        net, plan, _, opt = _train_proxy(replace(run, width=w))
        params = plan.parameters(net)
        names = {id(p): n for n, p in params.items()}
        fr = eps_fractions(opt, names, ratio)
        if fr is None:
            applicable = False
            break
        for name, d in fr.items():
            records.append({"width": w, "tensor": name, "role": plan.tensors[name].role
                            if name in plan.tensors else "?", **d})
    span = f"widths {widths[0]}..{widths[-1]}"
    if not applicable:
        line = (f"eps check: not applicable ({optimizer} has no eps in its update: no eps) -- passed")
        return EpsCheck(recipe=recipe, optimizer=optimizer, widths=widths, records=[], flagged=[],
                        applicable=False, passed=True, line=line)
    summary, flagged = [], []
    for name in dict.fromkeys(r["tensor"] for r in records):
        rs = sorted((r for r in records if r["tensor"] == name), key=lambda r: r["width"])
        fracs = [r["frac"] for r in rs]
        grow = fracs[-1] - fracs[0] if len(fracs) > 1 else 0.0
        slope = (float(np.polyfit(np.log([r["width"] for r in rs]), fracs, 1)[0]) if len(rs) > 1 else 0.0)
        bad = max(fracs) > max_fraction or (grow > growth and slope > 0)
        summary.append({"tensor": name, "role": rs[-1]["role"], "eps_at_max": rs[-1]["eps"],
                        "frac_at_min": fracs[0], "frac_at_max": fracs[-1], "growth": grow,
                        "slope_per_log_width": slope, "flagged": bad})
        if bad:
            flagged.append(name)
    passed = not flagged
    if passed:
        worst = max((s["frac_at_max"] for s in summary), default=0.0)
        line = (f"eps check passed ({recipe}/{optimizer}, {span}): eps stays below {ratio:g} sqrt(v_hat) "
                f"(worst fraction of entries {worst:.3f})")
    else:
        top = sorted((s for s in summary if s["flagged"]), key=lambda s: -s["frac_at_max"])
        desc = ", ".join(f"{s['tensor']} ({s['frac_at_min']:.2f}->{s['frac_at_max']:.2f})" for s in top[:5])
        more = f" and {len(top) - 5} more" if len(top) > 5 else ""
        line = (f"eps check FAILED ({recipe}/{optimizer}, {span}): eps >= {ratio:g} sqrt(v_hat) on a large or "
                f"growing fraction of entries in {desc}{more}; {ADVICE}")
    return EpsCheck(recipe=recipe, optimizer=optimizer, widths=widths, records=records, flagged=flagged,
                    applicable=True, passed=passed, line=line, summary=summary)

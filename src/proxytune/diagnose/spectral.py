"""Spectral check: do ``||W||`` and ``||dW||`` follow ``sqrt(fan_out / fan_in)`` across width?

Yang, Simon & Bernstein (2023), "A Spectral Condition for Feature Learning":
feature learning at every width needs, for every weight matrix, the operator
norms ``||W||_2`` and ``||dW||_2 = ||W - W0||_2`` to be of order
``sqrt(fan_out / fan_in)``. :func:`spectral_check` trains a short proxy at
several widths, divides both norms by that target (fans from the plan, never
from the tensor's dimension order) and fits a log-log slope across widths per
tensor: a width-transferable parameterization gives slopes near 0 for the
normalized update norm.

:func:`train_proxy` is the shared setup for the diagnostics in this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from ..plan import parameterize
from ..builders import build_model, load_builder
from ..data import load
from ..modelspec import ModelStructure

__all__ = ["SpectralCheck", "format_table", "loglog_slope", "spectral_check", "train_proxy"]


@lru_cache(maxsize=1)
def _corpus():
    return load("stdlib")


@dataclass(frozen=True)
class _ProxyRun:
    """One proxy run of :func:`train_proxy` (see its docstring for each field)."""

    model: str = "gpt"
    width: int = 64
    depth: int = 1
    base_width: int = 32
    base_depth: int | None = None
    recipe: str = "mup"
    optimizer: str = "adam"
    lr: float = 1e-2
    steps: int = 5
    seed: int = 0
    batch_size: int = 8
    seq_len: int = 32
    eps: float | None = None
    model_options: dict[str, Any] | None = None
    eps_mode: str = "plan"
    structure: Any = None


def train_proxy(
    model: str = "gpt", width: int = 64, depth: int = 1, base_width: int = 32, base_depth: int | None = None,
    recipe: str = "mup", optimizer: str = "adam", lr: float = 1e-2, steps: int = 5, seed: int = 0,
    batch_size: int = 8, seq_len: int = 32, eps: float | None = None,
    model_options: dict[str, Any] | None = None, eps_mode: str = "plan", structure: Any = None,
) -> tuple[nn.Module, Any, dict[str, torch.Tensor], torch.optim.Optimizer]:
    """Build, parameterize and train a language-model proxy for ``steps`` steps.

    The target (``width`` x ``depth``) and the base (``base_width`` x
    ``base_depth``, default ``depth``) are built on CPU from a seeded RNG; the
    target is parameterized with ``recipe``/``optimizer`` and trained on
    seeded batches of the built-in ``stdlib`` byte corpus.

    ``eps`` is the base Adam eps (the plan scales it per tensor). With
    ``eps_mode="constant"`` every group's eps is overwritten with ``eps`` after
    the optimizer is built (a width-independent eps, to show what the plan's
    scaling prevents).

    ``structure`` (:class:`proxytune.modelspec.ModelStructure`) says how to read a user's model (roles,
    targets argument...).

    Returns ``(model, plan, init_state, optimizer)``; ``init_state`` maps each
    planned tensor name to a copy of its weights right after parameterization.

    Many parameters because: each is an independent knob of a public call
    that callers pass by position; internally they travel as one
    ``_ProxyRun``.
    """
    return _train_proxy(_ProxyRun(model=model, width=width, depth=depth, base_width=base_width,
                                  base_depth=base_depth, recipe=recipe, optimizer=optimizer, lr=lr, steps=steps,
                                  seed=seed, batch_size=batch_size, seq_len=seq_len, eps=eps,
                                  model_options=model_options, eps_mode=eps_mode, structure=structure))


def _train_proxy(run: _ProxyRun) -> tuple[nn.Module, Any, dict[str, torch.Tensor], torch.optim.Optimizer]:
    """:func:`train_proxy` of one run."""

    if run.eps_mode not in ("plan", "constant"):
        raise ValueError(f"eps_mode must be 'plan' or 'constant', got {run.eps_mode!r}")
    if run.eps_mode == "constant" and run.eps is None:
        raise ValueError("eps_mode='constant' needs eps=<value>")
    corpus = _corpus()
    options = dict(run.model_options or {})
    fn = load_builder(run.model)
    if run.model == "gpt":
        options.setdefault("seq_len", max(run.seq_len, 64))
        options.setdefault("vocab", corpus.vocab_size)
    torch.manual_seed(run.seed)
    base = build_model(fn, run.base_width, run.depth if run.base_depth is None else run.base_depth, "cpu", options)
    torch.manual_seed(run.seed)
    target = build_model(fn, run.width, run.depth, "cpu", options)
    structure = run.structure or ModelStructure()
    forward = structure.forward()
    plan = parameterize(target, base, recipe=run.recipe, optimizer=run.optimizer, seq_len=run.seq_len,
                        **structure.plan_kwargs())
    params = plan.parameters(target)
    init_state = {name: params[name].detach().clone() for name in plan.tensors}
    opt = plan.optimizer(lr=run.lr, eps=run.eps if run.eps_mode == "plan" else None)
    if run.eps_mode == "constant":
        for g in opt.param_groups:
            if "eps" in g:
                g["eps"] = float(run.eps)
    gen = torch.Generator().manual_seed(run.seed + 1)
    target.train()
    for _ in range(run.steps):
        x, y = corpus.sample("train", run.batch_size, run.seq_len, gen)
        logits = forward.logits(forward.call(target, x, y))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return target, plan, init_state, opt


def probe_batch(batch_size: int = 8, seq_len: int = 32, seed: int = 12345) -> torch.Tensor:
    """A fixed validation batch of token ids (the same at every width)."""
    x, _ = _corpus().sample("val", batch_size, seq_len, torch.Generator().manual_seed(seed))
    return x


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor's entries, in float64."""
    return float(t.detach().double().pow(2).mean().sqrt())


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (nan when undefined)."""
    xs_, ys_ = np.asarray(xs, float), np.asarray(ys, float)
    ok = (xs_ > 0) & (ys_ > 0) & np.isfinite(ys_)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs_[ok]), np.log(ys_[ok]), 1)[0])


def format_table(records: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Fixed-width text table of ``records`` restricted to ``columns``."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    rows = [[fmt(r.get(c, "")) for c in columns] for r in records]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*columns), line.format(*("-" * w for w in widths))]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)


@dataclass
class SpectralCheck:
    """Result of :func:`spectral_check`.

    ``records``: one dict per (width, tensor) with the raw and normalized
    spectral norms of ``W`` and ``dW``. ``slopes``: one dict per tensor with
    the log-log slopes across width and whether it passes. ``line``: one-line
    verdict. ``table()``: the per-tensor slope table. ``figure(path)``:
    normalized norms against width on log axes.
    """

    recipe: str
    optimizer: str
    widths: list[int]
    tolerance: float
    records: list[dict[str, Any]]
    slopes: list[dict[str, Any]]
    passed: bool
    line: str
    failing: list[str] = field(default_factory=list)

    def table(self) -> str:
        return format_table(self.slopes, ["tensor", "role", "fan_in", "fan_out", "slope_W", "slope_dW",
                                          "dW_norm_at_max", "ok"]) + "\n" + self.line

    def figure(self, path: str | Path) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for s in self.slopes:
            rs = [r for r in self.records if r["tensor"] == s["tensor"]]
            w = [r["width"] for r in rs]
            axes[0].loglog(w, [r["W_norm"] for r in rs], "o-", label=s["tensor"])
            axes[1].loglog(w, [r["dW_norm"] for r in rs], "o-", label=s["tensor"])
        axes[0].set_title("||W|| / sqrt(fan_out/fan_in)")
        axes[1].set_title("||dW|| / sqrt(fan_out/fan_in)")
        for ax in axes:
            ax.set_xlabel("width")
        axes[1].legend(fontsize=6)
        fig.suptitle(f"spectral check: {self.recipe} / {self.optimizer}")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def spectral_check(
    widths: Sequence[int] = (32, 64, 128, 256), *, model: str = "gpt", depth: int = 1,
    base_width: int | None = None, recipe: str = "mup", optimizer: str = "adam", lr: float = 1e-2,
    steps: int = 5, seed: int = 0, batch_size: int = 8, seq_len: int = 32, tolerance: float = 0.3,
    model_options: dict[str, Any] | None = None,
) -> SpectralCheck:
    """Train ``steps`` steps at each width and test the spectral condition.

    Every tensor with 2 dimensions is measured: ``||W||_2`` and
    ``||W - W0||_2`` (top singular value, ``torch.linalg.matrix_norm(ord=2)``),
    each divided by ``sqrt(fan_out / fan_in)`` with the plan's fans. A tensor
    passes when the log-log slope of its normalized ``||dW||`` across widths
    lies within ``+-tolerance``.

    Many parameters because: each is an independent, documented knob of the
    public call; internally the proxy's travel as one ``_ProxyRun``.
    """
    widths = sorted(int(w) for w in widths)
    if len(widths) < 2:
        raise ValueError("spectral_check needs at least two widths")
    run = _ProxyRun(model=model, depth=depth, base_width=widths[0] if base_width is None else base_width,
                    recipe=recipe, optimizer=optimizer, lr=lr, steps=steps, seed=seed, batch_size=batch_size,
                    seq_len=seq_len, model_options=model_options)
    records = _spectral_records(run, widths)
    slopes = _spectral_slopes(records, tolerance)
    failing = [s["tensor"] for s in slopes if not s["ok"]]
    passed = not failing
    span = f"widths {widths[0]}..{widths[-1]}"
    if passed:
        line = (f"spectral check passed ({recipe}/{optimizer}, {span}): ||dW||/sqrt(fan_out/fan_in) is "
                f"width-independent (|slope| <= {tolerance:g}) for all {len(slopes)} matrices")
    else:
        worst = sorted((s for s in slopes if not s["ok"]), key=lambda s: -abs(s["slope_dW"]))
        desc = ", ".join(f"{s['tensor']} (slope {s['slope_dW']:+.2f})" for s in worst[:5])
        more = f" and {len(worst) - 5} more" if len(worst) > 5 else ""
        grows = any(s["slope_dW"] > 0 for s in worst)
        fix = ("the update grows with width: scale these tensors' LR down with fan_in (use recipe mup)"
               if grows else "the update shrinks with width: these tensors stop learning at large width; "
               "raise their LR exponent (use recipe mup)")
        line = f"spectral check FAILED ({recipe}/{optimizer}, {span}): {desc}{more}; {fix}"
    return SpectralCheck(recipe=recipe, optimizer=optimizer, widths=widths, tolerance=tolerance,
                         records=records, slopes=slopes, passed=passed, line=line, failing=failing)


def _spectral_records(run: _ProxyRun, widths: list[int]) -> list[dict[str, Any]]:
    """One record per (width, matrix): ``||W||_2`` and ``||W - W0||_2`` after the run at that width, raw and
    divided by ``sqrt(fan_out / fan_in)``."""
    records: list[dict[str, Any]] = []
    for w in widths:
        net, plan, init, _ = _train_proxy(replace(run, width=w))
        params = plan.parameters(net)
        for name, tp in plan.tensors.items():
            p = params[name].detach()
            if p.dim() != 2:
                continue
            target = math.sqrt(tp.fan_out / tp.fan_in)
            with torch.no_grad():
                wn = float(torch.linalg.matrix_norm(p.double(), ord=2))
                dwn = float(torch.linalg.matrix_norm((p - init[name]).double(), ord=2))
            records.append({"width": w, "tensor": name, "role": tp.role, "fan_in": tp.fan_in,
                            "fan_out": tp.fan_out, "target": target, "W_norm_raw": wn, "dW_norm_raw": dwn,
                            "W_norm": wn / target, "dW_norm": dwn / target})
    return records


def _spectral_slopes(records: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """One row per matrix: the log-log slopes of its normalized norms across widths, ``ok`` when the update's
    is within ``+-tolerance``."""
    slopes: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["tensor"] for r in records):
        rs = [r for r in records if r["tensor"] == name]
        ws = [r["width"] for r in rs]
        s_w = loglog_slope(ws, [r["W_norm"] for r in rs])
        s_dw = loglog_slope(ws, [r["dW_norm"] for r in rs])
        ok = bool(np.isfinite(s_dw) and abs(s_dw) <= tolerance)
        slopes.append({"tensor": name, "role": rs[-1]["role"], "fan_in": rs[-1]["fan_in"],
                       "fan_out": rs[-1]["fan_out"], "slope_W": s_w, "slope_dW": s_dw,
                       "dW_norm_at_max": rs[-1]["dW_norm"], "ok": ok})
    return slopes

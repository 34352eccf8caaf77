"""Coordinate check for any ``nn.Module``, measured with forward hooks.

The model is not modified: a forward hook on every leaf module that owns
parameters (and on every residual block ``blocks.N``) records the RMS of its
output on a fixed probe batch at step 0 and after each of a few optimizer
steps. Under a correct parameterization the *change* of each output,
``rms(out(t) - out(0))``, does not depend on the swept size, so its log-log
slope against the size is ~0. A positive slope means the update blows up as
the model grows; a negative one means it vanishes (that layer stops learning).

>>> from proxytune.diagnose import coord_check
>>> cc = coord_check("gpt", widths=[32, 64, 128], recipe="mup", depth=1)
>>> print(cc.line)
>>> print(cc.table())
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..builders import accepts, build_model, load_builder
from ..plan import parameterize
from ..rules.recipes import get_optimizer, get_recipe
from ..shapes import DEFAULT_BLOCK_PATTERN
from ..thresholds import THRESHOLDS
from .spectral import loglog_slope, rms

__all__ = ["CoordCheck", "coord_check"]

#: A residual block itself (``blocks.3``, ``model.layers.0`` ...), matched on the full module name.
BLOCK_MODULE_PATTERN = r"(?:^|\.)(?:layers|blocks|h|layer)\.(\d+)$"
_INSIDE_BLOCK = re.compile(DEFAULT_BLOCK_PATTERN)
_BLOCK = re.compile(BLOCK_MODULE_PATTERN)


@dataclass
class CoordCheck:
    """Result of :func:`coord_check`.

    ``records``: tidy rows ``{axis, size, seed, step, module, rms_out, rms_delta}``
    (``rms_delta`` is NaN at step 0). ``slopes``: one row per (module, step >= 1)
    with ``slope_delta`` / ``slope_out`` (log-log least squares vs size, after
    averaging the RMS over seeds), ``judged`` and ``verdict``
    (``ok``/``blowup``/``vanish``/``not judged``). ``passed`` is True when no
    judged module blows up or vanishes at the last step.
    """

    axis: str
    sizes: list[int]
    recipe: str
    tolerance: float
    records: list[dict[str, Any]]
    slopes: list[dict[str, Any]]
    passed: bool
    blowups: list[str] = field(default_factory=list)
    vanishing: list[str] = field(default_factory=list)
    line: str = ""

    def to_records(self) -> list[dict[str, Any]]:
        """The tidy records (a copy), ready for ``pandas.DataFrame``."""
        return [dict(r) for r in self.records]

    def last_step_slopes(self) -> dict[str, dict[str, Any]]:
        """``{module: slope row}`` at the last step."""
        last = max(s["step"] for s in self.slopes)
        return {s["module"]: s for s in self.slopes if s["step"] == last}

    def table(self) -> str:
        """Text table of the slopes per module at the last step."""
        rows = list(self.last_step_slopes().values())
        head = ("module", f"d log rms_delta / d log {self.axis}", f"d log rms_out / d log {self.axis}", "verdict")
        body = [(r["module"], f"{r['slope_delta']:+.3f}", f"{r['slope_out']:+.3f}", r["verdict"]) for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        sep = "  ".join("-" * w for w in widths)
        lines = [f"coordinate check: recipe={self.recipe} {self.axis}s={self.sizes} tolerance={self.tolerance}",
                 fmt.format(*head), sep]
        lines += [fmt.format(*b) for b in body]
        lines.append(self.line)
        return "\n".join(lines)

    def figure(self, path: str) -> str:
        """Save a PNG: one panel per step, ``rms_delta`` vs size (log-log), a line per module."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        steps = sorted({r["step"] for r in self.records if r["step"] >= 1})
        mean = _mean_over_seeds(self.records, "rms_delta")
        modules = sorted({m for (m, _t, _s) in mean})
        fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.6), squeeze=False, sharey=True)
        for ax, t in zip(axes[0], steps):
            for m in modules:
                ys = [mean.get((m, t, s), float("nan")) for s in self.sizes]
                ax.plot(self.sizes, ys, marker="o", lw=1, label=m)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"step {t}")
            ax.set_xlabel(self.axis)
        axes[0][0].set_ylabel("rms(out(t) - out(0))")
        if len(modules) <= 20:
            axes[0][-1].legend(fontsize=6, loc="best")
        fig.suptitle(self.line, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return str(path)

    def __str__(self) -> str:
        return self.line


# ------------------------------------------------------------------ helpers
def _mean_over_seeds(records: Sequence[dict[str, Any]], key: str) -> dict[tuple[str, int, int], float]:
    acc: dict[tuple[str, int, int], list[float]] = {}
    for r in records:
        acc.setdefault((r["module"], r["step"], r["size"]), []).append(r[key])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _watched_modules(model: nn.Module, globs: Sequence[str] | None) -> dict[str, nn.Module]:
    """Leaf modules owning parameters, plus the residual blocks themselves."""
    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if not name:
            continue
        owns = any(True for _ in mod.parameters(recurse=False))
        leaf = not any(True for _ in mod.children())
        if (owns and leaf) or _BLOCK.search(name) or (owns and not any(
                any(True for _ in c.parameters()) for c in mod.children())):
            if globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs):
                out[name] = mod
    return out


def _group_name(name: str, depth_axis: bool) -> str:
    """For a depth sweep, blocks differ in number, so ``blocks.3.attn.proj``
    becomes ``blocks.*.attn.proj`` (RMS pooled over blocks)."""
    if not depth_axis:
        return name
    name = _BLOCK.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + "*", name)
    return _INSIDE_BLOCK.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + "*.", name)


_GROUP_BLOCK = re.compile(r"(?:^|\.)(?:layers|blocks|h|layer)\.(?:\d+|\*|-1)$")
_GROUP_INSIDE = re.compile(r"(?:^|\.)(?:layers|blocks|h|layer)\.(?:\d+|\*|-1)\.")


def _is_block_output(group: str) -> bool:
    return bool(_GROUP_BLOCK.search(group))


def _inside_block(group: str) -> bool:
    return bool(_GROUP_INSIDE.search(group))


@functools.lru_cache(maxsize=4)
def _corpus(name: str):
    from ..data import load

    return load(name)


class _Task:
    """A fixed training/probe batch and the loss, for LM or vector models."""

    def __init__(self, kind: str, *, seed: int, batch_size: int, seq_len: int, data: str,
                 d_in: int = 16, d_out: int = 4) -> None:
        g = torch.Generator().manual_seed(10_000 + seed)
        self.kind = kind
        if kind == "lm":
            corpus = _corpus(data)
            self.x, self.y = corpus.sample("train", batch_size, seq_len, g)
        else:  # random teacher regression
            self.x = torch.randn(batch_size * seq_len, d_in, generator=g)
            w1 = torch.randn(d_in, 64, generator=g) / math.sqrt(d_in)
            w2 = torch.randn(64, d_out, generator=g) / math.sqrt(64)
            self.y = torch.tanh(self.x @ w1) @ w2

    def loss(self, model: nn.Module) -> torch.Tensor:
        out = _first_tensor(model(self.x))
        if self.kind == "lm":
            return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), self.y.reshape(-1))
        return F.mse_loss(out.float(), self.y)


def _run_one(fn: Callable[..., nn.Module], *, width: int, depth: int, base_width: int, base_depth: int,
             options: dict[str, Any], task: _Task, seed: int, recipe: str, optimizer: str, lr: float,
             steps: int, globs: Sequence[str] | None) -> dict[str, list[tuple[float, float]]]:
    """``{module: [(rms_out, rms_delta) per step 0..steps]}`` for one size and seed."""
    torch.manual_seed(seed)
    target = build_model(fn, width, depth, "cpu", options)
    base = build_model(fn, base_width, base_depth, "meta", options)
    plan = parameterize(target, base, recipe=recipe, optimizer=optimizer)
    opt = plan.optimizer(lr=lr, model=target)
    watched = _watched_modules(target, globs)
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in watched.items():
        def hook(_m, _i, out, name=name):
            t = _first_tensor(out)
            if t is not None:
                captured[name] = t.detach().float().clone()
        hooks.append(mod.register_forward_hook(hook))
    result: dict[str, list[tuple[float, float]]] = {}
    try:
        target.train()
        with torch.no_grad():
            captured.clear()
            target(task.x)
        ref = dict(captured)
        for n, t in ref.items():
            result[n] = [(rms(t), float("nan"))]
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            task.loss(target).backward()
            opt.step()
            with torch.no_grad():
                captured.clear()
                target(task.x)
            for n, t in captured.items():
                if n in ref:
                    result[n].append((rms(t), rms(t - ref[n])))
    finally:
        for h in hooks:
            h.remove()
    return result


def _check_sizes(label: str, sizes: Any) -> list[int]:
    try:
        out = sorted({int(s) for s in sizes})
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a list of positive integers, got {sizes!r}") from None
    if len(out) < 2 or out[0] < 1:
        raise ValueError(f"{label} needs at least two distinct positive sizes to fit a slope, got {sizes!r}")
    return out


# --------------------------------------------------------------------- API
def coord_check(
    model: str | Callable[..., nn.Module] = "gpt", *, widths: list[int] | None = None,
    depths: list[int] | None = None, width: int = 64, depth: int = 2, base_width: int | None = None,
    base_depth: int | None = None, recipe: str = "mup", optimizer: str = "adamw", lr: float = THRESHOLDS.coord_lr,
    steps: int = 3, seeds: int = THRESHOLDS.coord_seeds, batch_size: int = 8, seq_len: int = 32, data: str = "stdlib",
    model_options: dict[str, Any] | None = None, tolerance: float = THRESHOLDS.coord_slope_tolerance,
    modules: list[str] | None = None,
) -> CoordCheck:
    """Coordinate check: does each module's update scale with width (or depth)?

    Give exactly one of ``widths`` (sweep width at fixed ``depth``) or
    ``depths`` (sweep depth at fixed ``width``). The base shape of the plan
    defaults to the smallest swept size. For every size and seed
    (``seeds`` seeds: 0..seeds-1) the target is built on CPU, planned with
    ``parameterize(target, base_on_meta, recipe, optimizer)``, and trained for
    ``steps`` steps of ``plan.optimizer(lr=lr)`` on one fixed batch (LM windows
    of ``data`` for token models; Gaussian inputs and a random tanh teacher
    with MSE for ``model="mlp"``), which is also the probe batch.

    Forward hooks (no model change) on every leaf module owning parameters,
    and on each residual block ``blocks.N`` (the residual stream after it),
    record ``rms_out`` at every step and ``rms_delta = rms(out(t) - out(0))``
    for ``t >= 1``. ``modules`` (globs on module names) restricts the hooks.

    Slopes are least-squares fits of ``log(mean over seeds of rms)`` against
    ``log(size)``, per module and step. A judged module whose delta slope at
    the last step exceeds ``+tolerance`` blows up; below ``-tolerance`` it
    vanishes.

    Depth sweeps: the number of blocks changes, so modules inside the blocks
    are pooled across blocks (``blocks.*.attn.proj``, RMS over blocks) and
    the last block's output is also reported as ``blocks.-1``. Only modules
    outside the repeated blocks (embeddings, final norm, readout) and the
    block outputs (``blocks.*``, ``blocks.-1``: the residual stream) are
    judged, because under depth-muP / CompleteP the branch outputs inside a
    block are *meant* to shrink as ``depth**-alpha`` (each of L branches
    contributes 1/L of the residual stream's update); their slopes are still
    listed with verdict ``not judged``.

    Raises ValueError for bad arguments (both or neither of widths/depths,
    unknown recipe or optimizer, fewer than two sizes, non-positive lr/steps).
    """
    if (widths is None) == (depths is None):
        raise ValueError("coord_check needs exactly one of widths=[...] (width sweep) or depths=[...] "
                         "(depth sweep); got " + ("both" if widths is not None else "neither"))
    get_recipe(recipe)  # ValueError with suggestions
    get_optimizer(optimizer)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    for label, v in (("steps", steps), ("seeds", seeds), ("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be an integer >= 1, got {v!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    axis = "width" if widths is not None else "depth"
    sizes = _check_sizes(f"{axis}s", widths if widths is not None else depths)
    if isinstance(model, str):
        fn = load_builder(model)
        kind = "vector" if model == "mlp" else "lm"
    elif callable(model):
        fn, kind = model, "lm"
    else:
        raise ValueError(f"model must be a builder name or a callable, got {model!r}")
    options = dict(model_options or {})
    d_in, d_out = int(options.get("d_in", 16)), int(options.get("d_out", 4))
    if kind == "lm":
        corpus = _corpus(data)
        if accepts(fn, "vocab") and "vocab" not in options:
            options["vocab"] = corpus.vocab_size
        if accepts(fn, "seq_len") and "seq_len" not in options:
            options["seq_len"] = seq_len
    if axis == "width":
        bw, bd = (base_width or sizes[0]), (base_depth or depth)
    else:
        bw, bd = (base_width or width), (base_depth or sizes[0])

    records: list[dict[str, Any]] = []
    depth_axis = axis == "depth"
    for size in sizes:
        w, d = (size, depth) if axis == "width" else (width, size)
        for seed in range(seeds):
            task = _Task(kind, seed=seed, batch_size=batch_size, seq_len=seq_len, data=data, d_in=d_in, d_out=d_out)
            res = _run_one(fn, width=w, depth=d, base_width=bw, base_depth=bd, options=options, task=task,
                           seed=seed, recipe=recipe, optimizer=optimizer, lr=lr, steps=steps, globs=modules)
            for name, per_step in res.items():
                for t, (ro, rd) in enumerate(per_step):
                    records.append({"axis": axis, "size": size, "seed": seed, "step": t, "module": name,
                                    "rms_out": ro, "rms_delta": rd})

    slopes = _fit_slopes(records, sizes, depth_axis, tolerance)
    last = steps
    judged_last = [s for s in slopes if s["step"] == last and s["judged"]]
    blowups = [s["module"] for s in judged_last if s["verdict"] == "blowup"]
    vanishing = [s["module"] for s in judged_last if s["verdict"] == "vanish"]
    passed = not blowups and not vanishing and bool(judged_last)
    by_mod = {s["module"]: s for s in judged_last}
    if passed:
        line = f"PASS: every module's update is {axis}-independent (|slope| <= {tolerance:g})"
        if depth_axis:
            line += " (judged: modules outside the blocks and the block outputs)"
    elif not judged_last:
        line = "FAIL: no module could be judged (no hooked module has a finite slope)"
    else:
        parts = []
        for label, names in (("blow up", blowups), ("vanish", vanishing)):
            if names:
                names = sorted(names, key=lambda n: -abs(by_mod[n]["slope_delta"]))
                shown = ", ".join(f"{n} slope {by_mod[n]['slope_delta']:+.2f}" for n in names[:4])
                more = f", +{len(names) - 4} more" if len(names) > 4 else ""
                parts.append(f"{len(names)} module{'s' if len(names) > 1 else ''} {label} with {axis} "
                             f"({shown}{more})")
        line = "FAIL: " + "; ".join(parts)
    return CoordCheck(axis=axis, sizes=sizes, recipe=recipe, tolerance=tolerance, records=records,
                      slopes=slopes, passed=passed, blowups=blowups, vanishing=vanishing, line=line)


def _fit_slopes(records: list[dict[str, Any]], sizes: list[int], depth_axis: bool,
                tolerance: float) -> list[dict[str, Any]]:
    # pool per (group, size, seed, step): RMS over the modules of the group (blocks, for depth sweeps)
    pooled: dict[tuple[str, int, int, int], list[tuple[float, float]]] = {}
    last_block: dict[tuple[int, int], tuple[int, str]] = {}
    for r in records:
        g = _group_name(r["module"], depth_axis)
        pooled.setdefault((g, r["size"], r["seed"], r["step"]), []).append((r["rms_out"], r["rms_delta"]))
        if depth_axis:
            m = _BLOCK.search(r["module"])
            if m:
                key = (r["size"], r["seed"])
                idx = int(m.group(1))
                if key not in last_block or idx > last_block[key][0]:
                    last_block[key] = (idx, r["module"])
    if depth_axis:
        for r in records:
            lb = last_block.get((r["size"], r["seed"]))
            if lb and r["module"] == lb[1]:
                g = _BLOCK.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + "-1", r["module"])
                pooled.setdefault((g, r["size"], r["seed"], r["step"]), []).append((r["rms_out"], r["rms_delta"]))
    # RMS-pool within a group, then mean over seeds
    acc: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for (g, size, _seed, step), vals in pooled.items():
        arr = np.asarray(vals, dtype=float)
        acc.setdefault((g, step, size), []).append(tuple(np.sqrt(np.mean(arr ** 2, axis=0))))
    groups = sorted({g for (g, _t, _s) in acc}, key=lambda g: (_inside_block(g), g))
    steps = sorted({t for (_g, t, _s) in acc if t >= 1})
    out = []
    for g in groups:
        judged = (not depth_axis) or _is_block_output(g) or not _inside_block(g)
        for t in steps:
            vals = [acc.get((g, t, s)) for s in sizes]
            if any(v is None for v in vals):
                continue
            ro = [float(np.mean([v[0] for v in vv])) for vv in vals]
            rd = [float(np.mean([v[1] for v in vv])) for vv in vals]
            sd, so = loglog_slope(sizes, rd), loglog_slope(sizes, ro)
            if not judged:
                verdict = "not judged"
            elif not math.isfinite(sd):
                verdict = "n/a"
            elif sd > tolerance:
                verdict = "blowup"
            elif sd < -tolerance:
                verdict = "vanish"
            else:
                verdict = "ok"
            out.append({"module": g, "step": t, "slope_delta": sd, "slope_out": so, "judged": judged,
                        "verdict": verdict, "rms_delta": dict(zip(sizes, rd)), "rms_out": dict(zip(sizes, ro))})
    return out

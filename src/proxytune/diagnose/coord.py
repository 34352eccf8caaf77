"""Coordinate check for any ``nn.Module``, measured with forward hooks.

The model is not modified: a forward hook on every leaf module that owns
parameters (and on every residual block the plan found) records the RMS of its
output on a fixed probe batch at step 0 and after each of a few optimizer
steps. Under a correct parameterization the *change* of each output,
``rms(out(t) - out(0))``, does not depend on the swept size, so its log-log
slope against the size is ~0. A positive slope means the update blows up as
the model grows; a negative one means it vanishes (that layer stops learning).

What cannot be fooled: besides the modules, every check measures the model's
output (``logits``, however the forward returns it), the attention logits of
every attention (``attn-logits:<module>``, from the ``q`` and ``k`` of each
``scaled_dot_product_attention`` call or the input of an attention softmax)
and each residual branch's output. A module is judged against what the plan
meant: a query projection that carries the ``1/d_head`` factor on purpose is
listed, not judged, and its attention logits are judged instead. A plan without
a readout fails.

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

from torch.overrides import TorchFunctionMode

from ..builders import accepts, build_model, load_builder
from ..forward import ForwardSpec, _first_tensor, check_logits
from ..modelspec import ModelSpec, ModelStructure
from ..plan import Plan, parameterize
from ..rules.recipes import get_optimizer, get_recipe
from ..thresholds import THRESHOLDS
from .spectral import loglog_slope, rms
from ..data import load
from ..plan import _named_params
from ..rules.everett import AB
from ..shapes import canonical_name

__all__ = ["CoordCheck", "coord_check"]

#: the pseudo-module of the model's output
LOGITS = "logits"
#: prefix of an attention's logits pseudo-module: ``attn-logits:<attention module>``
ATTN_LOGITS = "attn-logits:"


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
    notes: list[str] = field(default_factory=list)

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
        body = [(r["module"], f"{r['slope_delta']:+.3f}", f"{r['slope_out']:+.3f}",
                 r["verdict"] + (f" ({r['note']})" if r.get("note") else "")) for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        sep = "  ".join("-" * w for w in widths)
        lines = [f"coordinate check: recipe={self.recipe} {self.axis}s={self.sizes} tolerance={self.tolerance}",
                 fmt.format(*head), sep]
        lines += [fmt.format(*b) for b in body]
        lines += [f"note: {n}" for n in self.notes]
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


def _watched_modules(model: nn.Module, globs: Sequence[str] | None, blocks: set[str]) -> dict[str, nn.Module]:
    """Leaf modules owning parameters, modules owning parameters none of whose children do, and the blocks."""

    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if not name:
            continue
        name = canonical_name(name)
        owns = any(True for _ in mod.parameters(recurse=False))
        leaf = not any(True for _ in mod.children())
        if (owns and leaf) or name in blocks or (owns and not any(
                any(True for _ in c.parameters()) for c in mod.children())):
            if globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs):
                out[name] = mod
    return out


class _Probe(TorchFunctionMode):
    """Records, during one forward pass, the attention logits of every attention (SDPA's ``q k^T x scale``, or
    the 4-D input of a softmax) and the products of the given weights (functional branch outputs), keyed by the
    innermost module running them."""

    def __init__(self, stack: list[str], weights: dict[int, str], tables: dict[int, str] | None = None) -> None:
        super().__init__()
        self.stack = stack
        self.weights = weights
        self.tables = tables or {}
        self.found: dict[str, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        module = self.stack[-1] if self.stack else ""
        try:
            if name == "scaled_dot_product_attention" and len(args) >= 2:
                key = ATTN_LOGITS + module
                if key not in self.found:
                    q, k = args[0].detach().float(), args[1].detach().float()
                    if k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
                        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
                    scale = kwargs.get("scale") or 1.0 / math.sqrt(q.shape[-1])
                    self.found[key] = (q @ k.transpose(-2, -1)) * scale
            elif name == "baddbmm" and isinstance(kwargs.get("batch1", args[1] if len(args) > 1 else None),
                                                  torch.Tensor):
                # BLOOM: alibi.baddbmm(q, k, alpha=scale): the logits without the positional bias
                b1 = kwargs.get("batch1", args[1] if len(args) > 1 else None)
                b2 = kwargs.get("batch2", args[2] if len(args) > 2 else None)
                key = ATTN_LOGITS + module
                if key not in self.found and id(b1) not in self.weights and id(b2) not in self.weights:
                    self.found[key] = (b1.detach().float() @ b2.detach().float()) * float(kwargs.get("alpha", 1.0))
            elif name in ("softmax", "_softmax") and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
                key = ATTN_LOGITS + module
                if key not in self.found:
                    self.found[key] = args[0].detach().float()
            elif name == "__getitem__" and len(args) >= 2 and id(args[0]) in self.tables and \
                    isinstance(args[1], torch.Tensor) and not args[1].is_floating_point():
                # a raw table looked up by index outside any embedding module: its output is an input embedding
                self.found.setdefault("lookup:" + self.tables[id(args[0])], out.detach().float())
            elif name in ("linear", "matmul", "__matmul__") and len(args) >= 2:
                for a in args[:2]:
                    w = self.weights.get(id(a))
                    if w is not None and isinstance(out, torch.Tensor):
                        self.found.setdefault("branch:" + w, out.detach().float())
        except Exception:  # noqa: BLE001 - a measurement must never break the forward
            pass
        return out


def _masked_rms(t: torch.Tensor, ref: torch.Tensor | None = None) -> float:
    """RMS over the entries that are not masked (attention logits carry -inf or a large negative mask)."""
    keep = torch.isfinite(t) & (t > -1e4)
    if ref is not None:
        keep &= torch.isfinite(ref) & (ref > -1e4)
        t = t - ref
    vals = t[keep]
    return float(vals.pow(2).mean().sqrt()) if vals.numel() else float("nan")


@functools.lru_cache(maxsize=4)
def _corpus(name: str):

    return load(name)


class _Task:
    """A fixed training/probe batch and the loss: token windows of a corpus (``lm``), Gaussian vectors and a
    random tanh teacher (``vector``), or random images with random labels (``image``)."""

    def __init__(self, kind: str, *, seed: int, batch_size: int, seq_len: int, data: str,
                 d_in: int = 16, d_out: int = 4, image: tuple[int, int, int] = (3, 16, 16)) -> None:
        g = torch.Generator().manual_seed(10_000 + seed)
        self.kind = kind
        self.generator = g
        if kind == "lm":
            corpus = _corpus(data)
            self.x, self.y = corpus.sample("train", batch_size, seq_len, g)
        elif kind == "image":
            self.x = torch.randn(batch_size, *image, generator=g)
            self.y = None  # labels drawn once the number of classes is known (the logits' last dim)
        else:  # random teacher regression
            self.x = torch.randn(batch_size * seq_len, d_in, generator=g)
            w1 = torch.randn(d_in, 64, generator=g) / math.sqrt(d_in)
            w2 = torch.randn(64, d_out, generator=g) / math.sqrt(64)
            self.y = torch.tanh(self.x @ w1) @ w2

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "vector":
            return F.mse_loss(logits.float(), self.y)
        if self.y is None:
            self.y = torch.randint(logits.shape[-1], logits.shape[:-1], generator=self.generator)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.y.reshape(-1))


def _plan_intent(plan: Plan) -> tuple[dict[str, str], tuple[dict[int, str], dict[int, str]], bool, set[str]]:
    """What the plan means each module to do that a flat slope would contradict: the modules carrying the
    attention-logit factor (a query projection, the query rows of a fused projection), the branch-output
    weights and the raw tables not owned by a layer (measured by the probe), whether the plan has a readout, and
    the modules whose output is a readout's (an LM head, a classifier, a router)."""
    intended: dict[str, str] = {}
    for name, tp in plan.tensors.items():
        if tp.attn_factor != 1.0:
            intended[name.rpartition(".")[0]] = "carries the attention-logit factor; its attention logits are judged"
    for r in plan.attention:
        for rel in r["site"].get("row_params") or []:
            intended[f"{r['module']}.{rel.rpartition('.')[0]}"] = ("its query rows carry the attention-logit factor; "
                                                                    "its attention logits are judged")
    weights: dict[int, str] = {}
    tables: dict[int, str] = {}
    model = plan._model
    if model is not None:

        params = _named_params(model)
        for name, tp in plan.tensors.items():
            owner = name.rpartition(".")[0]
            mod = model.get_submodule(owner) if owner else model
            if len(tp.shape) == 2 and name in params and not isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
                tables[id(params[name])] = name
        for name, tp in plan.tensors.items():
            if tp.branch_output and len(tp.shape) >= 2 and name in params:
                owner = name.rpartition(".")[0]
                mod = model.get_submodule(owner) if owner else model
                if not isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and type(mod).__name__ != "Conv1D":
                    weights[id(params[name])] = name
    readout = any(tp.role == "readout" or tp.readout_use is not None or tp.lookup_module is not None
                  for tp in plan.tensors.values())
    outputs = {tp.name.rpartition(".")[0] for tp in plan.tensors.values() if tp.role == "readout" and len(tp.shape) >= 2}
    outputs |= {tp.readout_use.rpartition(".")[0] for tp in plan.tensors.values() if tp.readout_use is not None}
    return intended, (weights, tables), readout, outputs


@dataclass(frozen=True)
class _CoordArgs:
    """The arguments of :func:`coord_check`, as given (see its docstring)."""

    model: str | Callable[..., nn.Module] | ModelSpec
    widths: list[int] | None
    depths: list[int] | None
    width: int
    depth: int
    base_width: int | None
    base_depth: int | None
    recipe: str
    optimizer: str
    lr: float
    steps: int
    seeds: int
    batch_size: int
    seq_len: int
    data: str
    model_options: dict[str, Any] | None
    tolerance: float
    modules: list[str] | None
    structure: ModelStructure | None

    def check(self) -> None:
        """Raise ValueError for a bad argument: both or neither of widths/depths, an unknown recipe or
        optimizer, a non-positive lr, count or tolerance."""
        if (self.widths is None) == (self.depths is None):
            raise ValueError("coord_check needs exactly one of widths=[...] (width sweep) or depths=[...] "
                             "(depth sweep); got " + ("both" if self.widths is not None else "neither"))
        get_recipe(self.recipe)  # ValueError with suggestions
        get_optimizer(self.optimizer)
        lr = self.lr
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        for label, v in (("steps", self.steps), ("seeds", self.seeds), ("batch_size", self.batch_size),
                         ("seq_len", self.seq_len)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{label} must be an integer >= 1, got {v!r}")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance!r}")


@dataclass(frozen=True)
class _Sweep:
    """One coordinate check, resolved from its checked arguments: the swept axis and sizes, the base shape,
    and the model (builder, task kind, structure, builder options)."""

    args: _CoordArgs
    axis: str
    sizes: list[int]
    base_width: int
    base_depth: int
    fn: Callable[..., nn.Module]
    kind: str
    structure: ModelStructure
    options: dict[str, Any]

    @property
    def depth_axis(self) -> bool:
        return self.axis == "depth"

    def shape(self, size: int) -> tuple[int, int]:
        """(width, depth) of the model at one swept size."""
        return (size, self.args.depth) if self.axis == "width" else (self.args.width, size)

    def task(self, seed: int) -> _Task:
        """The fixed batch and loss of one seed."""
        a = self.args
        d_in, d_out = int(self.options.get("d_in", 16)), int(self.options.get("d_out", 4))
        return _Task(self.kind, seed=seed, batch_size=a.batch_size, seq_len=a.seq_len, data=a.data, d_in=d_in,
                     d_out=d_out)


def _resolve_sweep(args: _CoordArgs) -> _Sweep:
    """Check the arguments and resolve the sweep: its sizes, the model, the base shape (the smallest swept size
    unless given), and the builder options an LM needs from the corpus (vocab, seq_len)."""
    args.check()
    axis = "width" if args.widths is not None else "depth"
    sizes = _check_sizes(f"{axis}s", args.widths if args.widths is not None else args.depths)
    fn, kind, structure, options = _resolve_model(args.model, args.structure, args.model_options)
    if kind == "lm":
        corpus = _corpus(args.data)
        if accepts(fn, "vocab") and "vocab" not in options:
            options["vocab"] = corpus.vocab_size
        if accepts(fn, "seq_len") and "seq_len" not in options:
            options["seq_len"] = args.seq_len
    if axis == "width":
        bw, bd = (args.base_width or sizes[0]), (args.base_depth or args.depth)
    else:
        bw, bd = (args.base_width or args.width), (args.base_depth or sizes[0])
    return _Sweep(args=args, axis=axis, sizes=sizes, base_width=bw, base_depth=bd, fn=fn, kind=kind,
                  structure=structure, options=options)


def _planned_model(sweep: _Sweep, size: int, seed: int) -> tuple[nn.Module, Plan]:
    """The target at one swept size, built on the CPU from ``seed``, and its plan against the base."""
    width, depth = sweep.shape(size)
    torch.manual_seed(seed)
    target = build_model(sweep.fn, width, depth, "cpu", sweep.options)
    with torch.random.fork_rng(devices=[]):
        # the base is the smallest size: built on the CPU, its init statistics are exact (a model's own init may
        # depend on its size in ways the rules replace, as T5's does)
        base = build_model(sweep.fn, sweep.base_width, sweep.base_depth, "cpu", sweep.options)
    plan = parameterize(target, base, recipe=sweep.args.recipe, optimizer=sweep.args.optimizer,
                        seq_len=sweep.args.seq_len if sweep.kind == "lm" else None,
                        **sweep.structure.plan_kwargs())
    return target, plan


class _Measurer:
    """Measures one forward pass of ``model`` on the task's batch: the output of every watched module (forward
    hooks on every module, which also keep the stack of running modules), what the :class:`_Probe` finds
    (attention logits, functional branch outputs, raw table lookups: ``probed`` = its weights and tables) and
    the logits."""

    def __init__(self, model: nn.Module, forward: ForwardSpec, task: _Task, watched: dict[str, nn.Module],
                 probed: tuple[dict[int, str], dict[int, str]]) -> None:

        self.model, self.forward, self.task, self.probed = model, forward, task, probed
        names = {id(m): canonical_name(n) for n, m in model.named_modules()}
        captured: dict[str, torch.Tensor] = {}
        stack: list[str] = []
        self.captured, self.stack, self.hooks = captured, stack, []
        for mod in model.modules():
            name = names[id(mod)]

            def pre(_m, _a, name=name):
                stack.append(name)

            def post(_m, _i, out, name=name):
                if stack and stack[-1] == name:
                    stack.pop()
                if name in watched:
                    t = _first_tensor(out)
                    if t is not None:
                        captured[name] = t.detach().float().clone()

            self.hooks.append(mod.register_forward_pre_hook(pre))
            self.hooks.append(mod.register_forward_hook(post, always_call=True))

    def logits(self) -> torch.Tensor:
        """The model's logits on the task's batch."""
        task, forward = self.task, self.forward
        return forward.logits(forward.call(self.model, task.x, task.y if forward.targets_arg else None))

    def measure(self) -> dict[str, torch.Tensor]:
        """Every measured output of one forward pass (no grad), by module or pseudo-module name."""
        self.captured.clear()
        probe = _Probe(self.stack, *self.probed)
        with torch.no_grad(), probe:
            logits = self.logits()
        found = dict(self.captured)
        found.update(probe.found)
        found[LOGITS] = logits.detach().float()
        return found

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _measured_training(m: _Measurer, opt: torch.optim.Optimizer, steps: int) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(rms_out, rms_delta) per step 0..steps]}``: the outputs at init, then after each of ``steps``
    optimizer steps on the task's batch (``rms_delta`` against the output at init; NaN at step 0)."""
    task = m.task
    result: dict[str, list[tuple[float, float]]] = {}
    m.model.train()
    with torch.no_grad():
        first = m.logits()
        if task.y is None:  # the image task learns its class count from the logits
            task.loss(first)
        check_logits(first, task.y, classes=task.kind != "vector")
    ref = m.measure()
    for n, t in ref.items():
        result[n] = [(_masked_rms(t) if n.startswith(ATTN_LOGITS) else rms(t), float("nan"))]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        task.loss(m.logits()).backward()
        opt.step()
        now = m.measure()
        for n, t in now.items():
            if n in ref and t.shape == ref[n].shape:
                if n.startswith(ATTN_LOGITS):
                    result[n].append((_masked_rms(t), _masked_rms(t, ref[n])))
                else:
                    result[n].append((rms(t), rms(t - ref[n])))
    return result


def _run_one(sweep: _Sweep, size: int, seed: int,
             task: _Task) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """``{module: [(rms_out, rms_delta) per step 0..steps]}`` for one size and seed, and what the plan meant."""
    target, plan = _planned_model(sweep, size, seed)
    forward: ForwardSpec = sweep.structure.forward()
    opt = plan.optimizer(lr=sweep.args.lr, model=target)
    blocks = {tp.block for tp in plan.tensors.values() if tp.block is not None}
    intended, (weights, tables), has_readout, outputs = _plan_intent(plan)
    globs = sweep.args.modules
    watched = _watched_modules(target, globs, blocks)
    measurer = _Measurer(target, forward, task, watched, (weights, tables))
    try:
        result = _measured_training(measurer, opt, sweep.args.steps)
    finally:
        measurer.remove()
    if globs is not None:
        result = {n: v for n, v in result.items() if n in watched}
    info = {"blocks": blocks, "intended": intended, "readout": has_readout, "outputs": outputs | {LOGITS},
            "head_dims": {ATTN_LOGITS + r["module"]: r["site"]["head_dim"] for r in plan.attention},
            "branches": {tp.name.rpartition(".")[0] for tp in plan.tensors.values() if tp.branch_output}
            | {"branch:" + w for w in weights.values()}}
    return result, info


def _check_sizes(label: str, sizes: Any) -> list[int]:
    try:
        out = sorted({int(s) for s in sizes})
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a list of positive integers, got {sizes!r}") from None
    if len(out) < 2 or out[0] < 1:
        raise ValueError(f"{label} needs at least two distinct positive sizes to fit a slope, got {sizes!r}")
    return out


def _resolve_model(model: str | Callable[..., nn.Module] | ModelSpec, structure: ModelStructure | None,
                   model_options: dict[str, Any] | None) -> tuple[Callable[..., nn.Module], str, ModelStructure,
                                                                  dict[str, Any]]:
    """(builder, task kind, structure, options) for any way of naming a model."""
    if isinstance(model, ModelSpec):
        fn, name = load_builder(model.builder), model.builder
        structure = structure or model.structure()
        options = {**model.options, **(model_options or {})}
    elif isinstance(model, str):
        fn, name = load_builder(model), model
        options = dict(model_options or {})
    elif callable(model):
        fn, name = model, ""
        options = dict(model_options or {})
    else:
        raise ValueError(f"model must be a builder name, a callable or a ModelSpec, got {model!r}")
    structure = structure or ModelStructure()
    if structure.input == "features" or name == "mlp":
        kind = "vector"
    elif structure.input == "image":
        kind = "image"
    else:
        kind = "lm"
    return fn, kind, structure, options


def _measure_sweep(sweep: _Sweep) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and measure every size and seed: the tidy records, and what each plan meant (one per run)."""
    records: list[dict[str, Any]] = []
    infos = []
    for size in sweep.sizes:
        for seed in range(sweep.args.seeds):
            res, info = _run_one(sweep, size, seed, sweep.task(seed))
            infos.append(info)
            for name, per_step in res.items():
                for t, (ro, rd) in enumerate(per_step):
                    records.append({"axis": sweep.axis, "size": size, "seed": seed, "step": t, "module": name,
                                    "rms_out": ro, "rms_delta": rd})
    return records, infos


def _attn_expected(sweep: _Sweep, infos: list[dict[str, Any]], rec: Any) -> dict[str, float]:
    """Per attention-logits pseudo-module, the slope its logits' scale at init should have across a width
    sweep: the recipe's attention exponent times how fast the head dim grows with the swept size (0 when width
    grows by adding heads). q and k coordinates stay O(1) at init under these parameterizations, so the logits
    at init scale as the attention scale's own exponent relative to SP (0 for SP, -1/2 for muP's 1/d_head)."""
    attn_expected: dict[str, float] = {}
    if sweep.depth_axis or not (rec.abc in ("sp", "mup", "ntk") or rec.unit):
        return attn_expected
    sizes = sweep.sizes
    hds: dict[str, dict[int, int]] = {}
    for size, info in zip([s for s in sizes for _ in range(sweep.args.seeds)], infos):
        for module, hd in info["head_dims"].items():
            hds.setdefault(module, {})[size] = hd
    for module, by_size in hds.items():
        if len(by_size) == len(sizes):
            attn_expected[module] = rec.attn_exponent * loglog_slope(sizes, [by_size[s] for s in sizes])
    return attn_expected


def _sweep_slopes(sweep: _Sweep, records: list[dict[str, Any]], infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slope rows of the sweep, judged against what the plans meant (see :func:`_fit_slopes`)."""

    blocks = set().union(*(i["blocks"] for i in infos))
    intended = {k: v for i in infos for k, v in i["intended"].items()}
    branches = set().union(*(i["branches"] for i in infos))
    groups = _Groups(blocks, sweep.depth_axis)
    rec = get_recipe(sweep.args.recipe)
    attn_expected = _attn_expected(sweep, infos, rec)
    # a readout's output at init: m random terms times the readout's scale, m^(1/2 - a - b) (abc exponents)
    a_r, b_r = AB[rec.abc]["readout"]
    readout_expected = None if sweep.depth_axis else 0.5 - float(a_r + b_r)
    outputs = set().union(*(i["outputs"] for i in infos))
    return _fit_slopes(records, sweep.sizes, groups, sweep.args.tolerance, intended, branches, attn_expected,
                       outputs, readout_expected)


def _failure_line(axis: str, has_readout: bool, blowups: list[str], vanishing: list[str],
                  by_mod: dict[str, dict[str, Any]]) -> str:
    """The FAIL line of a check whose judged modules blow up or vanish, or whose plan has no readout."""
    parts = [] if has_readout else ["the plan has no readout (see explain; pass roles={'<name>': 'readout'})"]
    for label, names in (("blow up", blowups), ("vanish", vanishing)):
        if names:
            names = sorted(names, key=lambda n: (n != LOGITS, -abs(by_mod[n]["slope_delta"])))
            shown = ", ".join(f"{n} slope {by_mod[n]['slope_delta']:+.2f}" for n in names[:4])
            more = f", +{len(names) - 4} more" if len(names) > 4 else ""
            parts.append(f"{len(names)} module{'s' if len(names) > 1 else ''} {label} with {axis} "
                         f"({shown}{more})")
    return "FAIL: " + "; ".join(parts)


def _coord_result(sweep: _Sweep, records: list[dict[str, Any]], slopes: list[dict[str, Any]],
                  infos: list[dict[str, Any]]) -> CoordCheck:
    """The verdict at the last step: judged modules that blow up or vanish, a missing readout, the line."""
    axis, tolerance = sweep.axis, sweep.args.tolerance
    judged_last = [s for s in slopes if s["step"] == sweep.args.steps and s["judged"]]
    blowups = [s["module"] for s in judged_last if s["verdict"] == "blowup"]
    vanishing = [s["module"] for s in judged_last if s["verdict"] == "vanish"]
    notes = []
    has_readout = all(i["readout"] for i in infos)
    if not has_readout:
        notes.append("the plan has no readout tensor (role readout, or a tied table's readout use): the output "
                     "layer gets no width rule")
    passed = not blowups and not vanishing and bool(judged_last) and has_readout
    if passed:
        line = f"PASS: every module's update is {axis}-independent (|slope| <= {tolerance:g})"
        if sweep.depth_axis:
            line += " (judged: the logits, modules outside the blocks and the block outputs)"
        else:
            line += ", the logits' and the attention logits' included"
    elif not judged_last:
        line = "FAIL: no module could be judged (no hooked module has a finite slope)"
    else:
        line = _failure_line(axis, has_readout, blowups, vanishing, {s["module"]: s for s in judged_last})
    return CoordCheck(axis=axis, sizes=sweep.sizes, recipe=sweep.args.recipe, tolerance=tolerance,
                      records=records, slopes=slopes, passed=passed, blowups=blowups, vanishing=vanishing,
                      line=line, notes=notes)


# --------------------------------------------------------------------- API
def coord_check(
    model: str | Callable[..., nn.Module] | ModelSpec = "gpt", *, widths: list[int] | None = None,
    depths: list[int] | None = None, width: int = 64, depth: int = 2, base_width: int | None = None,
    base_depth: int | None = None, recipe: str = "mup", optimizer: str = "adamw", lr: float = THRESHOLDS.coord_lr,
    steps: int = 3, seeds: int = THRESHOLDS.coord_seeds, batch_size: int = 8, seq_len: int = 32, data: str = "stdlib",
    model_options: dict[str, Any] | None = None, tolerance: float = THRESHOLDS.coord_slope_tolerance,
    modules: list[str] | None = None, structure: ModelStructure | None = None,
) -> CoordCheck:
    """Coordinate check: does each module's update scale with width (or depth)?

    Give exactly one of ``widths`` (sweep width at fixed ``depth``) or
    ``depths`` (sweep depth at fixed ``width``). The base shape of the plan
    defaults to the smallest swept size (built on the CPU: exact init statistics). ``model`` is a builder name, a
    callable or a :class:`proxytune.modelspec.ModelSpec` (``structure`` says
    how to read a model given by name or callable: roles, block pattern,
    targets argument...). For every size and seed (``seeds`` seeds:
    0..seeds-1) the target is built on CPU, planned with
    ``parameterize(target, base, recipe, optimizer)``, and trained for
    ``steps`` steps of ``plan.optimizer(lr=lr)`` on one fixed batch (LM windows
    of ``data`` for token models; Gaussian inputs and a random tanh teacher
    with MSE for ``model="mlp"`` or ``input: features``; random images and
    labels for ``input: image``), which is also the probe batch.

    Forward hooks (no model change) on every leaf module owning parameters,
    and on each residual block the plan found (the residual stream after it),
    record ``rms_out`` at every step and ``rms_delta = rms(out(t) - out(0))``
    for ``t >= 1``; so are the model's logits (``logits``), each attention's
    logits (``attn-logits:<module>``) and functional residual-branch outputs
    (``branch:<weight>``). ``modules`` (globs on module names) restricts the
    hooks.

    Slopes are least-squares fits of ``log(mean over seeds of rms)`` against
    ``log(size)``, per module and step. A judged module whose delta slope at
    the last step exceeds ``+tolerance`` blows up; below ``-tolerance`` it
    vanishes. A module that carries a factor the plan put there on purpose (a
    query projection with ``1/d_head``) is listed with verdict ``not judged``.

    Depth sweeps: the number of blocks changes, so modules inside the blocks
    are pooled across blocks (``blocks.*.attn.proj``, RMS over blocks) and
    the last block's output is also reported as ``blocks.-1``. Only modules
    outside the repeated blocks (embeddings, final norm, readout, logits) and
    the block outputs (``blocks.*``, ``blocks.-1``: the residual stream) are
    judged, because under depth-muP / CompleteP the branch outputs inside a
    block are *meant* to shrink as ``depth**-alpha`` (each of L branches
    contributes 1/L of the residual stream's update); their slopes are still
    listed with verdict ``not judged``.

    Raises ValueError for bad arguments (both or neither of widths/depths,
    unknown recipe or optimizer, fewer than two sizes, non-positive lr/steps).

    Many parameters because: each is an independent, documented knob of the
    public call (the ``coord-check`` command's options map onto them one to
    one); internally they travel as one ``_CoordArgs`` object, resolved into
    a ``_Sweep``.
    """
    sweep = _resolve_sweep(_CoordArgs(
        model=model, widths=widths, depths=depths, width=width, depth=depth, base_width=base_width,
        base_depth=base_depth, recipe=recipe, optimizer=optimizer, lr=lr, steps=steps, seeds=seeds,
        batch_size=batch_size, seq_len=seq_len, data=data, model_options=model_options, tolerance=tolerance,
        modules=modules, structure=structure))
    records, infos = _measure_sweep(sweep)
    return _coord_result(sweep, records, _sweep_slopes(sweep, records, infos), infos)


class _Groups:
    """Module names -> groups: inside the plan's blocks, for a depth sweep, ``<stack>*.<rest>`` (pooled over
    blocks) and the last block's ``<stack>-1``."""

    def __init__(self, blocks: set[str], depth_axis: bool) -> None:
        self.depth_axis = depth_axis
        self.blocks: dict[str, tuple[str, int]] = {}
        for b in blocks:
            m = re.search(r"(\d+)$", b)
            if m:
                self.blocks[b] = (b[: m.start()], int(m.group(1)))

    def block_of(self, module: str) -> tuple[str, str, int, str] | None:
        """(block, stack key, index, rest after the block) of a module or pseudo-module name."""
        prefix, name = "", module
        for p in (ATTN_LOGITS, "branch:"):
            if module.startswith(p):
                prefix, name = p, module[len(p):]
        for b, (key, idx) in self.blocks.items():
            if name == b or name.startswith(b + "."):
                return b, prefix + key, idx, name[len(b):]
        return None

    def group(self, module: str) -> str:
        if not self.depth_axis:
            return module
        found = self.block_of(module)
        if found is None:
            return module
        _, key, _, rest = found
        return f"{key}*{rest}"

    def inside(self, group: str) -> bool:
        return "*" in group or "-1" in group if self.depth_axis else self.block_of(group) is not None

    def is_block_output(self, group: str) -> bool:
        if self.depth_axis:
            return any(group in (f"{key}*", f"{key}-1") for key, _ in self.blocks.values())
        return group in self.blocks


def _pooled_rms(records: list[dict[str, Any]],
                groups: _Groups) -> dict[tuple[str, int, int], list[tuple[float, float]]]:
    """Per (group, step, size), one ``(rms_out, rms_delta)`` per seed, RMS-pooled over the modules of the group
    (the blocks, for a depth sweep, where the last block also counts as ``<stack>-1``)."""
    depth_axis = groups.depth_axis
    # pool per (group, size, seed, step): RMS over the modules of the group (blocks, for depth sweeps)
    pooled: dict[tuple[str, int, int, int], list[tuple[float, float]]] = {}
    last_block: dict[tuple[int, int, str], tuple[int, str]] = {}
    for r in records:
        g = groups.group(r["module"])
        pooled.setdefault((g, r["size"], r["seed"], r["step"]), []).append((r["rms_out"], r["rms_delta"]))
        if depth_axis:
            found = groups.block_of(r["module"])
            if found is not None and found[3] == "":
                b, key, idx, _ = found
                k = (r["size"], r["seed"], key)
                if k not in last_block or idx > last_block[k][0]:
                    last_block[k] = (idx, r["module"])
    if depth_axis:
        for r in records:
            for (size, seed, key), (_, module) in last_block.items():
                if r["size"] == size and r["seed"] == seed and r["module"] == module:
                    pooled.setdefault((f"{key}-1", size, seed, r["step"]), []).append((r["rms_out"], r["rms_delta"]))
    # RMS-pool within a group (the mean over seeds comes later)
    acc: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for (g, size, _seed, step), vals in pooled.items():
        arr = np.asarray(vals, dtype=float)
        acc.setdefault((g, step, size), []).append(tuple(np.sqrt(np.mean(arr ** 2, axis=0))))
    return acc


@dataclass(frozen=True)
class _Judging:
    """How one group's slopes are judged. ``product``: attention logits or a readout's output (a product of two
    width-sized vectors), whose scale at init (``init_slope``) must match the one the recipe means
    (``expected``); ``kind`` names it in notes."""

    judged: bool
    note: str
    product: bool
    expected: float | None
    init_slope: float
    kind: str


def _verdict(j: _Judging, sd: float, tolerance: float) -> tuple[str, float, str]:
    """(verdict, slope shown, note) of one step whose delta slope is ``sd``."""
    row_note = j.note
    low = -tolerance
    expected, init_slope = j.expected, j.init_slope
    if j.product:
        # the update of q.k (or w.h) starts as a random part that shrinks as d^-1/2 (a few steps, small
        # widths, weights of order 1 such as a tied table), so only a faster fall is vanishing; the scale
        # the plan meant shows at init
        low = -(0.5 + tolerance)
        row_note = ((j.note + "; " if j.note else "") + f"update judged in [{low:+.2f}, {tolerance:+.2f}]" + (
            f"; at init {init_slope:+.2f}, the recipe means {expected:+.2f}"
            if expected is not None and math.isfinite(init_slope) else ""))
    if not j.judged:
        verdict = "not judged"
    elif not math.isfinite(sd):
        verdict = "n/a"
    elif j.product and expected is not None and math.isfinite(init_slope) and abs(init_slope - expected) > tolerance:
        verdict = "blowup" if init_slope > expected else "vanish"
        sd = init_slope - expected
        row_note = (f"the {j.kind}' scale at init has slope {init_slope:+.2f}, the recipe means {expected:+.2f}: "
                    "not the recipe's scale (slope shown: the difference)")
    elif sd > tolerance:
        verdict = "blowup"
    elif sd < low:
        verdict = "vanish"
    else:
        verdict = "ok"
    return verdict, sd, row_note


def _fit_slopes(records: list[dict[str, Any]], sizes: list[int], groups: _Groups, tolerance: float,
                intended: dict[str, str], branches: set[str], attn_expected: dict[str, float] | None = None,
                outputs: set[str] | None = None, readout_expected: float | None = None) -> list[dict[str, Any]]:
    depth_axis = groups.depth_axis
    acc = _pooled_rms(records, groups)
    order = sorted({g for (g, _t, _s) in acc}, key=lambda g: (g != LOGITS, groups.inside(g), g))
    steps = sorted({t for (_g, t, _s) in acc if t >= 1})
    intended_groups = {groups.group(k): v for k, v in intended.items()}
    branch_groups = {groups.group(b) for b in branches}
    out = []
    for g in order:
        note = intended_groups.get(g, "")
        judged = ((not depth_axis) or groups.is_block_output(g) or not groups.inside(g)) and not note
        if depth_axis and groups.inside(g) and not groups.is_block_output(g):
            note = "inside the blocks: meant to shrink with depth under depth rules"
        if g in branch_groups or g.startswith("branch:"):
            note = (note + "; " if note else "") + "residual-branch output"
        # attention logits and readout outputs: products of two width-sized vectors (q . k, w . h) whose update
        # starts as a random part, and whose scale at init says which scale the plan gave them
        attn = (g.startswith(ATTN_LOGITS) or (not depth_axis and g in (outputs or set()))) and judged
        init_slope = math.nan
        if attn:
            init = [acc.get((g, 0, s)) for s in sizes]
            if all(v is not None for v in init):
                init_slope = loglog_slope(sizes, [float(np.mean([v[0] for v in vv])) for vv in init])
        judging = _Judging(
            judged=judged, note=note, product=attn, init_slope=init_slope,
            expected=(attn_expected or {}).get(g) if g.startswith(ATTN_LOGITS) else readout_expected,
            kind="attention logits" if g.startswith(ATTN_LOGITS) else "readout's output")
        for t in steps:
            vals = [acc.get((g, t, s)) for s in sizes]
            if any(v is None for v in vals):
                continue
            ro = [float(np.mean([v[0] for v in vv])) for vv in vals]
            rd = [float(np.mean([v[1] for v in vv])) for vv in vals]
            sd, so = loglog_slope(sizes, rd), loglog_slope(sizes, ro)
            verdict, sd, row_note = _verdict(judging, sd, tolerance)
            out.append({"module": g, "step": t, "slope_delta": sd, "slope_out": so, "judged": judged,
                        "verdict": verdict, "note": row_note, "rms_delta": dict(zip(sizes, rd)),
                        "rms_out": dict(zip(sizes, ro))})
    return out

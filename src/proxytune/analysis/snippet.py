"""The torch code a user copies to train the target with the settings tuned on the proxies.

``training_snippet(cfg, width=..., depth=..., lr=...)`` writes Python source
that does what the trainer (:mod:`proxytune.train.setup` and ``loop``) does
for ``cfg``, at the target's shape and the given base LR (``proxytune predict``
and ``tune`` give the one predicted for the target): the same base
(shape, seed, CPU so its init statistics are exact), the same
``parameterize`` call, init multipliers, optimizer keywords, schedule
(``proxytune.train.lr_factor`` through ``LambdaLR``) and gradient clipping.
Only the data is left to the user (``# your data here``).
"""

from __future__ import annotations

import inspect
import math
import os
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..builders import BUILTIN_MODELS, build_model, load_builder
from ..optim.registry import REGISTRY
from ..optim.registry import has_eps
from ..train.setup import LM_MODELS, _builder_options, load_data
from ..train.setup import _BASE_SEED_OFFSET
from ..train.setup import optimizer_kwargs

if TYPE_CHECKING:
    from ..train.config import TrainConfig

__all__ = ["training_snippet", "available_memory", "bytes_per_param", "DATA_PLACEHOLDER"]

# The statement in ``next_batch`` that stands for the user's data; tests swap it for a batch.
DATA_PLACEHOLDER = 'raise NotImplementedError("your data here: return (inputs, targets) for this step on `device`")'


def available_memory(device: str = "cpu") -> tuple[int, str]:
    """(bytes, what) of the memory a target would live in here: the GPU's for a CUDA device
    (when CUDA is available), else the machine's total RAM."""
    if device == "auto" or device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(device).index if device.startswith("cuda:") else 0
            return int(torch.cuda.get_device_properties(index or 0).total_memory), f"GPU memory (cuda:{index or 0})"
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"
    except (ValueError, OSError, AttributeError):  # no sysconf names (non-Linux): read /proc/meminfo
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) * 1024, "RAM"
        except OSError:
            pass
    return 0, "unknown memory"


def bytes_per_param(cfg: TrainConfig) -> int:
    """Training memory per parameter: weights + grads + optimizer state (activations not counted).

    16 B for fp32 Adam (weights, grads, two moments); fp64 doubles it; SGD keeps
    one momentum buffer (none without momentum); Adafactor's factored state is
    taken as negligible. Muon keeps two AdamW moments on its non-matrix tensors
    and one buffer on matrices: counted as two, an upper bound.
    """

    elem = 8 if cfg.precision == "fp64" else 4  # bf16 autocast keeps fp32 parameters
    spec = REGISTRY.get(cfg.optimizer)
    states = 2 if spec is None else spec.state_slots(cfg)  # the registry entry's state_slots
    return elem * (2 + states)


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _builder_source(model: str) -> tuple[str, str]:
    """(import line, callable expression) for a built-in name or ``pkg.module:fn``."""
    if model in BUILTIN_MODELS:
        return f"from proxytune.models import {model}", f"{model}.build"
    if ":" not in model:
        raise ValueError(f"model {model!r}: expected a built-in name ({', '.join(BUILTIN_MODELS)}) "
                         "or 'pkg.module:function'")
    module, fn = model.split(":", 1)
    head = fn.split(".", 1)[0]  # 'mod:Class.build' imports Class
    return f"from {module} import {head}", fn


def _model_options(cfg: TrainConfig) -> tuple[dict[str, Any], str, Any]:
    """(builder options, task, builder or None) as the trainer computes them.

    The trainer adds ``vocab``/``seq_len`` (LM data) or ``d_in``/``d_out``
    (teacher task) from the loaded data; reading the data gives the exact
    values. When the data or builder is not available here, fall back to the
    config's options plus ``seq_len`` for the built-in LMs.
    """

    try:
        builder = load_builder(cfg.model)
    except Exception:  # noqa: BLE001 - a builder that does not import here still gets a snippet
        builder = None
    if builder is not None:
        try:
            data = load_data(cfg)
            return _builder_options(cfg, data, builder), getattr(data, "task", "lm"), builder
        except Exception:  # noqa: BLE001 - the data may live elsewhere; the options below are the config's
            pass
    options = dict(cfg.model_options)
    if cfg.model in LM_MODELS:
        options.setdefault("seq_len", cfg.seq_len)
    task = "lm" if cfg.model in LM_MODELS or cfg.data != "teacher" else cfg.data_options.get("kind", "classification")
    return options, task, builder


def _call(fn: str, width: int, depth: int, device: str, takes_device: bool) -> str:
    if takes_device:
        return f"{fn}(width={width}, depth={depth}, device={device}, **options)"
    return f"{fn}(width={width}, depth={depth}, **options)"


@dataclass(frozen=True)
class _Memory:
    """Whether the target fits where it would train: ``need`` bytes (None: unknown) of ``available``."""

    params: int | None
    need: int | None
    available: int
    what: str

    @property
    def on_meta(self) -> bool:
        return self.need is not None and self.available > 0 and self.need > self.available


def _memory(cfg: TrainConfig, params: int | None, memory_bytes: int | None) -> _Memory:
    if memory_bytes is None:
        memory_bytes, memory_what = available_memory(cfg.device)
    else:
        memory_what = "memory"
    need = None if params is None else params * bytes_per_param(cfg)
    return _Memory(params, need, memory_bytes, memory_what)


def _device_hint(cfg: TrainConfig) -> str:
    """Where a target too big for this machine would go."""
    return "'cuda'" if cfg.device == "auto" else repr(cfg.device)


def _header_lines(cfg: TrainConfig, import_line: str) -> list[str]:
    base_width, base_depth = cfg.base_width or cfg.width, cfg.base_depth or cfg.depth
    return [
        "# Train the target with the settings tuned on the proxies (generated by proxytune).",
        f"# Proxies: {cfg.model} width {cfg.width} x depth {cfg.depth}, HPs tuned at base {base_width} x "
        f"{base_depth}; recipe {cfg.recipe}, optimizer {cfg.optimizer}.",
        "import functools", "", "import torch", "", "import proxytune as pt", import_line,
        "from proxytune.train import lr_factor", "from proxytune.train.setup import loss_function", "",
    ]


def _device_lines(cfg: TrainConfig, mem: _Memory, lr: float, lr_source: str | None,
                  options: dict[str, Any]) -> list[str]:
    if mem.on_meta:
        L = [f"# Too big to train here: {mem.params:,} parameters x {bytes_per_param(cfg)} B (weights, grads and "
             "optimizer",
             f"# state) = about {_size(mem.need)} > {_size(mem.available)} of {mem.what}, so the target is built "
             "on 'meta'",
             f"# (no memory). Where it fits, set device = {_device_hint(cfg)} and rerun: the target is then built "
             "and",
             "# initialized there. (Or plan.save('plan.json') here and, there, call "
             "pt.Plan.load('plan.json').apply(t)",
             "# on a freshly built target t.)",
             "device = 'meta'"]
    else:
        device_expr = "'cuda' if torch.cuda.is_available() else 'cpu'" if cfg.device == "auto" else repr(cfg.device)
        L = [f"device = {device_expr}"]
    L.append(f"lr = {lr!r}  # base LR: the lr given to plan.optimizer below, which scales it per tensor")
    if lr_source:
        L += ["# " + line for line in textwrap.wrap(f"(this base LR is {lr_source})", 110)]
    L += [f"options = {options!r}  # the proxies' model options", ""]
    return L


def _model_lines(cfg: TrainConfig, fn: str, takes_device: bool, width: int, depth: int) -> list[str]:
    """The base (on the CPU, under the trainer's base seed) and the target (under the proxies' seed)."""

    base_width, base_depth = cfg.base_width or cfg.width, cfg.base_depth or cfg.depth
    L = ["# The base is the proxy shape the HPs were tuned at, built on the CPU (it is small) so its init",
         "# statistics are exact, under the trainer's base seed; the target then gets the proxies' seed.",
         f"torch.manual_seed({cfg.seed + _BASE_SEED_OFFSET})"]
    if takes_device:
        L.append(f"base = {_call(fn, base_width, base_depth, repr('cpu'), True)}")
    else:
        L.append(f"base = {_call(fn, base_width, base_depth, '', False)}")
    L.append(f"torch.manual_seed({cfg.seed})")
    if takes_device:
        L.append(f"target = {_call(fn, width, depth, 'device', True)}")
    else:
        L += ["with torch.device(device):", f"    target = {_call(fn, width, depth, '', False)}"]
    if cfg.precision == "fp64":
        L.append("target = target.to(torch.float64)  # the proxies trained in float64")
    return L


def _plan_lines(cfg: TrainConfig) -> list[str]:
    """The ``parameterize`` call and the trainer's optimizer call."""

    named = cfg.multipliers()
    roles = f", roles={cfg.roles!r}" if cfg.roles else ""
    L = [f"plan = pt.parameterize(target, base, recipe={cfg.recipe!r}, optimizer={cfg.optimizer!r}, "
         f"mode={cfg.mode!r}, alignment={cfg.alignment!r},"]
    if named.is_default:
        L.append(f"                       weight_decay={cfg.weight_decay_policy!r}{roles})")
    else:
        L += [f"                       weight_decay={cfg.weight_decay_policy!r}{roles},",
              "                       # the named multipliers tuned at the base (per-role LR and init, output,",
              "                       # embedding and attention multipliers); the recipe carries them to the target",
              f"                       multipliers=pt.Multipliers.from_dict({named.to_dict()!r}))"]
    # The optimizer call is the trainer's: base lr / wd / eps and the optimizer's own keywords.
    kwargs = ["model=target", f"eps={cfg.base_eps()!r}"]
    if cfg.muon_lr_ratio != 1.0:
        kwargs.append(f"muon_lr=lr * {cfg.muon_lr_ratio!r}")
    kwargs += [f"{k}={v!r}" for k, v in optimizer_kwargs(cfg).items()]
    L.append(f"opt = plan.optimizer(lr, {cfg.weight_decay!r}, {', '.join(kwargs)})")
    if cfg.optimizer == "muon" and cfg.muon_lr_ratio == 1.0:
        L.append("# Muon's matrices use the same base lr, as in the proxies (plan.optimizer(muon_lr=...) would "
                 "split it).")
    elif cfg.muon_lr_ratio != 1.0:
        L.append(f"# Muon's matrices: base lr x {cfg.muon_lr_ratio!r}, the ratio tuned at the base (muon_lr_ratio); "
                 "the plan scales each matrix's LR from it.")
    if cfg.eps_mult != 1.0:
        L.append(f"# eps: the {'given' if cfg.eps is not None else 'default'} base eps x {cfg.eps_mult!r} tuned at "
                 "the base (eps_mult), scaled per tensor by the plan, as in the proxies.")
    elif cfg.eps is None and has_eps(cfg.optimizer):
        L.append("# eps=None: the optimizer's default eps at the base, scaled per tensor by the plan, as in the "
                 "proxies.")
    return L + [""]


def _schedule_lines(cfg: TrainConfig, task: str) -> list[str]:
    L = [f"steps = {cfg.steps}  # training steps (tune's answer for its target, else the proxies'); warmup and "
         "cooldown below follow it"]
    if isinstance(cfg.warmup, float):
        L.append(f"warmup = int(round({cfg.warmup!r} * steps))")
    else:
        L.append(f"warmup = min({int(cfg.warmup)}, steps)")
    L += ["# LR factor of each step: the trainer's schedule function, applied to every group's peak LR.",
          "sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(",
          f"    lr_factor, steps=steps, schedule={cfg.schedule!r}, warmup=warmup, "
          f"final_frac={cfg.final_lr_frac!r}, cooldown={cfg.cooldown!r}))",
          f"loss_fn = loss_function({task!r})", ""]
    return L


def _meta_exit_lines(cfg: TrainConfig, mem: _Memory) -> list[str]:
    """On 'meta': say why and stop before training."""
    if not mem.on_meta:
        return []
    msg = (f"target: {mem.params:,} parameters need about {_size(mem.need)} to train ({bytes_per_param(cfg)} "
           f"B/param), more than the {_size(mem.available)} of {mem.what} here: built on 'meta'. Set device = "
           f"{_device_hint(cfg)} where it fits and rerun.")
    return ["if device == 'meta':  # nothing trains on meta; the plan, groups and schedule above are real",
            f"    print({msg!r})", "    raise SystemExit(0)", ""]


def _loop_lines(cfg: TrainConfig) -> list[str]:
    L = ["", "def next_batch(step):",
         "    # your data here: one training batch (inputs, targets), as the proxies were fed, on `device`",
         f"    {DATA_PLACEHOLDER}", "", "",
         "target.train()", "for step in range(steps):", "    x, y = next_batch(step)"]
    if cfg.precision == "bf16":
        L += ["    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):  # the proxies' bf16 "
              "autocast",
              "        loss = loss_fn(target(x), y)"]
    else:
        L.append("    loss = loss_fn(target(x), y)")
    L.append("    loss.backward()")
    if cfg.grad_clip is not None:
        L += [f"    plan.clip_grad_norm_(target, {cfg.grad_clip!r})  # the proxies' max grad norm, in explicit units",
              "    # (not torch.nn.utils.clip_grad_norm_: folded weights carry their multipliers, so their raw norm",
              "    #  differs from the explicit form's and clipping would fire in other steps than on the proxies)"]
    L += ["    opt.step()", "    opt.zero_grad(set_to_none=True)", "    sched.step()"]
    return L


def training_snippet(cfg: TrainConfig, *, width: int, depth: int, lr: float, params: int | None = None,
                     memory_bytes: int | None = None, lr_source: str | None = None) -> str:
    """Python source that builds the target, parameterizes it against the base and trains it with exactly
    the optimizer, per-tensor groups, betas, eps, weight decay, schedule, warmup and grad clipping of the
    tuned proxy run ``cfg`` (a TrainConfig: src/proxytune/train/config.py), at base learning rate ``lr``.

    ``width`` x ``depth`` is the target's shape; the base is ``cfg``'s base
    shape (``base_width`` x ``base_depth``, or the proxy itself when unset).
    ``params`` is the target's parameter count (counted on ``meta`` when not
    given). When ``params`` x :func:`bytes_per_param` exceeds ``memory_bytes``
    (default: this machine's RAM, or the GPU's memory when ``cfg.device`` is
    CUDA and CUDA is available) the snippet builds the target on ``meta``,
    prints why and stops before training; setting ``device`` to one where it
    fits runs it in full. The data is left to the user: ``next_batch`` holds
    ``# your data here`` (:data:`DATA_PLACEHOLDER`). ``lr_source`` says in the script's comment where ``lr``
    came from (e.g. "predicted for this target by the sweep's width law").
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    import_line, fn = _builder_source(cfg.model)
    options, task, builder = _model_options(cfg)
    # A builder without a ``device`` argument is built under ``with torch.device(...)``, as build_model does;
    # one that cannot be imported here is assumed to take ``device=`` like the built-ins.
    takes_device = builder is None or "device" in inspect.signature(builder).parameters
    if params is None and builder is not None:
        params = sum(p.numel() for p in build_model(builder, width, depth, "meta", options).parameters())
    mem = _memory(cfg, params, memory_bytes)
    L = _header_lines(cfg, import_line)
    L += _device_lines(cfg, mem, lr, lr_source, options)
    L += _model_lines(cfg, fn, takes_device, width, depth)
    L += _plan_lines(cfg)
    L += _schedule_lines(cfg, task)
    L += _meta_exit_lines(cfg, mem)
    L += _loop_lines(cfg)
    return "\n".join(L) + "\n"

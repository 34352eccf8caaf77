"""Turning a TrainConfig into a model, a plan, data and a loss.

Shared by the single-run trainer and the batched trainer, so a member of a
batched group starts from exactly the parameters ``train(config)`` would.
"""

from __future__ import annotations

import functools
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..builders import BUILTIN_MODELS, accepts, build_model, load_builder
from ..forward import DEFAULT_FORWARD, ForwardSpec, check_logits
from ..optim.registry import REGISTRY
from ..plan import Plan, parameterize
from .config import TrainConfig
from ..version import __version__
from .. import data as data_mod
from ..nn.lowp import simulate_fp8

LM_MODELS = ("gpt", "moe")
# The base model is built under its own seed so building it never shifts the
# target's random stream (a run's init depends on ``seed`` only).
_BASE_SEED_OFFSET = 1_000_003


@dataclass
class Prepared:
    """What a run trains: the parameterized model, its plan, data and loss."""

    config: TrainConfig
    model: nn.Module
    plan: Plan
    data: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    n_params: int
    forward: ForwardSpec = DEFAULT_FORWARD

    def logits(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``model``'s logits for inputs ``x`` (the targets ``y`` go to a forward that takes them)."""
        return self.forward.logits(self.forward.call(model, x, y))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.logits(model, x, y), y)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; checks a requested GPU exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


@functools.lru_cache(maxsize=8)
def _load_data_cached(source: str, options_key: tuple) -> Any:

    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options_key}
    if source == "teacher":
        return data_mod.TeacherTask(**options)
    return data_mod.load(source, **options)


def check_output(prep: "Prepared", x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward pass before training: logits that do not line up with the targets are an error that says
    what to do (a model returning only its last position, a tuple whose first element is not the logits)."""
    with torch.no_grad():
        logits = prep.logits(prep.model, x, y)
    check_logits(logits, y, classes=getattr(prep.data, "task", "lm") != "regression")


def load_data(config: TrainConfig) -> Any:
    """The config's corpus or synthetic task (cached per process: corpora are read-only)."""
    options = dict(config.data_options)
    if config.data == "teacher":
        # The teacher's shape follows the MLP's unless the user says otherwise.
        for key in ("d_in", "d_out"):
            if key in config.model_options and key not in options:
                options[key] = config.model_options[key]
        # The held-out set must cover every evaluation batch.
        options.setdefault("n_val", max(1024, config.eval_batches * config.batch_size))
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _load_data_cached(config.data, key)


def _builder_options(config: TrainConfig, data: Any, builder: Callable[..., nn.Module]) -> dict[str, Any]:
    options = dict(config.model_options)
    if getattr(data, "task", "lm") == "lm":
        if config.model in LM_MODELS or accepts(builder, "vocab"):
            options.setdefault("vocab", data.vocab_size)
        if config.model in LM_MODELS or accepts(builder, "seq_len"):
            options.setdefault("seq_len", config.seq_len)
    elif config.model == "mlp":
        options.setdefault("d_in", data.d_in)
        options.setdefault("d_out", data.d_out)
    return options


def to_device(batch: tuple[torch.Tensor, torch.Tensor], prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to the run's device; float inputs take the model's dtype."""
    dtype = {"fp64": torch.float64, "bf16-pure": torch.bfloat16}.get(prep.config.precision, torch.float32)
    return tuple(t.to(prep.device, dtype=dtype) if t.is_floating_point() else t.to(prep.device)  # type: ignore[return-value]
                 for t in batch)


def loss_function(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean cross-entropy for LM and classification, mean squared error for regression."""
    if task == "regression":
        return F.mse_loss

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat = logits.reshape(-1, logits.shape[-1])
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # the loss of a low-precision forward pass is still computed in fp32
        return F.cross_entropy(flat, targets.reshape(-1))

    return cross_entropy


def stacked_losses(task: str, out: torch.Tensor, y: torch.Tensor, shared: bool) -> torch.Tensor:
    """Per-member mean losses ``(K,)`` of stacked outputs ``(K, ...)``.

    ``y`` holds each member's targets ``(K, ...)``, or one batch for all when
    ``shared``. Computed outside ``vmap`` on the flattened stack: one
    contiguous kernel instead of K strided ones, same value per member as
    ``loss_function``.
    """
    k = out.shape[0]
    if shared:
        y = y.expand(k, *y.shape)
    if task == "regression":
        return (out - y).pow(2).reshape(k, -1).mean(1)
    flat = out.reshape(-1, out.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.cross_entropy(flat, y.reshape(-1), reduction="none").view(k, -1).mean(1)


def build_models(config: TrainConfig, data: Any, device: torch.device | str) -> tuple[nn.Module, nn.Module]:
    """(target, base): the target on ``device`` seeded by ``config.seed``, the base on CPU."""
    builder = load_builder(config.model)
    options = _builder_options(config, data, builder)
    base_width = config.base_width or config.width
    base_depth = config.base_depth or config.depth
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + _BASE_SEED_OFFSET)
        base = build_model(builder, base_width, base_depth, "cpu", options)
    torch.manual_seed(config.seed)
    target = build_model(builder, config.width, config.depth, device, options)
    return target, base


def prepare(config: TrainConfig) -> Prepared:
    """Build and parameterize the model for ``config`` and load its data."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = load_data(config)
    if hasattr(data, "check"):
        data.check(config.seq_len)  # fail before building anything when the data is too short
    target, base = build_models(config, data, device)
    if config.precision == "fp64":
        target = target.to(torch.float64)
    plan = parameterize(target, base, recipe=config.recipe, optimizer=config.optimizer, mode=config.mode,
                        alignment=config.alignment, weight_decay=config.weight_decay_policy,
                        multipliers=config.multipliers(), **config.plan_kwargs(),
                        seq_len=config.seq_len if getattr(data, "task", "lm") == "lm" else None)
    if config.precision == "bf16-pure":
        target = target.to(torch.bfloat16)  # after the plan's init, which is computed in fp32
    elif config.precision == "fp8-sim":

        simulate_fp8(target)
    n_params = sum(p.numel() for p in target.parameters())
    return Prepared(config, target, plan, data, loss_function(getattr(data, "task", "lm")), device, n_params,
                    config.model_structure.forward())


def param_settings(prep: Prepared) -> dict[str, dict[str, Any]]:
    """Per-parameter lr / weight_decay / eps (and Muon keys) from the plan, keyed by parameter name."""
    cfg = prep.config
    groups = prep.plan.param_groups(cfg.lr, cfg.weight_decay, model=prep.model, **cfg.group_kwargs())
    by_id = {id(p): n for n, p in prep.model.named_parameters()}
    out = {}
    for g in groups:
        (p,) = g["params"]
        out[by_id[id(p)]] = {k: v for k, v in g.items() if k not in ("params", "name")}
    return out


def optimizer_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments for the torch optimizer besides the param groups (the registry entry's
    ``default_kwargs``: :mod:`proxytune.optim.registry`)."""
    spec = REGISTRY.get(config.optimizer)
    return {} if spec is None else spec.default_kwargs(config)


def flops_per_step(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                   forward: ForwardSpec = DEFAULT_FORWARD) -> int:
    """FLOPs of one forward + backward pass, counted by torch on the ``meta`` device (free)."""
    from copy import deepcopy

    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = deepcopy(model).to("meta")
        xm, ym = x.to("meta"), y.to("meta")
        counter = FlopCounterMode(display=False)
        with counter:
            loss_fn(forward.logits(forward.call(meta, xm, ym)), ym).backward()
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - an estimate must never break a run
        n = sum(p.numel() for p in model.parameters())
        return 6 * n * x.numel()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def environment(data: Any, device: torch.device) -> dict[str, Any]:
    """Versions and data identity stored with every run."""

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "proxytune": __version__,
        "numpy": _version("numpy"),
        "optuna": _version("optuna"),
        "platform": platform.platform(),
        "device": str(device),
        "argv0": sys.argv[0] if sys.argv else "",
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    info = data.info() if hasattr(data, "info") else {}
    env["data"] = info
    return env


__all__ = ["Prepared", "prepare", "resolve_device", "load_data", "build_models", "param_settings",
           "optimizer_kwargs", "flops_per_step", "environment", "loss_function", "BUILTIN_MODELS"]

"""Finding and calling model builders: built-in names or ``pkg.module:function``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch

from .shapes import PlanError

BUILTIN_MODELS = {
    "gpt": "proxytune.models.gpt:build",
    "mlp": "proxytune.models.mlp:build",
    "moe": "proxytune.models.moe:build",
}


def load_builder(spec: str) -> Callable[..., torch.nn.Module]:
    """``gpt``/``mlp``/``moe`` or ``pkg.module:function`` -> the model builder."""
    target = BUILTIN_MODELS.get(spec, spec)
    if ":" not in target:
        raise PlanError(f"model {spec!r}: expected a built-in name ({', '.join(BUILTIN_MODELS)}) "
                        "or 'pkg.module:function'")
    mod_name, fn_name = target.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise PlanError(f"model {spec!r}: cannot import module {mod_name!r} ({exc})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise PlanError(f"model {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def build_model(fn: Callable[..., torch.nn.Module], width: int, depth: int, device: str | torch.device,
                options: dict[str, Any]) -> torch.nn.Module:
    """Call a builder with width/depth/options, on ``device`` (``meta`` is free)."""
    kwargs = dict(options, width=width, depth=depth)
    try:
        if "device" in inspect.signature(fn).parameters:
            return fn(device=device, **kwargs)
        with torch.device(device):
            return fn(**kwargs)
    except TypeError as exc:
        raise PlanError(f"the model builder rejected its arguments {kwargs}: {exc}") from None


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

"""Finding and calling model builders: built-in names, ``pkg.module:function`` or ``path/file.py:function``.

The builder contract: ``build(width, depth, **options)`` returns an ``nn.Module`` built on the current default
device (proxytune calls it under ``torch.device("meta")`` to build a large target for free, or passes
``device=`` when the builder takes it). For token data, proxytune also passes ``vocab=`` (the data's vocabulary
size) and ``seq_len=`` when the builder takes them (or ``**kwargs``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import PlanError

BUILTIN_MODELS = {
    "gpt": "proxytune.models.gpt:build",
    "mlp": "proxytune.models.mlp:build",
    "moe": "proxytune.models.moe:build",
}


def import_module(name: str, *, what: str) -> Any:
    """Import ``pkg.module`` (the current directory is importable, as for ``python -m``) or the file
    ``path/to/file.py``; errors name ``what`` and say what went wrong, never a raw traceback."""
    if name.endswith(".py"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise PlanError(f"{what}: no file {str(path)!r}" + (f" (from {os.getcwd()})" if not path.is_absolute() else ""))
        path = path.resolve()
        key = "proxytune_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12] + "_" + path.stem
        if key in sys.modules:
            return sys.modules[key]
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # the builder's own imports of files beside it
        spec = importlib.util.spec_from_file_location(key, path)
        if spec is None or spec.loader is None:
            raise PlanError(f"{what}: {str(path)!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's module: report what it raised, in one line
            del sys.modules[key]
            raise PlanError(f"{what}: importing {str(path)!r} raised {type(exc).__name__}: {exc}") from None
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        hint = ""
        if exc.name == name.split(".")[0]:
            hint = (f"; run from the folder that holds it, add that folder to PYTHONPATH, or name the file: "
                    f"./{name.replace('.', '/')}.py:<function>")
        raise PlanError(f"{what}: cannot import module {name!r} ({exc}){hint}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module: report what it raised, in one line
        raise PlanError(f"{what}: importing {name!r} raised {type(exc).__name__}: {exc}") from None


def load_builder(spec: str) -> Callable[..., torch.nn.Module]:
    """``gpt``/``mlp``/``moe``, ``pkg.module:function`` or ``path/to/file.py:function`` -> the model builder."""
    target = BUILTIN_MODELS.get(spec, spec)
    if ":" not in target:
        raise PlanError(f"model {spec!r}: expected a built-in name ({', '.join(BUILTIN_MODELS)}), "
                        "'pkg.module:function' or 'path/to/file.py:function'")
    mod_name, fn_name = target.rsplit(":", 1)
    mod = import_module(mod_name, what=f"model {spec!r}")
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

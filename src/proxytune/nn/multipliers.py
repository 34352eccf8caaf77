"""Forward multipliers on weights, for ``mode="explicit"`` and for the few
multipliers that cannot be folded (a tied weight's readout use, a fused
query projection). Applied with ``torch.nn.utils.parametrize`` so the module
code is untouched and the parameter itself stays a plain tensor; a tied
readout's multiplier is applied to the layer's input instead (see
:class:`InputMultiplier`), so the shared weight stays an ordinary attribute
that Hugging Face's ``tie_weights`` and ``save_pretrained`` can handle."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMultiplier(nn.Module):
    """``W -> multiplier x W``, or only indices ``[start, stop)`` of dimension ``dim`` (rows by default)."""

    def __init__(self, multiplier: float, rows: tuple[int, int] | None = None, dim: int = 0) -> None:
        super().__init__()
        self.multiplier = float(multiplier)
        self.rows = rows
        self.dim = dim

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return w * self.multiplier
        start, stop = self.rows
        dim = self.dim % w.ndim
        scale = torch.ones(w.shape[dim], dtype=w.dtype, device=w.device)
        scale[start:stop] = self.multiplier
        return w * scale.view(*([1] * dim), -1, *([1] * (w.ndim - dim - 1)))

    def extra_repr(self) -> str:
        return (f"multiplier={self.multiplier:g}" + (f", rows={self.rows}" if self.rows else "")
                + (f", dim={self.dim}" if self.dim else ""))


def add_multiplier(module: nn.Module, attr: str, multiplier: float,
                   rows: tuple[int, int] | None = None, dim: int = 0) -> None:
    """Register a :class:`WeightMultiplier` on ``module.<attr>`` (a no-op for 1)."""
    if multiplier == 1.0:
        return
    parametrize.register_parametrization(module, attr, WeightMultiplier(multiplier, rows, dim),
                                         unsafe=True)


class InputMultiplier:
    """A forward pre-hook ``x -> multiplier x x`` on a linear layer: for ``y = x W^T + b`` it equals a
    multiplier on ``W`` alone, without touching the weight (which another module may share)."""

    def __init__(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.multiplier, *args[1:])


def takes_input_multiplier(module: nn.Module, attr: str) -> bool:
    """Whether a weight multiplier on ``module.<attr>`` can be applied to the module's input instead: a
    linear map of its first argument (``nn.Linear``, Hugging Face's ``Conv1D``) with that weight."""
    return attr == "weight" and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")


def add_input_multiplier(module: nn.Module, multiplier: float) -> None:
    """Register an :class:`InputMultiplier` on ``module`` (a no-op for 1)."""
    if multiplier != 1.0:
        module.register_forward_pre_hook(InputMultiplier(multiplier))


def remove_multipliers(model: nn.Module) -> None:
    """Remove every :class:`WeightMultiplier`, :class:`InputMultiplier` and :class:`OutputMultiplier`, baking
    nothing into the weights."""
    for mod in model.modules():
        for key, hook in list(mod._forward_pre_hooks.items()):
            if isinstance(hook, InputMultiplier):
                del mod._forward_pre_hooks[key]
        for key, hook in list(mod._forward_hooks.items()):
            if isinstance(hook, OutputMultiplier):
                del mod._forward_hooks[key]
    for mod in model.modules():
        if parametrize.is_parametrized(mod):
            for attr in list(mod.parametrizations.keys()):
                plist = mod.parametrizations[attr]
                if all(isinstance(p, WeightMultiplier) for p in plist):
                    parametrize.remove_parametrizations(mod, attr, leave_parametrized=False)


class OutputMultiplier:
    """A forward hook ``y -> multiplier x y`` on a module whose output is one tensor (an embedding lookup)."""

    def __init__(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * self.multiplier


def add_output_multiplier(module: nn.Module, multiplier: float) -> None:
    """Register an :class:`OutputMultiplier` on ``module`` (a no-op for 1)."""
    if multiplier != 1.0:
        module.register_forward_hook(OutputMultiplier(multiplier))

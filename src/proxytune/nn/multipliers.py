"""Forward multipliers on weights, for ``mode="explicit"`` and for the few
multipliers that cannot be folded (a tied weight's readout use, a fused
query projection). Applied with ``torch.nn.utils.parametrize`` so the module
code is untouched and the parameter itself stays a plain tensor."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMultiplier(nn.Module):
    """``W -> multiplier x W``, or only rows ``[start, stop)`` of dim 0 when given."""

    def __init__(self, multiplier: float, rows: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.multiplier = float(multiplier)
        self.rows = rows

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return w * self.multiplier
        start, stop = self.rows
        scale = torch.ones(w.shape[0], dtype=w.dtype, device=w.device)
        scale[start:stop] = self.multiplier
        return w * scale.view(-1, *([1] * (w.ndim - 1)))

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier:g}" + (f", rows={self.rows}" if self.rows else "")


def add_multiplier(module: nn.Module, attr: str, multiplier: float,
                   rows: tuple[int, int] | None = None) -> None:
    """Register a :class:`WeightMultiplier` on ``module.<attr>`` (a no-op for 1)."""
    if multiplier == 1.0:
        return
    parametrize.register_parametrization(module, attr, WeightMultiplier(multiplier, rows),
                                         unsafe=True)


def remove_multipliers(model: nn.Module) -> None:
    """Remove every :class:`WeightMultiplier`, baking nothing into the weights."""
    for mod in model.modules():
        if parametrize.is_parametrized(mod):
            for attr in list(mod.parametrizations.keys()):
                plist = mod.parametrizations[attr]
                if all(isinstance(p, WeightMultiplier) for p in plist):
                    parametrize.remove_parametrizations(mod, attr, leave_parametrized=False)

"""A plain MLP for vectors: input projection, ``depth`` hidden layers, readout."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, width: int, depth: int, d_in: int = 16, d_out: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width, bias=bias)
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=bias) for _ in range(depth))
        self.out = nn.Linear(width, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.out(h)


def build(width: int = 64, depth: int = 2, *, d_in: int = 16, d_out: int = 4, bias: bool = True,
          device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> MLP:
    """Build the MLP (torch's default init); ``device="meta"`` builds it for free."""
    with torch.device(device or "cpu"):
        model = MLP(width, depth, d_in, d_out, bias)
    return model.to(dtype) if dtype is not None else model

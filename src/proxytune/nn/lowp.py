"""Simulated fp8 on any device: matmul inputs cast to an 8-bit float and back, so the rounding, the
saturation at the format's maximum and the underflow of small values happen as on fp8 hardware, while the
matmul itself runs in the model's dtype. This makes "does this parameterization survive fp8?" testable on a
CPU (u-muP's claim: unit-scaled tensors do, tensors far from scale 1 do not).

The cast is straight-through for the backward pass: the gradient flows as if the cast were the identity,
optionally rounded to ``grad_dtype`` (``torch.float8_e5m2``, the usual format for gradients).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8_FORMATS = (torch.float8_e4m3fn, torch.float8_e5m2)


def _check(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in FP8_FORMATS:
        raise ValueError(f"{dtype} is not an fp8 format; use one of {', '.join(map(str, FP8_FORMATS))}")


class _RoundTrip(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dtype: torch.dtype, grad_dtype: torch.dtype | None) -> torch.Tensor:
        ctx.grad_dtype = grad_dtype
        return x.to(dtype).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.grad_dtype is not None:
            grad = grad.to(ctx.grad_dtype).to(grad.dtype)
        return grad, None, None


def fp8_round_trip(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn,
                   grad_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` cast to ``dtype`` and back (values rounded, saturated at the format's maximum, tiny ones
    flushed to zero); the gradient passes straight through, rounded to ``grad_dtype`` when given."""
    _check(dtype)
    _check(grad_dtype)
    return _RoundTrip.apply(x, dtype, grad_dtype)


def _fp8_weight(self: nn.Linear, fmt: torch.dtype, gfmt: torch.dtype | None) -> torch.Tensor:
    """The weight as fp8 hardware would hold it: a parametrized weight (a proxytune multiplier, u-muP's
    scales) is stored unscaled and cast there, its scale applied in full precision around the matmul, as a
    scaled fp8 matmul does; a plain weight is cast as it is."""
    plist = getattr(getattr(self, "parametrizations", None), "weight", None)
    if plist is None:
        return fp8_round_trip(self.weight, fmt, gfmt)
    w = fp8_round_trip(plist.original, fmt, gfmt)
    for p in plist:
        w = p(w)
    return w


def _fp8_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    fmt, gfmt = self._proxytune_fp8
    return F.linear(fp8_round_trip(x, fmt, gfmt), _fp8_weight(self, fmt, gfmt), self.bias)


class FP8Simulation:
    """Handle returned by :func:`simulate_fp8`; ``remove()`` restores the layers (also a context manager)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers

    def remove(self) -> None:
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
            layer.__dict__.pop("_proxytune_fp8", None)
        self.layers = []

    def __enter__(self) -> FP8Simulation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def simulate_fp8(model: nn.Module, dtype: torch.dtype = torch.float8_e4m3fn,
                 grad_dtype: torch.dtype | None = torch.float8_e5m2) -> FP8Simulation:
    """Make every ``nn.Linear`` of ``model`` cast its input and weight to ``dtype`` and back before its matmul
    (gradients rounded to ``grad_dtype``; ``None`` leaves them exact). Returns a handle whose ``remove()``
    undoes it; usable as ``with simulate_fp8(model): ...``."""
    _check(dtype)
    _check(grad_dtype)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        layer._proxytune_fp8 = (dtype, grad_dtype)
        layer.forward = types.MethodType(_fp8_linear_forward, layer)
    return FP8Simulation(layers)

"""u-muP's backward scales, installed on an unmodified model (see :mod:`proxytune.rules.umup`).

u-muP (Blake et al. 2024) scales each op twice: the forward output to unit RMS, and, separately, the
gradients it sends back, so that weight gradients are unit-scaled too (what lets them live in fp8). On a
model proxytune did not write, the plan installs these scales around each layer:

- :class:`UnitWeight`, a parametrization ``W -> alpha W`` whose backward gives ``W`` the gradient
  ``beta x tokens^-1/2 x`` (the gradient of ``alpha W``) for a linear layer, ``beta x sqrt(rows / tokens)``
  for an embedding table: a sum over ``tokens`` unit-scaled terms has RMS ``sqrt(tokens)`` (spread over
  ``rows`` rows of a table). ``tokens`` is counted from the layer's input at each call by a pre-hook.
- :class:`LogitGradScale`, on the readout: the gradient of a mean-reduced cross-entropy with respect to the
  logits is ``(softmax - onehot) / tokens``, RMS ``sqrt(V - 1) / (V tokens)`` at uniform predictions; it is
  multiplied by ``tokens x V / sqrt(V - 1)`` (u-muP's ``vocab / sqrt(vocab - 1)``, for a loss averaged
  over tokens).
- :class:`InputGradScale`, on the readout's input: its gradient gets ``fan_out^-1/2`` instead of the
  forward scale ``fan_in^-1`` (u-muP keeps the readout's input gradient unit-scaled on purpose).

Each is a constant per tensor for a fixed batch shape, so Adam's steps are those of the true gradients
(Adam is invariant to a per-tensor gradient scale; only eps sees it). SGD's are not: u-muP's backward
scales are for the Adam family.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .scaled import scale_fwd_bwd


class UnitWeight(nn.Module):
    """Parametrization ``W -> alpha x W`` whose backward sets ``W``'s gradient to ``beta x`` a per-call token
    factor ``x`` the gradient of ``alpha W`` (``alpha`` itself left out of the backward)."""

    def __init__(self, alpha: float, beta: float, kind: str = "linear", rows: int = 1) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.kind = kind  # "linear": tokens^-1/2; "table": sqrt(rows / tokens); "none": 1
        self.rows = int(rows)
        self.tokens = 1

    def grad_factor(self) -> float:
        t = max(int(self.tokens), 1)
        if self.kind == "linear":
            return self.beta / math.sqrt(t)
        if self.kind == "table":
            return self.beta * math.sqrt(self.rows / t)
        return self.beta

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return scale_fwd_bwd(w, self.alpha, self.grad_factor())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, kind={self.kind}"


class _CountTokens:
    """Forward pre-hook: tell the module's UnitWeight parametrizations how many rows its input has."""

    def __init__(self, attrs: list[str], table: bool) -> None:
        self.attrs = attrs
        self.table = table

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            return
        tokens = x.numel() if self.table else x.numel() // max(x.shape[-1], 1)
        for attr in self.attrs:
            for p in module.parametrizations[attr]:
                if isinstance(p, UnitWeight):
                    p.tokens = tokens


def install_unit_weight(module: nn.Module, attr: str, alpha: float, beta: float, *, table: bool,
                        rows: int = 1) -> None:
    """Register a :class:`UnitWeight` on ``module.<attr>`` and the hook that counts the module's tokens (one
    hook per module, shared by its weight and bias)."""
    kind = "table" if table else "linear"
    parametrize.register_parametrization(module, attr, UnitWeight(alpha, beta, kind, rows), unsafe=True)
    hook = getattr(module, "_proxytune_count_tokens", None)
    if hook is None:
        hook = _CountTokens([], table)
        module.register_forward_pre_hook(hook)
        module._proxytune_count_tokens = hook
    if attr not in hook.attrs:
        hook.attrs.append(attr)


class LogitGradScale:
    """Forward hook on the readout: logits unchanged, their gradient x ``tokens x V / sqrt(V - 1)``."""

    def __init__(self, vocab: int) -> None:
        self.vocab = int(vocab)

    def __call__(self, module: nn.Module, args: tuple, out: Any) -> Any:
        if not isinstance(out, torch.Tensor) or self.vocab < 2:
            return out
        tokens = max(out.numel() // self.vocab, 1)
        return scale_fwd_bwd(out, 1.0, tokens * self.vocab / math.sqrt(self.vocab - 1))


class InputGradScale:
    """Forward pre-hook: the input unchanged, its gradient x ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (scale_fwd_bwd(args[0], 1.0, self.factor), *args[1:])

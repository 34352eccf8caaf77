"""Ops with separate forward and backward scales, the building block of unit scaling (Blake et al. 2024,
"u-muP: The Unit-Scaled Maximal Update Parametrization"; Blake et al. 2023, "Unit Scaling").

``scaled(f, alpha, beta)(x)`` returns ``alpha * f(x)`` in the forward pass, while the gradient that reaches
``x`` (and any parameter of ``f``) is ``beta`` times the true gradient of ``f``: the forward scale keeps
activations near unit scale, the backward scale does the same for gradients, independently. With
``alpha == beta`` it is an ordinary multiplier.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class _ScaleForwardBackward(torch.autograd.Function):
    """Identity up to scale: ``alpha x z`` forward, ``beta x grad`` backward."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        ctx.beta = beta
        return z * alpha

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad * ctx.beta, None, None


def scale_fwd_bwd(z: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``alpha x z`` in the forward pass; the gradient flowing back through it is multiplied by ``beta``."""
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if alpha == beta:
        return z * alpha  # plain autograd: one op, and torch.compile sees nothing unusual
    return _ScaleForwardBackward.apply(z, float(alpha), float(beta))


def scaled(f: Callable[..., torch.Tensor], alpha: float, beta: float) -> Callable[..., torch.Tensor]:
    """``f`` with forward output ``alpha x f(x)`` and gradients (to its inputs and parameters) ``beta x`` the
    true gradients of ``f``."""

    def op(*args: Any, **kwargs: Any) -> torch.Tensor:
        return scale_fwd_bwd(f(*args, **kwargs), alpha, beta)

    return op

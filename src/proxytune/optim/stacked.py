"""The stacked parameters of K models trained together, and the optimizer updates over them.

Every parameter is one tensor of shape ``(K, *shape)``: member ``k``'s copy is
``p[k]``. Hyperparameters that differ between members (lr, weight decay, eps)
are ``(K,)`` tensors; each update below is, member by member, the same
arithmetic as the single-model optimizer it mirrors (``torch.optim.SGD``,
``Adam``, ``AdamW``, proxytune's ``AdamAtan2`` and ``Muon``), so a member
trains as it would alone, up to float rounding. The registry
(:mod:`proxytune.optim.registry`) names one update per optimizer; :mod:`proxytune.optim.batched` runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .muon import _DEFAULT_NS_COEFFICIENTS


def _per_member(v: Tensor, like: Tensor) -> Tensor:
    """``(K,)`` -> ``(K, 1, ..., 1)`` broadcastable against ``like``."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def newton_schulz_batched(g: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = _DEFAULT_NS_COEFFICIENTS,
                          eps: Tensor | float = 1e-7) -> Tensor:
    """``newton_schulz`` on each matrix of a ``(K, m, n)`` stack (per-member ``eps``)."""
    a, b, c = coefficients
    transposed = g.shape[-2] > g.shape[-1]
    x = g.mT if transposed else g
    norm = x.norm(dim=(-2, -1), keepdim=True)
    x = x / (norm + (_per_member(eps, x) if isinstance(eps, Tensor) else eps))
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x.mT if transposed else x


@dataclass
class StackedParam:
    """One stacked parameter and its per-member hyperparameters."""

    name: str
    param: Tensor
    lr: Tensor  # (K,) peak lr
    weight_decay: Tensor  # (K,)
    eps: Tensor | None = None  # (K,)
    use_muon: bool = False
    muon_scale: float = 1.0
    state: dict[str, Tensor] = field(default_factory=dict)
    clip_weight: Tensor | None = None  # (K,) the plan's clip weight (Plan.clip_weights); None: 1


# ---------------------------------------------------------------------------------------------- updates
# Each update is ``step(sp, grad, lr, t, hyper)``: parameter ``sp`` with gradient ``grad``, the members'
# current LRs ``lr`` (K,), the step number ``t`` (from 1) and the hyperparameters ``hyper``. The registry
# (proxytune.optim.registry) names one per optimizer as its ``batched_step``.
BatchedStep = Callable[[StackedParam, Tensor, Tensor, int, Mapping[str, Any]], None]


def sgd_step(sp: StackedParam, grad: Tensor, lr: Tensor, t: int, hyper: Mapping[str, Any]) -> None:
    """``torch.optim.SGD``: L2 weight decay, (Nesterov) momentum."""
    p = sp.param
    momentum = hyper["momentum"]
    d_p = grad.add(p * _per_member(sp.weight_decay, p)) if bool((sp.weight_decay != 0).any()) else grad
    if momentum != 0:
        buf = sp.state.get("momentum_buffer")
        if buf is None:
            buf = sp.state["momentum_buffer"] = d_p.clone()
        else:
            buf.mul_(momentum).add_(d_p)
        d_p = d_p.add(buf, alpha=momentum) if hyper["nesterov"] else buf
    p.sub_(d_p * _per_member(lr, p))


def _moments(sp: StackedParam, grad: Tensor, betas: tuple[float, float]) -> tuple[Tensor, Tensor]:
    if not sp.state:
        sp.state["exp_avg"] = torch.zeros_like(sp.param)
        sp.state["exp_avg_sq"] = torch.zeros_like(sp.param)
    m, v = sp.state["exp_avg"], sp.state["exp_avg_sq"]
    beta1, beta2 = betas
    m.lerp_(grad, 1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    return m, v


def _adam(sp: StackedParam, grad: Tensor, lr: Tensor, t: int, betas: tuple[float, float], decoupled: bool) -> None:
    p = sp.param
    wd = _per_member(sp.weight_decay, p)
    has_wd = bool((sp.weight_decay != 0).any())
    if has_wd and decoupled:
        p.mul_(1.0 - _per_member(lr, p) * wd)
    elif has_wd:
        grad = grad.add(p * wd)
    m, v = _moments(sp, grad, betas)
    beta1, beta2 = betas
    denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(_per_member(sp.eps, p))
    step_size = _per_member(lr / (1.0 - beta1**t), p)
    p.sub_(m / denom * step_size)


def adam_step(sp: StackedParam, grad: Tensor, lr: Tensor, t: int, hyper: Mapping[str, Any]) -> None:
    """``torch.optim.Adam``: weight decay as an L2 term in the gradient."""
    _adam(sp, grad, lr, t, hyper["betas"], decoupled=False)


def adamw_step(sp: StackedParam, grad: Tensor, lr: Tensor, t: int, hyper: Mapping[str, Any]) -> None:
    """``torch.optim.AdamW``: decoupled weight decay."""
    _adam(sp, grad, lr, t, hyper["betas"], decoupled=True)


def adam_atan2_step(sp: StackedParam, grad: Tensor, lr: Tensor, t: int, hyper: Mapping[str, Any]) -> None:
    """proxytune's ``AdamAtan2``: ``a atan2(m_hat, b sqrt(v_hat))``, no eps."""
    p = sp.param
    m, v = _moments(sp, grad, hyper["betas"])
    beta1, beta2 = hyper["betas"]
    m_hat = m / (1.0 - beta1**t)
    denom = (v / (1.0 - beta2**t)).sqrt_().mul_(hyper["b"])
    if bool((sp.weight_decay != 0).any()):
        p.mul_(1.0 - _per_member(lr * sp.weight_decay, p))
    p.sub_(torch.atan2(m_hat, denom) * _per_member(lr * hyper["a"], p))


def muon_step(sp: StackedParam, grad: Tensor, lr: Tensor, t: int, hyper: Mapping[str, Any]) -> None:
    """proxytune's ``Muon``: orthogonalized momentum on ``use_muon`` matrices, AdamW on the rest."""
    if not sp.use_muon:
        adamw_step(sp, grad, lr, t, hyper)
        return
    p = sp.param
    momentum = hyper["momentum"]
    buf = sp.state.get("momentum_buffer")
    if buf is None:
        buf = sp.state["momentum_buffer"] = torch.zeros_like(p)
    buf.mul_(momentum).add_(grad)
    direction = grad.add(buf, alpha=momentum) if hyper["nesterov"] else buf
    k = p.shape[0]
    ortho = newton_schulz_batched(direction.reshape(k, p.shape[1], -1), steps=hyper["ns_steps"],
                                  eps=sp.eps if sp.eps is not None else 1e-7).reshape(p.shape)
    if bool((sp.weight_decay != 0).any()):
        p.mul_(1.0 - _per_member(lr * sp.weight_decay, p))
    p.sub_(ortho * _per_member(lr * sp.muon_scale, p))


def clip_grad_norm_batched(params: list[Tensor] | list[StackedParam], max_norm: float) -> Tensor:
    """Per-member global gradient-norm clipping; returns the norms (K,).

    Given :class:`StackedParam` with ``clip_weight``, each tensor's norm is weighted by it first: the norm of
    the explicit form's gradients, as ``Plan.clip_grad_norm_`` measures it for one model."""
    stacked = [sp if isinstance(sp, StackedParam) else None for sp in params]
    tensors = [sp.param if isinstance(sp, StackedParam) else sp for sp in params]
    grads, weights = [], []
    for sp, p in zip(stacked, tensors):
        if p.grad is None:
            continue
        grads.append(p.grad)
        weights.append(sp.clip_weight if sp is not None else None)
    norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) * (1.0 if w is None else w.to(g.dtype))
                         for g, w in zip(grads, weights)], dim=1)  # (K, n_tensors)
    total = norms.norm(dim=1)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(_per_member(coef, g))
    return total

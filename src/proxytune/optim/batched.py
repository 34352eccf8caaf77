"""Optimizer updates for K stacked models trained together.

Every parameter is one tensor of shape ``(K, *shape)``: member ``k``'s copy is
``p[k]``. Hyperparameters that differ between members (lr, weight decay, eps)
are ``(K,)`` tensors; each update below is, member by member, the same
arithmetic as the single-model optimizer it mirrors (``torch.optim.SGD``,
``Adam``, ``AdamW``, proxytune's ``AdamAtan2`` and ``Muon``), so a member
trains as it would alone, up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .muon import _DEFAULT_NS_COEFFICIENTS

BATCHED_OPTIMIZERS = ("sgd", "adam", "adamw", "adam-atan2", "muon")


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


class BatchedOptimizer:
    """One optimizer over stacked parameters: ``step(lr_factor)`` updates all members.

    ``keep(index)`` drops members (a diverged trial leaves the group) by
    indexing every parameter, state tensor and hyperparameter.
    """

    def __init__(self, name: str, params: list[StackedParam], *, betas: tuple[float, float] = (0.9, 0.999),
                 momentum: float = 0.0, nesterov: bool = False, a: float = 1.27, b: float = 1.0,
                 ns_steps: int = 5) -> None:
        if name not in BATCHED_OPTIMIZERS:
            raise ValueError(f"batched training supports {', '.join(BATCHED_OPTIMIZERS)}; got {name!r} "
                             "(train these configs one by one instead)")
        self.name = name
        self.params = params
        self.betas = betas
        self.momentum = momentum
        self.nesterov = nesterov
        self.a, self.b = a, b
        self.ns_steps = ns_steps
        self.step_count = 0

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        self.step_count += 1
        for sp in self.params:
            grad = sp.param.grad
            if grad is None:
                continue
            lr = sp.lr * lr_factor
            if self.name == "sgd":
                self._sgd(sp, grad, lr)
            elif self.name == "muon" and sp.use_muon:
                self._muon(sp, grad, lr)
            elif self.name == "adam-atan2":
                self._atan2(sp, grad, lr)
            else:
                self._adam(sp, grad, lr, decoupled=self.name != "adam")

    def zero_grad(self) -> None:
        for sp in self.params:
            sp.param.grad = None

    def keep(self, index: Tensor) -> None:
        """Keep only the members in ``index`` (a 1-D long tensor)."""
        for sp in self.params:
            new = sp.param.detach().index_select(0, index).requires_grad_(sp.param.requires_grad)
            sp.param = new
            sp.lr = sp.lr.index_select(0, index)
            sp.weight_decay = sp.weight_decay.index_select(0, index)
            if sp.eps is not None:
                sp.eps = sp.eps.index_select(0, index)
            if sp.clip_weight is not None:
                sp.clip_weight = sp.clip_weight.index_select(0, index)
            sp.state = {k: v.index_select(0, index) for k, v in sp.state.items()}

    # ----------------------------------------------------------------- updates
    def _sgd(self, sp: StackedParam, grad: Tensor, lr: Tensor) -> None:
        p = sp.param
        d_p = grad.add(p * _per_member(sp.weight_decay, p)) if bool((sp.weight_decay != 0).any()) else grad
        if self.momentum != 0:
            buf = sp.state.get("momentum_buffer")
            if buf is None:
                buf = sp.state["momentum_buffer"] = d_p.clone()
            else:
                buf.mul_(self.momentum).add_(d_p)
            d_p = d_p.add(buf, alpha=self.momentum) if self.nesterov else buf
        p.sub_(d_p * _per_member(lr, p))

    def _moments(self, sp: StackedParam, grad: Tensor) -> tuple[Tensor, Tensor]:
        if not sp.state:
            sp.state["exp_avg"] = torch.zeros_like(sp.param)
            sp.state["exp_avg_sq"] = torch.zeros_like(sp.param)
        m, v = sp.state["exp_avg"], sp.state["exp_avg_sq"]
        beta1, beta2 = self.betas
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        return m, v

    def _adam(self, sp: StackedParam, grad: Tensor, lr: Tensor, decoupled: bool) -> None:
        p = sp.param
        wd = _per_member(sp.weight_decay, p)
        has_wd = bool((sp.weight_decay != 0).any())
        if has_wd and decoupled:
            p.mul_(1.0 - _per_member(lr, p) * wd)
        elif has_wd:
            grad = grad.add(p * wd)
        m, v = self._moments(sp, grad)
        beta1, beta2 = self.betas
        t = self.step_count
        denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(_per_member(sp.eps, p))
        step_size = _per_member(lr / (1.0 - beta1**t), p)
        p.sub_(m / denom * step_size)

    def _atan2(self, sp: StackedParam, grad: Tensor, lr: Tensor) -> None:
        p = sp.param
        m, v = self._moments(sp, grad)
        beta1, beta2 = self.betas
        t = self.step_count
        m_hat = m / (1.0 - beta1**t)
        denom = (v / (1.0 - beta2**t)).sqrt_().mul_(self.b)
        if bool((sp.weight_decay != 0).any()):
            p.mul_(1.0 - _per_member(lr * sp.weight_decay, p))
        p.sub_(torch.atan2(m_hat, denom) * _per_member(lr * self.a, p))

    def _muon(self, sp: StackedParam, grad: Tensor, lr: Tensor) -> None:
        p = sp.param
        buf = sp.state.get("momentum_buffer")
        if buf is None:
            buf = sp.state["momentum_buffer"] = torch.zeros_like(p)
        buf.mul_(self.momentum).add_(grad)
        direction = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
        k = p.shape[0]
        ortho = newton_schulz_batched(direction.reshape(k, p.shape[1], -1), steps=self.ns_steps,
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


__all__ = ["BATCHED_OPTIMIZERS", "BatchedOptimizer", "StackedParam", "clip_grad_norm_batched",
           "newton_schulz_batched"]

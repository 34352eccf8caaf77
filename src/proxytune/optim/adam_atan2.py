"""Adam-atan2: Adam with ``atan2`` in place of ``m / (sqrt(v) + eps)``.

Everett et al. (2024), "Scaling Exponents Across Parameterizations and
Optimizers". Replacing the division by ``atan2`` removes ``eps`` entirely, makes
the update invariant to the scale of the gradient, and bounds every entry of the
step by ``lr * a * pi / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

__all__ = ["AdamAtan2"]


def _check_hparams(lr: float, betas: tuple[float, float], weight_decay: float, a: float, b: float) -> None:
    """Raise ``ValueError`` for hyperparameters outside their valid range."""
    if not lr >= 0.0:
        raise ValueError(f"AdamAtan2: invalid learning rate {lr!r}; expected lr >= 0")
    if len(betas) != 2:
        raise ValueError(f"AdamAtan2: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"AdamAtan2: invalid beta{i + 1} {beta!r}; expected 0 <= beta < 1")
    if not weight_decay >= 0.0:
        raise ValueError(f"AdamAtan2: invalid weight_decay {weight_decay!r}; expected weight_decay >= 0")
    if not a > 0.0:
        raise ValueError(f"AdamAtan2: invalid a {a!r}; expected a > 0")
    if not b > 0.0:
        raise ValueError(f"AdamAtan2: invalid b {b!r}; expected b > 0")


def _next_step(state: dict[str, Any]) -> float:
    """Increment ``state['step']`` (tensor or number) and return the new value."""
    step = state["step"]
    if isinstance(step, Tensor):
        step.add_(1.0)
        return float(step)
    state["step"] = float(step) + 1.0
    return state["step"]


class AdamAtan2(Optimizer):
    """Adam-atan2 optimizer.

    Per parameter, with bias-corrected moments ``m_hat`` and ``v_hat``::

        p <- p * (1 - lr * weight_decay) - lr * a * atan2(m_hat, b * sqrt(v_hat))

    Args:
        params: parameters or parameter-group dicts. Groups may override ``lr``,
            ``betas``, ``weight_decay``, ``a`` and ``b``; unknown keys are kept.
        lr: learning rate (>= 0).
        betas: decay rates of the first and second moments, each in [0, 1).
        weight_decay: decoupled weight decay, multiplied by ``lr``.
        a: output scale of ``atan2`` (> 0); 1.27 roughly matches Adam's step size.
        b: scale of ``sqrt(v_hat)`` inside ``atan2`` (> 0).
        foreach: use the vectorized ``torch._foreach_*`` path. ``None`` picks it
            for a group whose params share one device and dtype.
        maximize: ascend the objective instead of descending it.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        a: float = 1.27,
        b: float = 1.0,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        _check_hparams(lr, betas, weight_decay, a, b)
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, a=a, b=b, foreach=foreach, maximize=maximize
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its (possibly overridden) hyperparameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hparams(group["lr"], group["betas"], group["weight_decay"], group["a"], group["b"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Groups pickled by older versions may lack the flags.
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamAtan2 does not support sparse gradients")
                params.append(p)
                grads.append(-p.grad if group["maximize"] else p.grad)
            if not params:
                continue

            foreach = group["foreach"]
            if foreach is None:
                foreach = len({(p.device, p.dtype) for p in params}) == 1
            if foreach:
                # Buckets keep every foreach call on a single device and dtype.
                buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
                for p, g in zip(params, grads):
                    bucket = buckets.setdefault((p.device, p.dtype), ([], []))
                    bucket[0].append(p)
                    bucket[1].append(g)
                for ps, gs in buckets.values():
                    self._foreach_update(group, ps, gs)
            else:
                for p, g in zip(params, grads):
                    self._single_update(group, p, g)
        return loss

    def _state_for(self, p: Tensor) -> dict[str, Any]:
        """Return the state of ``p``, initializing it on first use."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _single_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        """Per-tensor update using ``torch.atan2`` directly."""
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        state = self._state_for(p)
        step = _next_step(state)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        exp_avg.lerp_(g, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        m_hat = exp_avg / (1.0 - beta1**step)
        denom = (exp_avg_sq / (1.0 - beta2**step)).sqrt_().mul_(group["b"])

        if wd != 0.0:
            p.mul_(1.0 - lr * wd)
        p.add_(torch.atan2(m_hat, denom), alpha=-lr * group["a"])

    def _foreach_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Vectorized update for params sharing one device and dtype."""
        beta1, beta2 = group["betas"]
        lr, wd, b = group["lr"], group["weight_decay"], group["b"]
        states = [self._state_for(p) for p in params]
        steps = [_next_step(s) for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]

        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)

        # Steps can differ when some params skipped earlier updates (grad None).
        y = torch._foreach_div(exp_avgs, [1.0 - beta1**s for s in steps])
        x = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_mul_(x, [b / math.sqrt(1.0 - beta2**s) for s in steps])

        # No _foreach_atan2: for x >= 0, atan2(y, x) = 2 * atan(y / (hypot(x, y) + x)).
        # The sum has no cancellation; clamping at the smallest normal only matters
        # for x = y = 0, where it turns 0/0 into 0.
        denom = torch._foreach_mul(x, x)
        torch._foreach_addcmul_(denom, y, y)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, x)
        torch._foreach_clamp_min_(denom, torch.finfo(params[0].dtype).tiny)
        torch._foreach_div_(y, denom)
        torch._foreach_atan_(y)

        if wd != 0.0:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_add_(params, y, alpha=-2.0 * lr * group["a"])

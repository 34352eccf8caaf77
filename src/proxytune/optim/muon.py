"""Muon (momentum + Newton-Schulz orthogonalization) with AdamW for the rest.

Hidden weight matrices (``use_muon=True`` groups) step along the approximately
orthogonalized momentum; embeddings, readouts and vectors (``use_muon=False``)
use a standard AdamW update, so one optimizer can drive the whole model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

__all__ = ["Muon", "MatrixAndAdamW", "newton_schulz", "adamw_update"]

_DEFAULT_NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    g: Tensor,
    steps: int = 5,
    coefficients: Sequence[float] = _DEFAULT_NS_COEFFICIENTS,
    eps: float = 1e-7,
) -> Tensor:
    """Approximately orthogonalize a matrix with a quintic Newton-Schulz iteration.

    The input is normalized by ``||g||_F + eps`` (added, not clamped, so scaling
    ``g`` and ``eps`` together leaves the result unchanged), then iterated as
    ``X <- a X + (b A + c A @ A) @ X`` with ``A = X @ X^T``. The tuned default
    coefficients trade exactness for speed: singular values that are not tiny
    relative to the largest end up roughly in [0.7, 1.2], not at exactly 1.

    Args:
        g: 2-D tensor; the computation runs in its dtype.
        steps: number of iterations.
        coefficients: ``(a, b, c)`` of the quintic.
        eps: added to the Frobenius norm before normalizing.

    Returns:
        A tensor of the same shape and dtype as ``g``.
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz expects a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    # NS(G^T) = NS(G)^T, so iterate on the wide orientation: A is then the smaller Gram matrix.
    transposed = g.shape[0] > g.shape[1]
    x = g.mT if transposed else g
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.mT if transposed else x


def _check_common(lr: float, weight_decay: float, where: str) -> None:
    """Validate hyperparameters shared by both group kinds."""
    if not lr >= 0.0:
        raise ValueError(f"Muon: invalid lr {lr!r} in {where}; expected lr >= 0")
    if not weight_decay >= 0.0:
        raise ValueError(f"Muon: invalid weight_decay {weight_decay!r} in {where}; expected weight_decay >= 0")


def _default_scale(shape: torch.Size) -> float:
    """``sqrt(max(1, rows / cols))`` of the 2-D view ``(shape[0], prod(shape[1:]))``."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    return math.sqrt(max(1.0, rows / cols))


class MatrixAndAdamW(Optimizer):
    """An optimizer with its own step on the groups flagged ``FLAG`` (matrices) and AdamW's on the others: the
    shared part of :class:`Muon` and :class:`proxytune.optim.Dion`. A subclass sets ``NAME`` and ``FLAG`` and
    implements ``_matrix_update(group, p, grad)``; its defaults carry ``adam_eps``, the default ``eps`` of the
    AdamW groups (the shared ``eps`` default is the matrix step's)."""

    NAME = ""
    FLAG = ""

    def _add_group(self, param_group: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Torch's ``add_param_group``, then the new group's kind: ``FLAG`` defaults to whether all its params
        have ``ndim >= 2``, and an AdamW group without its own ``eps`` takes ``adam_eps``. Returns the group and
        its name for error messages."""
        has_eps = "eps" in param_group
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        where = f"param group {index}" + (f" ({group['name']!r})" if "name" in group else "")
        if self.FLAG not in group:
            group[self.FLAG] = all(p.ndim >= 2 for p in group["params"])
        adam_eps = group.pop("adam_eps")
        if not has_eps and not group[self.FLAG]:
            group["eps"] = adam_eps
        return group, where

    def _matrix_update(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        with torch.enable_grad():
            loss = None if closure is None else closure()
        for group in self.param_groups:
            matrix = group[self.FLAG]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self.NAME} does not support sparse gradients")
                if matrix:
                    self._matrix_update(group, p, p.grad)
                else:
                    adamw_update(self.state[p], group, p, p.grad)
        return loss


class Muon(MatrixAndAdamW):
    """Muon for hidden matrices and AdamW for everything else, chosen per group.

    Muon groups (``use_muon=True``)::

        buf <- momentum * buf + grad
        d   <- grad + momentum * buf   (nesterov)   or   buf
        O   <- newton_schulz(d.reshape(rows, -1)).reshape(p.shape)
        p   <- p * (1 - lr * weight_decay) - lr * scale * O

    ``scale`` is the group's float key when present (the caller knows the layer's
    true fan-in/fan-out); otherwise ``sqrt(max(1, rows / cols))`` per tensor.

    AdamW groups (``use_muon=False``) apply decoupled decay ``p *= 1 - lr * wd``
    then ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected moments.

    A group without ``use_muon`` is a Muon group only if all its params have
    ``ndim >= 2``. Unknown group keys are preserved.

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate default for both kinds of group.
        momentum: Muon momentum coefficient.
        nesterov: use the Nesterov direction in Muon groups.
        ns_steps: Newton-Schulz iterations.
        ns_coefficients: ``(a, b, c)`` of the Newton-Schulz quintic.
        eps: Newton-Schulz normalization eps (default ``eps`` of Muon groups).
        weight_decay: decoupled weight decay for both kinds of group.
        betas: AdamW moment decay rates.
        adam_eps: default ``eps`` of AdamW groups that do not set one.
    """

    NAME = "Muon"
    FLAG = "use_muon"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = _DEFAULT_NS_COEFFICIENTS,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
    ) -> None:
        if not adam_eps >= 0.0:
            raise ValueError(f"Muon: invalid adam_eps {adam_eps!r}; expected adam_eps >= 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            weight_decay=weight_decay,
            betas=tuple(betas),
            # Only a source for AdamW groups' `eps`; removed from groups in add_param_group.
            adam_eps=adam_eps,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, deciding its kind and validating its hyperparameters."""
        group, where = self._add_group(param_group)  # the shared eps default is the Newton-Schulz one
        _check_common(group["lr"], group["weight_decay"], where)
        if not group["eps"] >= 0.0:
            raise ValueError(f"Muon: invalid eps {group['eps']!r} in {where}; expected eps >= 0")
        if group["use_muon"]:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"Muon: {where} has use_muon=True but contains a tensor of shape {tuple(p.shape)} "
                        f"(ndim={p.ndim} < 2); put it in a group with use_muon=False"
                    )
            if not 0.0 <= group["momentum"] < 1.0:
                raise ValueError(f"Muon: invalid momentum {group['momentum']!r} in {where}; expected 0 <= momentum < 1")
            if not (isinstance(group["ns_steps"], int) and group["ns_steps"] >= 0):
                raise ValueError(f"Muon: invalid ns_steps {group['ns_steps']!r} in {where}; expected an int >= 0")
            if len(group["ns_coefficients"]) != 3:
                coefficients = group["ns_coefficients"]
                raise ValueError(f"Muon: ns_coefficients in {where} must be (a, b, c), got {coefficients!r}")
            scale = group.get("scale")
            if scale is not None and not scale > 0.0:
                raise ValueError(f"Muon: invalid scale {scale!r} in {where}; expected scale > 0")
        else:
            betas = group["betas"]
            if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
                raise ValueError(f"Muon: invalid betas {betas!r} in {where}; expected two values in [0, 1)")

    def _matrix_update(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> None:
        """Momentum, orthogonalization and scaled step for one matrix."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        momentum = group["momentum"]

        buf.mul_(momentum).add_(grad)
        direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        ortho = newton_schulz(
            direction.reshape(direction.shape[0], -1),
            steps=group["ns_steps"],
            coefficients=group["ns_coefficients"],
            eps=group["eps"],
        )
        scale = group.get("scale")
        if scale is None:
            scale = _default_scale(p.shape)

        lr, wd = group["lr"], group["weight_decay"]
        if wd != 0.0:
            p.mul_(1.0 - lr * wd)
        p.add_(ortho.reshape(p.shape), alpha=-lr * scale)



def adamw_update(state: dict[str, Any], group: dict[str, Any], p: Tensor, grad: Tensor) -> None:
    """One AdamW step of ``p`` in place, with the same operation order as ``torch.optim.AdamW``: decoupled decay
    ``p *= 1 - lr * wd``, then ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected moments. ``state`` is
    the parameter's optimizer state (filled at the first step); ``group`` gives ``lr``, ``weight_decay``,
    ``betas`` and ``eps``. Muon's and Dion's non-matrix groups step with it."""
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    step_t = state["step"]
    if isinstance(step_t, Tensor):
        step_t.add_(1.0)
        step = float(step_t)
    else:
        step = state["step"] = float(step_t) + 1.0
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]

    if wd != 0.0:
        p.mul_(1.0 - lr * wd)
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    # sqrt(v) / bc2**0.5 rather than sqrt(v_hat): keeps results identical to torch's AdamW.
    denom = (exp_avg_sq.sqrt() / (1.0 - beta2**step) ** 0.5).add_(group["eps"])
    p.addcdiv_(exp_avg, denom, value=-lr / (1.0 - beta1**step))

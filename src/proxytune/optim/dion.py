"""Dion (low-rank orthonormalized momentum with error feedback) on matrices, AdamW on the rest.

Source: Ahn, Xu, Abreu & Langford 2025, "Dion: Distributed Orthonormalized Updates" (arXiv 2504.05295),
the single-device form of the paper's update (its Algorithm 1, without the sharding). For a matrix ``W`` of
shape ``(d_out, d_in)`` with gradient ``G``, momentum buffer ``M`` and right factor ``Q`` (``d_in x r``)::

    B <- M + G                                  (the buffer, before error feedback)
    P <- orthonormalize(B Q)                    (d_out x r, QR: one warm-started power-iteration step)
    R <- B^T P                                  (d_in x r)
    M <- B - (1 - mu) P R^T                     (error feedback: what P R^T missed stays at full weight)
    Q <- column_normalize(R)                    (each column to unit norm; the warm start of the next step)
    W <- W (1 - lr wd) - lr sqrt(d_out / d_in) P Q^T

The rank is ``r = ceil(rank_fraction x min(d_out, d_in))``, or a fixed ``rank``. Columns of ``R`` too small
to be resolved in the working precision (rounding noise of a buffer of lower rank than ``r``) count as zero
(:func:`_resolved`). ``P`` has orthonormal columns and ``Q`` unit columns, so ``||P Q^T||_F^2 = r`` whatever the gradient's scale; as the warm start converges (a fixed buffer:
subspace iteration), ``P Q^T`` tends to ``U_r V_r^T`` of the buffer's top ``r`` singular pairs, Muon's
orthogonalized step at full rank. One step from a random ``Q`` is not yet orthonormal: column normalization
does not diagonalize ``R``. The step does not depend on the gradient's scale (``eps`` aside, which the plan
scales with it), so the LR folds as Adam's; the shape factor ``sqrt(d_out / d_in)`` gives the step the spectral
norm the spectral condition asks for (Yang, Simon & Bernstein 2023), so under muP the matrices' LR is
width-free (docs/parameterizations.md section 18).

Groups with ``use_dion=True`` take that step; the others (embeddings, readout, vectors: the paper and its
authors' code use a scalar optimizer there) take AdamW's, as Muon's non-matrix groups do. Tensors of more
than two dimensions are viewed as ``(shape[0], rest)``. The random start of ``Q`` is drawn from a generator
seeded with ``seed`` for each matrix, so it depends on the matrix's shape and rank only: runs repeat whatever
the order or grouping of the parameters (a plan's folded and explicit forms, merged groups or not), and the
global RNG is left alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .muon import MatrixAndAdamW

__all__ = ["DION_MATRIX_EPS", "Dion", "dion_rank", "dion_matrix_step"]

#: the base eps of the column normalization of ``R`` (the plan scales it per tensor with the gradient)
DION_MATRIX_EPS = 1e-8


def dion_rank(shape: torch.Size | tuple[int, ...], rank_fraction: float, rank: int | None = None) -> int:
    """The rank of the Dion step of a tensor of ``shape`` (its 2-D view ``(shape[0], prod(shape[1:]))``):
    ``rank`` when given, else ``ceil(rank_fraction x min(rows, cols))``; at least 1, at most ``min(rows, cols)``."""
    full = min(shape[0], math.prod(shape[1:]))
    wanted = rank if rank is not None else math.ceil(rank_fraction * full - 1e-9)
    return max(1, min(full, wanted))


def dion_matrix_step(p: Tensor, grad: Tensor, momentum: Tensor, q: Tensor, *, lr: float, scale: float, mu: float,
                     weight_decay: float, eps: float) -> None:
    """One Dion step of the matrix ``p``, in place (see the module docstring).

    ``momentum`` is the buffer ``M`` as a 2-D ``(rows, cols)`` tensor, ``q`` the right factor ``(cols, r)``;
    both are updated. QR and the normalization run in float32 at least.
    """
    rows = p.shape[0]
    buf = momentum.add_(grad.reshape(rows, -1).to(momentum.dtype))
    work = torch.promote_types(buf.dtype, torch.float32)
    b = buf.to(work)
    left, _ = torch.linalg.qr(b @ q.to(work))  # (rows, r), orthonormal columns
    right = b.mT @ left  # (cols, r)
    buf.sub_((left @ right.mT).to(buf.dtype), alpha=1.0 - mu)
    norms = right.norm(dim=0, keepdim=True)
    q.copy_(torch.where(norms > _resolved(work) * norms.max(), right / (norms + eps), torch.zeros_like(right)))
    if weight_decay != 0.0:
        p.mul_(1.0 - lr * weight_decay)
    p.add_((left @ q.to(work).mT).reshape(p.shape).to(p.dtype), alpha=-lr * scale)


def _resolved(dtype: torch.dtype) -> float:
    """The smallest column norm of ``R``, relative to its largest, that the normalization keeps: ``sqrt(eps)`` of
    the working dtype (3.5e-4 in float32, 1.5e-8 in float64).

    A buffer of lower rank than ``r`` (a batch of fewer tokens than the width) leaves columns of ``R`` that are
    zero in exact arithmetic and rounding noise here; normalizing them would add unit-size noise components to the
    step (measured without this rule, tests/test_dion.py's width check: the hidden matrices' effect grows as
    ``width^0.02..0.11`` on the reference GPT, 128 tokens, and ``width^0.10..0.15`` on the MLP, batch 64; with it,
    ``width^0.01..0.04``). More generally, rounding moves the direction of a column of relative norm ``nu`` by
    about ``eps / nu``, so below ``sqrt(eps)`` the unit column is not known to half the working precision (and a
    plan's folded and explicit forms part after a few steps). Such columns count as zero: the step keeps the
    directions it resolves, as Muon's five Newton-Schulz steps leave directions far below 1e-3 of the gradient's
    Frobenius norm short of 1 too.
    """
    return torch.finfo(dtype).eps ** 0.5


def _default_scale(shape: torch.Size) -> float:
    """``sqrt(rows / cols)`` of the 2-D view ``(shape[0], prod(shape[1:]))``: ``sqrt(d_out / d_in)`` for torch's
    ``(out, in)`` layout."""
    return math.sqrt(shape[0] / math.prod(shape[1:]))


def _check(ok: bool, what: str, value: Any, where: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"Dion: invalid {what} {value!r} in {where}; expected {expected}")


class Dion(MatrixAndAdamW):
    """Dion for matrices and AdamW for everything else, chosen per group (``use_dion``).

    A group without ``use_dion`` is a Dion group only if all its params have ``ndim >= 2``. A Dion group's
    ``scale`` key, when present, is its shape factor (the caller knows the layer's true fans); otherwise
    ``sqrt(rows / cols)`` per tensor. Unknown group keys are preserved.

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate default for both kinds of group.
        mu: Dion's momentum (the error-feedback factor; the paper's 0.95).
        rank_fraction: the rank of each Dion step as a fraction of ``min(rows, cols)``; 1 is full rank.
        rank: a fixed rank for every matrix instead (capped at ``min(rows, cols)``); None: ``rank_fraction``.
        eps: added to the column norms of ``R`` (default ``eps`` of Dion groups).
        weight_decay: decoupled weight decay for both kinds of group.
        betas: AdamW moment decay rates.
        adam_eps: default ``eps`` of AdamW groups that do not set one.
        seed: seed of the generator that draws each matrix's starting ``Q`` (the same for every matrix).
    """

    NAME = "Dion"
    FLAG = "use_dion"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.01,
        mu: float = 0.95,
        rank_fraction: float = 1.0,
        rank: int | None = None,
        eps: float = DION_MATRIX_EPS,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        _check(adam_eps >= 0.0, "adam_eps", adam_eps, "the arguments", "adam_eps >= 0")
        defaults = dict(lr=lr, mu=mu, rank_fraction=rank_fraction, rank=rank, eps=eps, weight_decay=weight_decay,
                        betas=tuple(betas), adam_eps=adam_eps)
        self._seed = seed
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, deciding its kind and validating its hyperparameters."""
        group, where = self._add_group(param_group)  # the shared eps default is the column normalization's
        _check(group["lr"] >= 0.0, "lr", group["lr"], where, "lr >= 0")
        _check(group["weight_decay"] >= 0.0, "weight_decay", group["weight_decay"], where, "weight_decay >= 0")
        _check(group["eps"] >= 0.0, "eps", group["eps"], where, "eps >= 0")
        if group["use_dion"]:
            for p in group["params"]:
                _check(p.ndim >= 2, "tensor shape", tuple(p.shape), where,
                       "ndim >= 2 in a use_dion group (put vectors in a group with use_dion=False)")
            _check(0.0 <= group["mu"] < 1.0, "mu", group["mu"], where, "0 <= mu < 1")
            _check(0.0 < group["rank_fraction"] <= 1.0, "rank_fraction", group["rank_fraction"], where,
                   "0 < rank_fraction <= 1")
            rank = group["rank"]
            _check(rank is None or (isinstance(rank, int) and rank >= 1), "rank", rank, where, "None or an int >= 1")
            scale = group.get("scale")
            _check(scale is None or scale > 0.0, "scale", scale, where, "scale > 0")
        else:
            betas = group["betas"]
            _check(len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas), "betas", betas, where,
                   "two values in [0, 1)")

    def _matrix_update(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> None:
        """Dion's step of one matrix (its state made at its first step)."""
        state = self.state[p]
        rows, cols = p.shape[0], math.prod(p.shape[1:])
        if not state:
            rank = dion_rank(p.shape, group["rank_fraction"], group["rank"])
            state["momentum"] = torch.zeros((rows, cols), dtype=p.dtype, device=p.device)
            q = torch.randn((cols, rank), generator=torch.Generator().manual_seed(self._seed), dtype=torch.float64)
            state["Q"] = q.to(device=p.device, dtype=torch.promote_types(p.dtype, torch.float32))
        scale = group.get("scale")
        dion_matrix_step(p, grad, state["momentum"], state["Q"], lr=group["lr"],
                         scale=_default_scale(p.shape) if scale is None else scale, mu=group["mu"],
                         weight_decay=group["weight_decay"], eps=group["eps"])

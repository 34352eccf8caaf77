"""SOAP and Shampoo, built from the ``pytorch-optimizer`` package (the ``matrix`` extra), as the plan uses them.

proxytune does not reimplement either optimizer: the plan gives every tensor its own param group (lr, weight
decay, eps or damping) and the library steps. The package is imported only here, when an optimizer is built, so
``import proxytune`` and ``pt.parameterize(..., optimizer="soap")`` work without it.

What each library step computes (pytorch-optimizer 4.1), and what it means for the width rules
(docs/parameterizations.md section 17):

**SOAP** (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"). Per matrix ``W`` of shape
``(m, n)`` it keeps ``L = EMA(G G^T)`` and ``R = EMA(G^T G)`` (decay ``shampoo_beta``, default ``beta2``), their
eigenbases ``Q_L``, ``Q_R`` (``eigh`` at the first step, then one power-iteration + QR every
``precondition_frequency`` = 10 steps) and Adam's moments, the second one in the rotated basis::

    G' = Q_L^T G Q_R,   v <- beta2 v + (1 - beta2) G'^2,   m <- beta1 m + (1 - beta1) G
    W  <- W - lr_t Q_L [ (Q_L^T m Q_R) / (sqrt(v) + eps) ] Q_R^T,   then W <- W (1 - lr wd)

with Adam's bias corrections in ``lr_t``. The first step only collects statistics (no update). Vectors are
not rotated (``precondition_1d=False``): they take plain Adam steps. Every entry of the rotated step is
normalized as Adam's is, so the step does not depend on the gradient's scale (LR power 1, eps folded as
Adam's, ``1/s``), and eps compares with rotated entries whose RMS is the gradient's RMS (a rotation keeps it):
Adam's eps rule. Its width exponents are *not* Adam's full-alignment ones: in the eigenbasis of ``R`` a layer's
input sits on few coordinates, so normalizing each entry gains nothing from summing many aligned coordinates,
and the step acts on the input as a no-alignment step does. Measured (tests/test_matrix_optimizers.py), the
hidden matrices of the reference GPT and MLP and the GPT's readout keep their own-update effect width-free with
Adam's *no-alignment* rows (hidden LR ``fan_in^-1/2`` under muP), and move by ``width^-1/2`` with the
full-alignment rows. The rules table fixes that column for SOAP.

**Shampoo** (Gupta et al. 2018, "Shampoo: Preconditioned Stochastic Tensor Optimization"), the library's
``Shampoo`` (not ``ScalableShampoo``): no grafting, statistics summed from the first step as in the paper::

    L <- L + G G^T,   R <- R + G^T G       (both start at eps I: the damping, ``matrix_eps``)
    W <- W - lr L^-1/4 G R^-1/4            (exponent -1/(2 x order); SVD every ``preconditioning_compute_steps``)

For one gradient ``G = U S V^T`` and a damping far below ``S^2`` the step is ``U V^T``: its spectral norm is 1
whatever the width or the gradient's scale (LR power 1), so the LR follows the spectral condition, as for
Muon's spectral scale: ``sqrt(fan_out / fan_in)`` in explicit units, which under muP is ``m^1/2`` for
embeddings and vectors, 1 for hidden matrices and ``m^-1/2`` for the readout (the LR exponents of Ishikawa & Karakida 2024's muP for Shampoo, as the first
author's public code sets them). The damping competes with the eigenvalues of ``L`` and ``R``, the squared
singular values of the gradient: it folds as ``s^-2`` and, for a gradient of fixed rank, scales as the
gradient's RMS squared times the tensor's size (under muP: ``1/m`` for embeddings and vectors, 1 for hidden
matrices, ``m`` for the readout). A vector's statistic is ``eps I + g g^T``, so its step ``g / |g|`` has norm
``lr``: the embedding row again.

Two library defaults are not width-safe, so the factory sets them: weight decay is decoupled
(``weight_decouple=True``, AdamW's ``W <- W (1 - lr wd)``, which the plan's weight-decay rule assumes; the
library's default adds ``wd W`` to the gradient instead), and momentum must stay 0: the library's momentum
mixes the raw gradient with the previous *preconditioned* step, two quantities whose ratio changes with the
gradient's scale and so with width.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MATRIX_EXTRA", "soap", "shampoo"]

#: what to install when the library is missing
MATRIX_EXTRA = "pip install 'proxytune[matrix]'  (or: pip install 'pytorch-optimizer>=4.1,<5')"


def _library(name: str) -> Any:
    """The ``pytorch_optimizer`` module, or an ImportError that names the extra to install."""
    try:
        import pytorch_optimizer
    except ImportError as exc:
        raise ImportError(f"optimizer {name!r} comes from the pytorch-optimizer package, which is not installed: "
                          f"{MATRIX_EXTRA}") from exc
    return pytorch_optimizer


def soap(params: Any, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """``pytorch_optimizer.SOAP`` over ``params`` (the plan's groups carry lr, weight_decay and eps)."""
    return _library("soap").SOAP(params, lr=lr, **kwargs)


def shampoo(params: Any, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """``pytorch_optimizer.Shampoo`` over ``params`` (the groups carry lr, weight_decay and the damping
    ``matrix_eps``), with decoupled weight decay; momentum is refused (see the module docstring)."""
    momentum = kwargs.get("momentum", 0.0)
    if momentum:
        raise ValueError(f"shampoo: momentum={momentum!r} is not supported: pytorch-optimizer's Shampoo mixes the "
                         "gradient with the previous preconditioned step, whose ratio changes with width, so the "
                         "plan's rules would not hold; leave momentum at 0")
    if not kwargs.get("weight_decouple", True):
        raise ValueError("shampoo: weight_decouple=False (weight decay added to the gradient) is not what the "
                         "plan's weight-decay rule assumes; proxytune builds Shampoo with decoupled decay")
    kwargs["weight_decouple"] = True
    return _library("shampoo").Shampoo(params, lr=lr, **kwargs)

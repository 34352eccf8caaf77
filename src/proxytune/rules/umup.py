"""u-muP (Blake et al. 2024, "u-muP: The Unit-Scaled Maximal Update Parametrization"): the absolute rules.

The other recipes are multipliers relative to a base model. u-muP is absolute:
every weight starts N(0, 1) (biases 0, gains 1) and the scale lives in the
forward pass, as a function of each tensor's own fan-in, the model's width and
depth. Its "base" is therefore the unit-scaled model itself at any shape: the
global ``lr`` (optimal near 1 in the paper, where SP sits near 2^-9) is the
only base value, and each tensor's LR is ``lr x`` the table below, evaluated at
the tensor's own shape. Transfer from a proxy to a target is the ratio of the
table entries at the two shapes.

Per tensor (Adam-family optimizers):

============ ======================== ==================================
role         forward multiplier       LR multiplier
============ ======================== ==================================
embedding    1 (x embedding mult)     ``d_model^-1/2`` (the paper's rule)
hidden       ``fan_in^-1/2``          ``fan_in^-1/2``
readout      ``fan_in^-1`` (x output) 1
vector       1                        1
in a block   (as above)               x ``n_blocks^-1/2``
============ ======================== ==================================

Residual branches follow the ``tau`` rule: ``alpha_mlp = residual_mult x
sqrt(2 / (1 + ratio^2))``, ``alpha_attn = ratio x alpha_mlp`` and the stream
after each branch is ``(x + tau f(x)) / sqrt(1 + tau^2)``. For a pre-norm
model that stream equals, up to one positive factor per position in the stack,
the plain sum ``emb + sum_i w_i f_i(x)`` with ``w_i = alpha_i / sqrt(n_blocks)``
(:func:`residual_taus` and :func:`branch_weights` give both forms; the test
suite checks that they agree). The norm before each branch and the final norm
remove that factor, so the plan puts ``w_i`` on each branch's output weight.
Attention logits are ``attn_mult x q.k / d_head`` (not ``1/sqrt(d_head)``);
the attention output is divided by its value under uniform causal attention,
``sqrt(H_s / s)`` for ``s`` positions (the paper fits a curve that moves from
that value toward 1 as ``attn_mult`` sharpens attention; at init u-muP's
logits are near uniform). Known nonlinearities are divided by their RMS at a
unit Gaussian input times ``act_mult``.

Weight decay is independent of the LR: each tensor decays by ``wd`` per step
at the peak of the schedule (its group's weight decay is ``wd / lr``). Adam's
eps is not scaled.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

#: the named HPs of u-muP and the sweep / TrainConfig fields that set them (all default 1);
#: ``loss_softmax_mult`` is the output multiplier on the logits (``output_mult``).
UMUP_HPS: dict[str, str] = {"attn_mult": "attn_mult", "act_mult": "act_mult", "residual_mult": "residual_mult",
                            "residual_attn_ratio": "residual_attn_ratio", "loss_softmax_mult": "output_mult"}

ACTIVATIONS: dict[str, object] = {
    "gelu": F.gelu, "relu": F.relu, "silu": F.silu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def branch_alphas(residual_mult: float = 1.0, residual_attn_ratio: float = 1.0) -> tuple[float, float]:
    """``(alpha_attn, alpha_mlp)``: the relative weights of attention and MLP branches. Their squares sum to
    ``2 x residual_mult^2`` whatever the ratio, so the ratio moves weight between the two kinds only."""
    alpha_mlp = residual_mult * math.sqrt(2.0 / (1.0 + residual_attn_ratio ** 2))
    return residual_attn_ratio * alpha_mlp, alpha_mlp


def residual_taus(n_blocks: int, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0) -> list[float]:
    """u-muP's ``tau`` per branch, in order (attention, MLP, attention, ...), for the normalized add
    ``x <- (x + tau f(x)) / sqrt(1 + tau^2)``: branch ``i`` gets ``w_i / sqrt(1 + sum_{j<i} w_j^2)`` with
    ``w_i = alpha_i / sqrt(n_blocks)``, so every branch adds the same share of the stream's unit variance."""
    a_attn, a_mlp = branch_alphas(residual_mult, residual_attn_ratio)
    taus, total = [], 1.0  # the embedding's share
    for i in range(2 * n_blocks):
        w2 = (a_attn if i % 2 == 0 else a_mlp) ** 2 / n_blocks
        taus.append(math.sqrt(w2 / total))
        total += w2
    return taus


def branch_weights(n_blocks: int, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0,
                   ) -> tuple[float, float]:
    """``(w_attn, w_mlp)``: the forward multipliers on a pre-norm model's branch outputs that give the same
    network as :func:`residual_taus` (see the module docstring)."""
    a_attn, a_mlp = branch_alphas(residual_mult, residual_attn_ratio)
    return a_attn / math.sqrt(n_blocks), a_mlp / math.sqrt(n_blocks)


def causal_attention_output_scale(seq_len: int) -> float:
    """``sqrt(s / H_s)``: one over the RMS of the output of uniform causal attention over ``s`` positions
    with unit values (position ``t`` averages ``t`` values: RMS ``t^-1/2``; ``H_s`` the harmonic number)."""
    h = sum(1.0 / t for t in range(1, seq_len + 1))
    return math.sqrt(seq_len / h)


@lru_cache(maxsize=64)
def activation_scale(kind: str, mult: float = 1.0) -> float:
    """One over the RMS of ``act(mult x)`` for ``x ~ N(0, 1)`` (``swiglu``: ``silu(mult g) x u`` with ``g``,
    ``u`` independent unit Gaussians), by quadrature on a fine grid. Unknown kinds give 1."""
    x = torch.linspace(-12.0, 12.0, 200001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    dx = float(x[1] - x[0])
    if kind in ("swiglu", "silu_glu"):
        ms = float((F.silu(mult * x) ** 2 * pdf).sum() * dx)  # E[u^2] = 1
    elif kind in ACTIVATIONS:
        ms = float((ACTIVATIONS[kind](mult * x) ** 2 * pdf).sum() * dx)  # type: ignore[operator]
    else:
        return 1.0
    return 1.0 / math.sqrt(ms)


@lru_cache(maxsize=64)
def activation_grad_scale(kind: str, mult: float = 1.0) -> float:
    """One over the RMS of the derivative of ``act(mult x)`` with respect to ``x``, for ``x ~ N(0, 1)``
    (``swiglu``: with respect to the gate): the backward counterpart of :func:`activation_scale`."""
    x = torch.linspace(-12.0, 12.0, 200001, dtype=torch.float64, requires_grad=True)
    if kind in ("swiglu", "silu_glu"):
        f = F.silu
    elif kind in ACTIVATIONS:
        f = ACTIVATIONS[kind]  # type: ignore[assignment]
    else:
        return 1.0
    (d,) = torch.autograd.grad(f(mult * x).sum(), x)  # type: ignore[operator]
    x = x.detach()
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    ms = float((d ** 2 * pdf).sum() * float(x[1] - x[0]))
    return 1.0 / math.sqrt(ms) if ms > 0 else 1.0


def unit_lr(role: str, fan_in: int, fan_out: int, n_blocks: int, in_block: bool) -> float:
    """u-muP's LR multiplier of one tensor (Adam family), absolute: ``lr_tensor = lr x unit_lr(...)``."""
    if role == "hidden":
        f = fan_in ** -0.5
    elif role == "embedding":
        f = fan_out ** -0.5  # d_model^-1/2, as the paper has it
    else:  # readout, vectors, scalars
        f = 1.0
    if in_block and n_blocks > 0:
        f *= n_blocks ** -0.5
    return f


def unit_forward(role: str, fan_in: int) -> float:
    """u-muP's forward multiplier of one tensor, before the named multipliers and branch weights."""
    if role == "hidden":
        return fan_in ** -0.5
    if role == "readout":
        return 1.0 / fan_in
    return 1.0

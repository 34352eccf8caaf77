"""The reference GPT decoder with a mixture-of-experts MLP in every block.

Each block's ``mlp`` is a :class:`MoE`: a router ``mlp.router`` (Linear
width -> n_experts, no bias) and experts ``mlp.experts.E.{fc,proj}`` (the
GPT's MLP class, GELU by default). The router's fan-out is fixed while its
fan-in grows with width, so proxytune infers the muP role ``readout`` for it;
the experts' matrices are ``hidden`` (as in "muP for Mixture of Experts").

Gating is top-k: softmax over the router logits, keep the ``top_k`` largest,
renormalize them to sum to 1, zeros elsewhere. Dispatch is *dense*: every
expert runs on every token and the outputs are combined with the sparse gate
weights. That costs ``n_experts`` MLPs per token (fine for small proxies) but
keeps every shape static and the result deterministic, so batched trials
under ``torch.func.vmap`` + ``functional_call`` work.

The Switch-style load-balancing loss is not module state (that would not
survive vmap); :func:`load_balancing_loss` computes it from router logits,
which a caller can collect, e.g. with forward hooks on the routers.
"""

from __future__ import annotations

import torch
from torch import nn

from .gpt import GPT, MLP, _decoder, _Layout, check_options, hidden_size


class MoE(nn.Module):
    """Top-k mixture of ``n_experts`` MLPs of hidden size ``hidden``, computed densely."""

    def __init__(self, width: int, n_experts: int, top_k: int, hidden: int, bias: bool = False,
                 kind: str = "gelu") -> None:
        super().__init__()
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = nn.Linear(width, n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(width, hidden, bias, kind) for _ in range(n_experts))

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights ``(..., n_experts)``: ``top_k`` nonzero per token, summing to 1."""
        return topk_gates(self.router(x), self.top_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)  # (..., E)
        out = torch.stack([expert(x) for expert in self.experts], dim=-1)  # (..., width, E)
        return (out * g.unsqueeze(-2)).sum(dim=-1)


def topk_gates(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Softmax over the last dim, keep the ``top_k`` largest, renormalize, zeros elsewhere."""
    probs = logits.softmax(dim=-1)
    vals, idx = probs.topk(top_k, dim=-1)
    vals = vals / vals.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, idx, vals)


def load_balancing_loss(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch-style auxiliary loss ``n_experts * sum_i f_i * P_i`` over all tokens in
    ``logits (..., n_experts)``: ``f_i`` is the fraction of the top-k assignments
    that go to expert ``i``, ``P_i`` its mean router probability. 1 when balanced."""
    n = logits.shape[-1]
    probs = logits.softmax(dim=-1).reshape(-1, n)
    chosen = (topk_gates(logits, top_k).reshape(-1, n) > 0).to(probs.dtype)
    f = chosen.mean(dim=0) / top_k
    return n * (f * probs.mean(dim=0)).sum()


def build(width: int = 64, depth: int = 2, *, n_experts: int = 4, top_k: int = 2, expert_ratio: float = 4,
          head_dim: int | None = 16, n_heads: int | None = None, vocab: int = 256, seq_len: int = 64,
          mlp: str = "gelu", norm: str = "layernorm", norm_affine: bool = True, positions: str = "learned",
          bias: bool = False, tied: bool = False, scale_attr: bool = True, rope_base: float = 10000.0,
          device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> GPT:
    """Build the MoE decoder: the GPT of :mod:`proxytune.models.gpt` with a :class:`MoE`
    MLP per block. Each expert has hidden size ``round(expert_ratio * width)``;
    ``mlp`` is the expert kind (``gelu`` or ``swiglu``). Other options as in
    :func:`proxytune.models.gpt.build`.

    Many parameters because: each is an independent, documented option of
    the reference model (sweep files and the command line set them by name,
    and proxytune reads the signature to pass ``vocab`` and ``seq_len``);
    internally the architecture choices travel as one ``_Layout``."""
    n_heads = check_options(width, depth, head_dim=head_dim, n_heads=n_heads, mlp=mlp, norm=norm,
                            positions=positions, seq_len=seq_len)
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be between 1 and n_experts={n_experts}, got {top_k}")
    hidden = hidden_size(expert_ratio, width, "expert_ratio")
    layout = _Layout(norm=norm, norm_affine=norm_affine, positions=positions, bias=bias, tied=tied,
                     scale_attr=scale_attr, rope_base=rope_base)
    return _decoder((width, depth, n_heads, vocab, seq_len), lambda: MoE(width, n_experts, top_k, hidden, bias, mlp),
                    layout, device, dtype)

"""A small pre-norm causal decoder (nanoGPT-like), readable in one sitting.

Width grows by heads at a fixed head dim (``head_dim``) or by head dim at a
fixed head count (``n_heads``). The attention keeps its logit scale in
``attn_scale`` (None = 1/sqrt(head_dim)) and passes it to
``F.scaled_dot_product_attention``, so proxytune can set it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, n_heads: int, bias: bool, scale_attr: bool = True) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = width // n_heads
        self.q_proj = nn.Linear(width, width, bias=bias)
        self.k_proj = nn.Linear(width, width, bias=bias)
        self.v_proj = nn.Linear(width, width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        if scale_attr:
            self.attn_scale: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=getattr(self, "attn_scale", None))
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLPBlock(nn.Module):
    def __init__(self, width: int, ratio: int, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(width, ratio * width, bias=bias)
        self.proj = nn.Linear(ratio * width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, n_heads: int, ratio: int, bias: bool, scale_attr: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.attn = Attention(width, n_heads, bias, scale_attr)
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.mlp = MLPBlock(width, ratio, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, width: int, depth: int, n_heads: int, vocab: int, seq_len: int, ratio: int,
                 bias: bool, tied: bool, scale_attr: bool) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(width, n_heads, ratio, bias, scale_attr) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width, bias=bias)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight
        for mod in self.modules():  # GPT-2 style init
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build(width: int = 64, depth: int = 2, *, head_dim: int | None = 16, n_heads: int | None = None,
          vocab: int = 256, seq_len: int = 64, mlp_ratio: int = 4, bias: bool = False, tied: bool = False,
          scale_attr: bool = True, device: str | torch.device | None = None,
          dtype: torch.dtype | None = None) -> GPT:
    """Build the decoder. Give ``head_dim`` (heads grow with width, default) or
    ``n_heads`` (head dim grows with width)."""
    if n_heads is None:
        if not head_dim or width % head_dim:
            raise ValueError(f"width {width} must be a multiple of head_dim {head_dim}")
        n_heads = width // head_dim
    elif width % n_heads:
        raise ValueError(f"width {width} must be a multiple of n_heads {n_heads}")
    with torch.device(device or "cpu"):
        model = GPT(width, depth, n_heads, vocab, seq_len, mlp_ratio, bias, tied, scale_attr)
    return model.to(dtype) if dtype is not None else model

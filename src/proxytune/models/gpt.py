"""A small pre-norm causal decoder (nanoGPT-like), readable in one sitting.

Width grows by heads at a fixed head dim (``head_dim``) or by head dim at a
fixed head count (``n_heads``). The attention keeps its logit scale in
``attn_scale`` (None = 1/sqrt(head_dim)) and passes it to the attention
function, so proxytune can set it.

Options: GELU or SwiGLU MLP, LayerNorm or RMSNorm (with or without gains),
learned or rotary (RoPE) positions, biases, tied embedding/readout, QK-norm
(an RMSNorm with gains over each head's query and key, as in OLMo 2: it bounds
the attention logits). The
forward pass has static shapes and no in-place ops on its inputs, so it runs
on ``meta`` and under ``torch.func.vmap`` + ``functional_call`` (batched
trials over stacked parameters).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
ATTENTION_IMPLS = ("sdpa", "math")


# --------------------------------------------------------------- attention math
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention over ``(..., T, head_dim)`` tensors with PyTorch's fused SDPA."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def causal_attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          scale: float | None) -> torch.Tensor:
    """The same as :func:`causal_attention`, written out (matmul, mask, softmax, matmul)."""
    t = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf"))
    return att.softmax(dim=-1) @ v


def rope_tables(t: int, head_dim: int, base: float, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``/``sin`` of shape ``(t, head_dim // 2)`` for positions ``0..t-1``."""
    work = torch.promote_types(dtype, torch.float32)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=work) / head_dim)
    angles = torch.arange(t, device=device, dtype=work)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[i], x[i + d/2])`` of ``x (..., T, d)`` by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ---------------------------------------------------------------------- modules
class Attention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v projections.

    ``attention_impl`` (a plain attribute, ``"sdpa"`` or ``"math"``) picks
    :func:`causal_attention` or :func:`causal_attention_math`; see
    :func:`set_attention_impl`. ``rope_base`` is None for no rotary embedding. ``qk_norm`` normalizes each
    head's query and key (RMSNorm over the head dim, with gains) before the logits.
    """

    def __init__(self, width: int, n_heads: int, bias: bool, scale_attr: bool = True,
                 rope_base: float | None = None, qk_norm: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = width // n_heads
        self.rope_base = rope_base
        self.attention_impl = "sdpa"
        self.q_proj = nn.Linear(width, width, bias=bias)
        self.k_proj = nn.Linear(width, width, bias=bias)
        self.v_proj = nn.Linear(width, width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim)
            self.k_norm = nn.RMSNorm(self.head_dim)
        if scale_attr:
            self.attn_scale: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_base is not None:
            cos, sin = rope_tables(t, self.head_dim, self.rope_base, x.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.attention_impl == "sdpa":
            attend = causal_attention
        elif self.attention_impl == "math":
            attend = causal_attention_math
        else:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        y = attend(q, k, v, getattr(self, "attn_scale", None))
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    """``proj(gelu(fc(x)))``, or SwiGLU ``proj(silu(gate(x)) * fc(x))``."""

    def __init__(self, width: int, hidden: int, bias: bool, kind: str = "gelu") -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(width, hidden, bias=bias)
        if kind == "swiglu":
            self.gate = nn.Linear(width, hidden, bias=bias)
        self.proj = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.proj(F.silu(self.gate(x)) * self.fc(x))
        return self.proj(F.gelu(self.fc(x)))


def make_norm(kind: str, width: int, affine: bool = True, bias: bool = False) -> nn.Module:
    """``nn.LayerNorm`` (bias only if ``bias`` and ``affine``) or ``nn.RMSNorm``."""
    if kind == "rmsnorm":
        return nn.RMSNorm(width, elementwise_affine=affine)
    return nn.LayerNorm(width, elementwise_affine=affine, bias=bias and affine)


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    ``residual_scales`` (None, or two floats for attention and MLP) multiplies the stream after each add:
    u-muP's normalized residual ``(x + tau f(x)) / sqrt(1 + tau^2)`` (the plan sets it; see
    :mod:`proxytune.rules.umup`).
    """

    def __init__(self, width: int, attn: Attention, mlp: nn.Module, norm: str = "layernorm",
                 norm_affine: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.ln1 = make_norm(norm, width, norm_affine, bias)
        self.attn = attn
        self.ln2 = make_norm(norm, width, norm_affine, bias)
        self.mlp = mlp
        self.residual_scales: tuple[float, float] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual_scales is not None:
            c_attn, c_mlp = self.residual_scales
            x = (x + self.attn(self.ln1(x))) * c_attn
            return (x + self.mlp(self.ln2(x))) * c_mlp
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@dataclass(frozen=True)
class _Layout:
    """The decoder's architecture choices besides its sizes (see :func:`build`), as :class:`GPT` takes them."""

    norm: str = "layernorm"
    norm_affine: bool = True
    positions: str = "learned"
    bias: bool = False
    tied: bool = False
    scale_attr: bool = True
    rope_base: float = 10000.0
    qk_norm: bool = False

    def block(self, width: int, n_heads: int, mlp_factory: Callable[[], nn.Module]) -> Block:
        """One block: its attention, then the MLP ``mlp_factory()`` builds (in that order: the init's RNG draws)."""
        rope = self.rope_base if self.positions == "rope" else None
        attn = Attention(width, n_heads, self.bias, self.scale_attr, rope, self.qk_norm)
        return Block(width, attn, mlp_factory(), self.norm, self.norm_affine, self.bias)

    def final_norm(self, width: int) -> nn.Module:
        return make_norm(self.norm, width, self.norm_affine, self.bias)


class GPT(nn.Module):
    """Token embedding (+ learned positions), ``depth`` blocks, final norm, readout.

    ``mlp_factory()`` builds each block's MLP (the MoE model passes its own).
    """

    def __init__(self, width: int, depth: int, n_heads: int, vocab: int, seq_len: int,
                 mlp_factory: Callable[[], nn.Module], *, norm: str = "layernorm", norm_affine: bool = True,
                 positions: str = "learned", bias: bool = False, tied: bool = False,
                 scale_attr: bool = True, rope_base: float = 10000.0, qk_norm: bool = False) -> None:
        """Many parameters because: the sizes and each keyword are independent architecture choices of a public
        class that :func:`build` and the MoE builder pass through by name; internally the keywords travel as one
        ``_Layout``."""
        super().__init__()
        layout = _Layout(norm=norm, norm_affine=norm_affine, positions=positions, bias=bias, tied=tied,
                         scale_attr=scale_attr, rope_base=rope_base, qk_norm=qk_norm)
        self.seq_len = seq_len
        self.positions = positions
        self.wte = nn.Embedding(vocab, width)
        if positions == "learned":
            self.wpe = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(layout.block(width, n_heads, mlp_factory) for _ in range(depth))
        self.ln_f = layout.final_norm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight
        for mod in self.modules():  # GPT-2 style init; norms keep their ones/zeros
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx (batch, T)`` token ids -> logits ``(batch, T, vocab)``."""
        t = idx.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence length {t} exceeds seq_len={self.seq_len}")
        x = self.wte(idx)
        if self.positions == "learned":
            x = x + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Use ``"sdpa"`` (fused) or ``"math"`` (written out) attention in every
    :class:`Attention` of ``model``; returns the model."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    for mod in model.modules():
        if isinstance(mod, Attention):
            mod.attention_impl = impl
    return model


# ------------------------------------------------------------------------ build
def _choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, valid))}, got {value!r}")


def check_options(width: int, depth: int, *, head_dim: int | None, n_heads: int | None, mlp: str, norm: str,
                  positions: str, seq_len: int) -> int:
    """Validate the shared decoder options; returns the number of heads."""
    _choice("mlp", mlp, MLPS)
    _choice("norm", norm, NORMS)
    _choice("positions", positions, POSITIONS)
    if width < 1 or depth < 0:
        raise ValueError(f"width must be >= 1 and depth >= 0, got width={width}, depth={depth}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if n_heads is None:
        if not head_dim or head_dim < 1 or width % head_dim:
            raise ValueError(f"width {width} must be a multiple of head_dim {head_dim}")
        n_heads = width // head_dim
    elif n_heads < 1 or width % n_heads:
        raise ValueError(f"width {width} must be a multiple of n_heads {n_heads}")
    if positions == "rope" and (width // n_heads) % 2:
        raise ValueError(f"positions='rope' needs an even head_dim, got head_dim {width // n_heads}")
    return n_heads


def hidden_size(ratio: float, width: int, option: str = "mlp_ratio") -> int:
    """``round(ratio * width)``, at least 1."""
    if not ratio > 0:
        raise ValueError(f"{option} must be > 0, got {ratio!r}")
    return max(1, round(ratio * width))


def build(width: int = 64, depth: int = 2, *, head_dim: int | None = 16, n_heads: int | None = None,
          vocab: int = 256, seq_len: int = 64, mlp_ratio: float = 4, mlp: str = "gelu",
          norm: str = "layernorm", norm_affine: bool = True, positions: str = "learned",
          bias: bool = False, tied: bool = False, scale_attr: bool = True, rope_base: float = 10000.0,
          qk_norm: bool = False, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> GPT:
    """Build the decoder.

    Give ``head_dim`` (heads grow with width, default) or ``n_heads`` (head dim
    grows with width; ``n_heads`` wins when both are given). The MLP hidden
    size is ``round(mlp_ratio * width)`` for both ``mlp="gelu"`` and
    ``mlp="swiglu"`` (SwiGLU models often pass ``mlp_ratio=8/3`` to match the
    GELU parameter count). muP width multipliers are exact when
    ``mlp_ratio * width`` is an integer at every width; otherwise rounding
    shifts them slightly (the rules read the actual fans, so plans stay
    consistent). ``positions="rope"`` drops ``wpe`` and rotates q and k
    (needs an even head dim). ``qk_norm=True`` normalizes queries and keys per head. ``device="meta"`` builds
    for free.

    Many parameters because: each is an independent, documented option of
    the reference model (sweep files and the command line set them by name,
    and proxytune reads the signature to pass ``vocab`` and ``seq_len``);
    internally the architecture choices travel as one ``_Layout``.
    """
    n_heads = check_options(width, depth, head_dim=head_dim, n_heads=n_heads, mlp=mlp, norm=norm,
                            positions=positions, seq_len=seq_len)
    hidden = hidden_size(mlp_ratio, width)
    layout = _Layout(norm=norm, norm_affine=norm_affine, positions=positions, bias=bias, tied=tied,
                     scale_attr=scale_attr, rope_base=rope_base, qk_norm=qk_norm)
    return _decoder((width, depth, n_heads, vocab, seq_len), lambda: MLP(width, hidden, bias, mlp), layout,
                    device, dtype)


def _decoder(sizes: tuple[int, int, int, int, int], mlp_factory: Callable[[], nn.Module], layout: _Layout,
             device: str | torch.device | None, dtype: torch.dtype | None) -> GPT:
    """A :class:`GPT` of ``sizes`` (width, depth, n_heads, vocab, seq_len) built on ``device`` (default: the
    CPU), cast to ``dtype`` when given."""
    with torch.device(device or "cpu"):
        model = GPT(*sizes, mlp_factory, **asdict(layout))
    return model.to(dtype) if dtype is not None else model

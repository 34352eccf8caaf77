"""A zoo of small models for tests: own-code language models written in several styles, and tiny
Hugging Face models built from config objects (nothing is downloaded).

Every family has a builder with the signature proxytune calls::

    build_<family>(width=32, depth=2, *, vocab=256, seq_len=32) -> nn.Module

Builders are deterministic given torch's global seed and build on the current default device (no ``.to()``,
no data-dependent init), so ``with torch.device("meta"): build_x(...)`` is free. Attention always has 4 heads,
so the head dimension is ``width // 4`` and grows with width; widths are multiples of 16 (16..256), depths 1..8.
Dropout is 0 everywhere so forwards are deterministic.

``FAMILIES`` maps each family name to a :class:`ZooModel` with the expected muP role of every parameter
(``roles``: ``(regex, role)`` pairs, first ``re.search`` match wins), the residual-branch output tensors
(``branch``), the tied readout and a few notes. The roles were written from the architectures, not from
proxytune's output: "embedding" (finite input side -> width), "hidden" (width -> width), "readout"
(width -> finite), "vector" (1-D, width-sized) and "scalar" (no width dimension).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

HEADS = 4  # fixed: head_dim = width // HEADS grows with width
KV_HEADS = 2  # grouped-query attention, where the family supports it
IMAGE_SIZE, PATCH_SIZE, CHANNELS, NUM_LABELS = 16, 4, 3, 10  # the ViT family


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) queries/keys/values -> (B, T, C) causal multi-head attention output (default 1/sqrt(d) scale)."""
    B, T, C = q.shape
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)


# --------------------------------------------------------------------------------------------------------------
# 1. nanoGPT (in the style of Karpathy's single-file GPT)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = HEADS
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, full_logits: bool = False):
        super().__init__()
        self.config, self.full_logits = config, full_logits
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # scaled init of the residual projections (GPT-2 paper)
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"sequence of length {t} > block size {self.config.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        elif self.full_logits:
            logits, loss = self.lm_head(x), None
        else:  # inference: only the last position
            logits, loss = self.lm_head(x[:, [-1], :]), None
        return logits, loss


def build_nanogpt(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return GPT(GPTConfig(block_size=seq_len, vocab_size=vocab, n_layer=depth, n_head=HEADS, n_embd=width))


def build_nanogpt_full(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return GPT(GPTConfig(block_size=seq_len, vocab_size=vocab, n_layer=depth, n_head=HEADS, n_embd=width),
               full_logits=True)


# --------------------------------------------------------------------------------------------------------------
# 2. functional_tied: the readout is F.linear(x, lexicon.weight), no nn.Linear head; odd module names
# --------------------------------------------------------------------------------------------------------------


class Mix(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.to_out = nn.Linear(d, d)

    def forward(self, x):
        return self.to_out(_causal_attention(self.to_q(x), self.to_k(x), self.to_v(x), HEADS))


class Ffn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class FunctionalBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.pre_mix, self.mix = nn.LayerNorm(d), Mix(d)
        self.pre_ffn, self.ffn = nn.LayerNorm(d), Ffn(d)

    def forward(self, x):
        x = x + self.mix(self.pre_mix(x))
        return x + self.ffn(self.pre_ffn(x))


class FunctionalTiedLM(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, seq_len: int):
        super().__init__()
        self.lexicon = nn.Embedding(vocab, d)
        self.where = nn.Embedding(seq_len, d)
        self.stack = nn.ModuleList(FunctionalBlock(d) for _ in range(depth))
        self.settle = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.lexicon(idx) + self.where(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.stack:
            x = blk(x)
        return F.linear(self.settle(x), self.lexicon.weight)  # tied readout without a module


def build_functional_tied(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return FunctionalTiedLM(vocab, width, depth, seq_len)


# --------------------------------------------------------------------------------------------------------------
# 3. parallel: GPT-J / PaLM-style blocks, x + attn(ln(x)) + mlp(ln(x)) with one norm
# --------------------------------------------------------------------------------------------------------------


class ParallelBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc_in, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.ln(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        attn = self.proj(_causal_attention(q, k, v, HEADS))
        mlp = self.fc_out(F.gelu(self.fc_in(h)))
        return x + attn + mlp


class ParallelLM(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, seq_len: int):
        super().__init__()
        self.embed, self.pos_embed = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.layers = nn.ModuleList(ParallelBlock(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)  # untied, with a bias

    def forward(self, idx):
        x = self.embed(idx) + self.pos_embed(torch.arange(idx.shape[1], device=idx.device))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def build_parallel(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return ParallelLM(vocab, width, depth, seq_len)


# --------------------------------------------------------------------------------------------------------------
# Shared pre-norm block for the container-style families (4, 5, 6): separate q/k/v/o, no biases
# --------------------------------------------------------------------------------------------------------------


class PlainAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.wo(_causal_attention(self.wq(x), self.wk(x), self.wv(x), HEADS))


class PlainMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.w_in, self.w_out = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return self.w_out(F.relu(self.w_in(x)))


class PlainBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), PlainAttention(d)
        self.norm2, self.mlp = nn.LayerNorm(d), PlainMLP(d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# 4. moduledict_blocks: blocks in an nn.ModuleDict named "trunk"


class ModuleDictLM(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, seq_len: int):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.trunk = nn.ModuleDict({f"blk{i}": PlainBlock(d) for i in range(depth)})
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        for name in self.trunk:
            x = self.trunk[name](x)
        return self.out(self.norm(x))


def build_moduledict_blocks(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return ModuleDictLM(vocab, width, depth, seq_len)


# 5. numbered_attrs: blocks as attributes layers_0, layers_1, ... (no container)


class NumberedAttrsLM(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, seq_len: int):
        super().__init__()
        self.depth = depth
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        for i in range(depth):
            setattr(self, f"layers_{i}", PlainBlock(d))
        self.final_norm = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for i in range(self.depth):
            x = getattr(self, f"layers_{i}")(x)
        return self.unembed(self.final_norm(x))


def build_numbered_attrs(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return NumberedAttrsLM(vocab, width, depth, seq_len)


# 6. param_positions: a learned nn.Parameter position table added as x + pos[:T]


class ParamPositionsLM(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, seq_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        self.blocks = nn.ModuleList(PlainBlock(d) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build_param_positions(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return ParamPositionsLM(vocab, width, depth, seq_len)


# --------------------------------------------------------------------------------------------------------------
# 7. postnorm: x = norm1(x + attn(x)); x = norm2(x + mlp(x)) (original Transformer / BERT order)
# --------------------------------------------------------------------------------------------------------------


class PostNormBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm1 = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x):
        x = self.norm1(x + self.o(_causal_attention(self.q(x), self.k(x), self.v(x), HEADS)))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class PostNormLM(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, seq_len: int):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.emb_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(PostNormBlock(d) for _ in range(depth))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.emb_norm(self.embed(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_postnorm(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    return PostNormLM(vocab, width, depth, seq_len)


# --------------------------------------------------------------------------------------------------------------
# Hugging Face families, from config objects only
# --------------------------------------------------------------------------------------------------------------


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def build_hf_gpt2(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()
    return T.GPT2LMHeadModel(T.GPT2Config(
        n_embd=width, n_layer=depth, n_head=HEADS, n_inner=4 * width, vocab_size=vocab, n_positions=seq_len,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        bos_token_id=0, eos_token_id=0))


def build_hf_llama(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()
    return T.LlamaForCausalLM(T.LlamaConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, head_dim=width // HEADS, vocab_size=vocab, max_position_embeddings=seq_len,
        attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=None))


def build_hf_gemma(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # tie_word_embeddings=True (the default); the forward multiplies embeddings by sqrt(hidden_size)
    return T.GemmaForCausalLM(T.GemmaConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, head_dim=width // HEADS, vocab_size=vocab, max_position_embeddings=seq_len,
        attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0))


def build_hf_phi(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # partial rotary (factor 0.5 of head_dim = width // 8: always even), parallel attention + MLP
    return T.PhiForCausalLM(T.PhiConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=vocab, max_position_embeddings=seq_len,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0))


def build_hf_falcon(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # old decoder architecture: parallel attention, multi-query (one k/v head), tied embeddings
    return T.FalconForCausalLM(T.FalconConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=HEADS, vocab_size=vocab,
        new_decoder_architecture=False, max_position_embeddings=seq_len,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0))


def build_hf_gptj(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # rotary on half of each head: head_dim // 2 = width // 8, always even for widths divisible by 16
    head_dim = width // HEADS
    return T.GPTJForCausalLM(T.GPTJConfig(
        n_embd=width, n_layer=depth, n_head=HEADS, n_inner=4 * width, rotary_dim=head_dim // 2,
        vocab_size=vocab, n_positions=seq_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0))


def build_hf_gpt_neox(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # the default rotary fraction 0.25 gives an odd rotary size at width 16 (head_dim 4): use 0.5
    return T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        vocab_size=vocab, max_position_embeddings=seq_len, hidden_dropout=0.0, attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        bos_token_id=0, eos_token_id=0))


def build_hf_moe(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    # Mixtral: 4 experts, top-2, experts stored fused as 3-D parameters (gate_up_proj, down_proj).
    # experts_implementation: the CPU default "grouped_mm" fails a forward on meta (torch._grouped_mm wants bf16
    # there) and "eager" uses nonzero() (no meta forward, no vmap); "batched_mm" runs on CPU, on meta and in vmap.
    T = _hf()
    return T.MixtralForCausalLM(T.MixtralConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, head_dim=width // HEADS, num_local_experts=4, num_experts_per_tok=2,
        vocab_size=vocab, max_position_embeddings=seq_len, attention_dropout=0.0, router_jitter_noise=0.0,
        bos_token_id=0, eos_token_id=0, experts_implementation="batched_mm"))


def build_hf_bert(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # word embeddings tied with the MLM decoder (default)
    return T.BertForMaskedLM(T.BertConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        vocab_size=vocab, max_position_embeddings=seq_len, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0))


def build_hf_vit(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # vocab and seq_len are ignored: input is pixel_values (B, 3, 16, 16), 10 labels
    return T.ViTForImageClassification(T.ViTConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=CHANNELS, num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def build_hf_t5(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # shared embedding tied to lm_head; scale_decoder_outputs: decoder output * d_model ** -0.5
    # eager attention: T5 passes its learned position bias as SDPA's attn_mask, which torch's CPU kernel cannot
    # differentiate
    return T.T5ForConditionalGeneration(T.T5Config(
        d_model=width, d_ff=4 * width, d_kv=width // HEADS, num_heads=HEADS, num_layers=depth,
        num_decoder_layers=depth, vocab_size=vocab, dropout_rate=0.0, classifier_dropout=0.0,
        pad_token_id=0, eos_token_id=0, decoder_start_token_id=0, attn_implementation="eager"))


# --------------------------------------------------------------------------------------------------------------
# Three attention variants outside FAMILIES (tests/test_zoo.py checks them separately): the query scaled before
# the product (OPT), QK-norm (Qwen3: a norm on q after its projection) and ALiBi through baddbmm (BLOOM)
# --------------------------------------------------------------------------------------------------------------


def build_hf_opt(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # q_proj(x) * head_dim ** -0.5, then attention with scale 1
    return T.OPTForCausalLM(T.OPTConfig(
        hidden_size=width, ffn_dim=4 * width, num_hidden_layers=depth, num_attention_heads=HEADS, vocab_size=vocab,
        max_position_embeddings=seq_len, word_embed_proj_dim=width, dropout=0.0, attention_dropout=0.0))


def build_hf_qwen3(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # q_norm / k_norm (RMSNorm per head) after q_proj / k_proj
    return T.Qwen3ForCausalLM(T.Qwen3Config(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, head_dim=width // HEADS, vocab_size=vocab, max_position_embeddings=seq_len))


def build_hf_bloom(width: int = 32, depth: int = 2, *, vocab: int = 256, seq_len: int = 32) -> nn.Module:
    T = _hf()  # alibi.baddbmm(q, k, alpha=inv_norm_factor); fused query_key_value interleaved per head
    return T.BloomForCausalLM(T.BloomConfig(hidden_size=width, n_layer=depth, n_head=HEADS, vocab_size=vocab,
                                            hidden_dropout=0.0, attention_dropout=0.0))


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    name: str
    builder: Callable[..., nn.Module]
    input: str  # "tokens" | "image"
    encoder_decoder: bool
    tied: str | None  # the tied embedding/readout tensor, by the name named_parameters() reports
    roles: list  # [(regex, role)], first re.search match wins
    branch: str  # regex of the residual-branch output tensors (weights and biases)
    notes: str = ""
    tied_aliases: tuple = ()  # other names of the tied tensor (named_parameters(remove_duplicate=False))
    branches_per_layer: int = 2  # residual branches per unit of depth (T5: 2 encoder + 3 decoder)
    last_position_only: bool = False  # nanogpt without targets: logits of the last position only

    def role_of(self, name: str) -> str | None:
        """The expected role of the parameter ``name`` (first matching regex), or None."""
        for pattern, role in self.roles:
            if re.search(pattern, name):
                return role
        return None


def example_inputs(zm: ZooModel, batch: int = 2, seq: int = 8, vocab: int = 256) -> dict[str, Any]:
    """Keyword inputs for one forward of a zoo model (deterministic given torch's global seed)."""
    if zm.input == "image":
        return {"pixel_values": torch.randn(batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)}
    ids = torch.randint(0, vocab, (batch, seq))
    if zm.encoder_decoder:
        return {"input_ids": ids, "decoder_input_ids": ids}
    return {"input_ids": ids} if zm.name.startswith("hf_") else {"idx": ids}


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a zoo model's output: nanoGPT's (logits, loss) tuple, an HF output or a tensor."""
    if isinstance(output, tuple):
        return output[0]
    if isinstance(output, torch.Tensor):
        return output
    return output.logits


E, H, R, V, S = "embedding", "hidden", "readout", "vector", "scalar"
_NORM_VEC = (r"(^|\.)(\w*norm\w*|ln_?\w*|LayerNorm)\.(weight|bias)$", V)  # any LayerNorm / RMSNorm gain or bias

_NANOGPT_ROLES = [
    (r"^transformer\.wte\.weight$", E), (r"^lm_head\.weight$", E), (r"^transformer\.wpe\.weight$", E),
    (r"\.(c_attn|c_fc|c_proj)\.weight$", H), (r"\.(c_attn|c_fc|c_proj)\.bias$", V), _NORM_VEC,
]
_NANOGPT_NOTES = ("wte tied to lm_head (named_parameters reports transformer.wte.weight); learned positions wpe; "
                  "c_proj init std 0.02/sqrt(2*n_layer); SDPA default scale 1/sqrt(head_dim); no embedding or "
                  "output multipliers; LayerNorm with bias.")
_PLAIN_ROLES = [(r"\.(wq|wk|wv|wo|w_in|w_out)\.weight$", H), _NORM_VEC]

FAMILIES: dict[str, ZooModel] = {
    "nanogpt": ZooModel(
        "nanogpt", build_nanogpt, "tokens", False, "transformer.wte.weight", _NANOGPT_ROLES,
        r"\.c_proj\.(weight|bias)$",
        _NANOGPT_NOTES + " forward(idx, targets=None) -> (logits, loss); without targets only the last "
        "position's logits (B, 1, V).", tied_aliases=("lm_head.weight",), last_position_only=True),
    "nanogpt_full": ZooModel(
        "nanogpt_full", build_nanogpt_full, "tokens", False, "transformer.wte.weight", _NANOGPT_ROLES,
        r"\.c_proj\.(weight|bias)$",
        _NANOGPT_NOTES + " full_logits=True: forward returns (full logits (B, T, V), None) without targets.",
        tied_aliases=("lm_head.weight",)),
    "functional_tied": ZooModel(
        "functional_tied", build_functional_tied, "tokens", False, "lexicon.weight",
        [(r"^lexicon\.weight$", E), (r"^where\.weight$", E),
         (r"\.(to_q|to_k|to_v|to_out|up|down)\.weight$", H), (r"\.(to_q|to_k|to_v|to_out|up|down)\.bias$", V),
         (r"(pre_mix|pre_ffn|settle)\.(weight|bias)$", V)],
        r"\.(mix\.to_out|ffn\.down)\.(weight|bias)$",
        "Readout F.linear(x, lexicon.weight): no head module, the tie is only visible in forward; "
        "learned positions 'where'; blocks in ModuleList 'stack'."),
    "parallel": ZooModel(
        "parallel", build_parallel, "tokens", False, None,
        [(r"^(embed|pos_embed)\.weight$", E), (r"^head\.weight$", R), (r"^head\.bias$", S),
         (r"\.(qkv|proj|fc_in|fc_out)\.weight$", H), (r"\.(qkv|proj|fc_in|fc_out)\.bias$", V), _NORM_VEC],
        r"\.(proj|fc_out)\.(weight|bias)$",
        "x + attn(ln(x)) + mlp(ln(x)) with one LayerNorm per block; fused qkv; untied head with a bias."),
    "moduledict_blocks": ZooModel(
        "moduledict_blocks", build_moduledict_blocks, "tokens", False, None,
        [(r"^(tokens|positions)\.weight$", E), (r"^out\.weight$", R)] + _PLAIN_ROLES,
        r"\.(wo|w_out)\.weight$",
        "Blocks in nn.ModuleDict 'trunk' keyed blk0, blk1, ...; no biases in blocks; untied head 'out'."),
    "numbered_attrs": ZooModel(
        "numbered_attrs", build_numbered_attrs, "tokens", False, None,
        [(r"^(emb|pos)\.weight$", E), (r"^unembed\.weight$", R)] + _PLAIN_ROLES,
        r"\.(wo|w_out)\.weight$",
        "Blocks are plain attributes layers_0, layers_1, ... (no container); untied head 'unembed'."),
    "param_positions": ZooModel(
        "param_positions", build_param_positions, "tokens", False, None,
        [(r"^tok\.weight$", E), (r"^pos$", E), (r"^lm_head\.weight$", R)] + _PLAIN_ROLES,
        r"\.(wo|w_out)\.weight$",
        "Positions are a bare nn.Parameter 'pos' (seq_len, d) added as x + pos[:T]; untied lm_head."),
    "postnorm": ZooModel(
        "postnorm", build_postnorm, "tokens", False, None,
        [(r"^(embed|pos)\.weight$", E), (r"^head\.weight$", R),
         (r"\.(q|k|v|o|fc1|fc2)\.weight$", H), (r"\.(q|k|v|o|fc1|fc2)\.bias$", V), _NORM_VEC],
        r"\.(o|fc2)\.(weight|bias)$",
        "Post-norm: norm1(x + attn(x)), norm2(x + mlp(x)); LayerNorm after the embeddings; no final norm."),
    "hf_gpt2": ZooModel(
        "hf_gpt2", build_hf_gpt2, "tokens", False, "transformer.wte.weight",
        [(r"^transformer\.wte\.weight$", E), (r"^lm_head\.weight$", E), (r"^transformer\.wpe\.weight$", E),
         (r"\.(c_attn|c_fc|c_proj)\.weight$", H), (r"\.(c_attn|c_fc|c_proj)\.bias$", V), _NORM_VEC],
        r"\.c_proj\.(weight|bias)$",
        "Conv1D weights are stored (in, out), transposed w.r.t. nn.Linear; attention scaled 1/sqrt(head_dim).",
        tied_aliases=("lm_head.weight",)),
    "hf_llama": ZooModel(
        "hf_llama", build_hf_llama, "tokens", False, None,
        [(r"embed_tokens\.weight$", E), (r"^lm_head\.weight$", R),
         (r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$", H), _NORM_VEC],
        r"\.(o_proj|down_proj)\.weight$",
        "RMSNorm, rotary, GQA (2 kv heads), SwiGLU; untied; no biases."),
    "hf_gemma": ZooModel(
        "hf_gemma", build_hf_gemma, "tokens", False, "model.embed_tokens.weight",
        [(r"embed_tokens\.weight$", E), (r"^lm_head\.weight$", E),
         (r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$", H), _NORM_VEC],
        r"\.(o_proj|down_proj)\.weight$",
        "Tied; the forward multiplies the embeddings by sqrt(hidden_size) (a width-dependent factor); "
        "RMSNorm computes x * (1 + weight) with weight initialised to 0; GeGLU; explicit head_dim.",
        tied_aliases=("lm_head.weight",)),
    "hf_phi": ZooModel(
        "hf_phi", build_hf_phi, "tokens", False, None,
        [(r"embed_tokens\.weight$", E), (r"^lm_head\.weight$", R), (r"^lm_head\.bias$", S),
         (r"\.(q_proj|k_proj|v_proj|dense|fc1|fc2)\.weight$", H),
         (r"\.(q_proj|k_proj|v_proj|dense|fc1|fc2)\.bias$", V), _NORM_VEC],
        r"\.(self_attn\.dense|mlp\.fc2)\.(weight|bias)$",
        "Parallel attention + MLP from one LayerNorm; partial rotary (half of head_dim); untied head with a "
        "bias; attention scaled 1/sqrt(head_dim)."),
    "hf_falcon": ZooModel(
        "hf_falcon", build_hf_falcon, "tokens", False, "transformer.word_embeddings.weight",
        [(r"word_embeddings\.weight$", E), (r"^lm_head\.weight$", E),
         (r"\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$", H), _NORM_VEC],
        r"\.(self_attention\.dense|mlp\.dense_4h_to_h)\.weight$",
        "new_decoder_architecture=False: parallel attention with one LayerNorm, multi-query attention "
        "(fused query_key_value is (width + 2 * head_dim, width) = 1.5 x width rows), no biases, tied.",
        tied_aliases=("lm_head.weight",)),
    "hf_gptj": ZooModel(
        "hf_gptj", build_hf_gptj, "tokens", False, None,
        [(r"\.wte\.weight$", E), (r"^lm_head\.weight$", R), (r"^lm_head\.bias$", S),
         (r"\.(q_proj|k_proj|v_proj|out_proj|fc_in|fc_out)\.weight$", H), (r"\.(fc_in|fc_out)\.bias$", V),
         _NORM_VEC],
        r"\.(attn\.out_proj|mlp\.fc_out)\.(weight|bias)$",
        "Parallel attention + MLP from ln_1; rotary_dim = head_dim // 2; untied head with a bias."),
    "hf_gpt_neox": ZooModel(
        "hf_gpt_neox", build_hf_gpt_neox, "tokens", False, None,
        [(r"embed_in\.weight$", E), (r"^embed_out\.weight$", R), (r"^lm_head\.weight$", R),
         (r"\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$", H),
         (r"\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.bias$", V), _NORM_VEC],
        r"\.(attention\.dense|mlp\.dense_4h_to_h)\.(weight|bias)$",
        "use_parallel_residual (two LayerNorms), fused query_key_value, partial_rotary_factor 0.5 "
        "(the default 0.25 breaks at width 16); untied."),
    "hf_moe": ZooModel(
        "hf_moe", build_hf_moe, "tokens", False, None,
        [(r"embed_tokens\.weight$", E), (r"^lm_head\.weight$", R), (r"\.mlp\.gate\.weight$", R),
         (r"\.(q_proj|k_proj|v_proj|o_proj)\.weight$", H), (r"\.experts\.(gate_up_proj|down_proj)$", H),
         _NORM_VEC],
        r"\.(self_attn\.o_proj\.weight|experts\.down_proj)$",
        "Mixtral, 4 experts top-2; the experts are fused 3-D parameters (n_experts, out, in): gate_up_proj "
        "(4, 4*width, width) and down_proj (4, width, 2*width) (two width dims each -> hidden); the router "
        "mlp.gate (4, width) is a readout. Branch: o_proj and the experts' fused down_proj (one tensor "
        "holding every expert's MLP down projection). experts_implementation='batched_mm' (see the builder)."),
    "hf_bert": ZooModel(
        "hf_bert", build_hf_bert, "tokens", False, "bert.embeddings.word_embeddings.weight",
        [(r"word_embeddings\.weight$", E), (r"^cls\.predictions\.decoder\.weight$", E),
         (r"(position_embeddings|token_type_embeddings)\.weight$", E),
         (r"^cls\.predictions\.(decoder\.)?bias$", S),
         (r"\.(query|key|value|dense)\.weight$", H), (r"\.(query|key|value|dense)\.bias$", V), _NORM_VEC],
        r"layer\.\d+\.(attention\.)?output\.dense\.(weight|bias)$",
        "Post-norm encoder; word embeddings tied to cls.predictions.decoder; the MLM head has a hidden "
        "transform (dense + LayerNorm) before the tied decoder; decoder bias (vocab) = cls.predictions.bias; "
        "token_type_embeddings (2, width) are an embedding.",
        tied_aliases=("cls.predictions.decoder.weight",)),
    "hf_vit": ZooModel(
        "hf_vit", build_hf_vit, "image", False, None,
        [(r"\.(cls_token|position_embeddings)$", E), (r"patch_embeddings\.projection\.weight$", E),
         (r"patch_embeddings\.projection\.bias$", V), (r"^classifier\.weight$", R), (r"^classifier\.bias$", S),
         (r"\.(q_proj|k_proj|v_proj|o_proj|query|key|value|fc1|fc2|dense)\.weight$", H),
         (r"\.(q_proj|k_proj|v_proj|o_proj|query|key|value|fc1|fc2|dense)\.bias$", V), _NORM_VEC],
        r"(attention\.o_proj|mlp\.fc2|attention\.output\.dense|layer\.\d+\.output\.dense)\.(weight|bias)$",
        "Input pixel_values (B, 3, 16, 16); 16 patches + cls token; patch conv weight (width, 3, 4, 4) is an "
        "embedding (finite input side); classifier on the cls token, 10 labels. transformers 5.x names the "
        "blocks vit.layers.N.attention.{q,k,v,o}_proj / mlp.fc1, fc2 (older: attention.output.dense, "
        "output.dense; both spellings are in the regexes)."),
    "hf_t5": ZooModel(
        "hf_t5", build_hf_t5, "tokens", True, "shared.weight",
        [(r"^shared\.weight$", E), (r"embed_tokens\.weight$", E), (r"^lm_head\.weight$", E),
         (r"relative_attention_bias\.weight$", E),
         (r"\.(q|k|v|o|wi|wi_0|wi_1|wo)\.weight$", H), _NORM_VEC],
        r"\.(SelfAttention\.o|EncDecAttention\.o|DenseReluDense\.wo)\.weight$",
        "Encoder-decoder; forward needs decoder_input_ids. T5 attention has no 1/sqrt(d_kv) scale; RMS-style "
        "layer_norm without bias; relative_attention_bias (32 buckets, 4 heads) only in block 0 of each stack: "
        "a lookup table with no width dim (embedding rules at width ratio 1 change nothing, as scalar ones would). Tied (shared = encoder/decoder embed_tokens = lm_head); the decoder output is "
        "multiplied by d_model ** -0.5 before lm_head (config.scale_decoder_outputs, True when tied). "
        "Residual branches: 2 per encoder block + 3 per decoder block.",
        tied_aliases=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"),
        branches_per_layer=5),
}

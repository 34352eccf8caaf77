"""Hugging Face model families built from small configs (no downloads): roles, LRs and attention factors
tensor by tensor at 4x width and 2x depth with no overrides, the false errors of depth-only transfers, tied
weights through HF's own tools (tie_weights, save_pretrained / from_pretrained), T5's own output scale.

``transformers`` is in the ``test`` extra: these tests run in CI, they do not skip.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import proxytune as pt

import transformers
from transformers import (
    BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
    MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, RobertaConfig, RobertaForMaskedLM, T5Config,
    T5ForConditionalGeneration, ViTConfig, ViTForImageClassification,
)

transformers.logging.set_verbosity_error()
V = 128  # vocabulary


def build(family: str, w: int, d: int, **over):
    torch.manual_seed(w + d)
    heads = dict(num_attention_heads=4)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=w, n_layer=d, n_head=4, vocab_size=V, n_positions=over.pop("n_positions", 64),
                                          bos_token_id=0, eos_token_id=0, **over))
    if family in ("llama", "llama-tied", "qwen2", "mistral"):
        cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "llama-tied": (LlamaForCausalLM, LlamaConfig),
                    "qwen2": (Qwen2ForCausalLM, Qwen2Config), "mistral": (MistralForCausalLM, MistralConfig)}[family]
        return cls(cfg(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=d, num_key_value_heads=2, vocab_size=V,
                       max_position_embeddings=64, tie_word_embeddings=family == "llama-tied", **heads, **over))
    if family == "bert":
        return BertForMaskedLM(BertConfig(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=d, vocab_size=V,
                                          max_position_embeddings=64, **heads, **over))
    if family == "roberta":
        return RobertaForMaskedLM(RobertaConfig(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=d,
                                                vocab_size=V, max_position_embeddings=66, **heads, **over))
    if family == "vit":
        return ViTForImageClassification(ViTConfig(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=d,
                                                   image_size=16, patch_size=4, num_labels=10, **heads, **over))
    if family == "t5":
        return T5ForConditionalGeneration(T5Config(d_model=w, d_ff=2 * w, d_kv=w // 4, num_layers=d, num_decoder_layers=d,
                                                   num_heads=4, vocab_size=V, **over))
    raise ValueError(family)


FAMILIES = ["gpt2", "llama", "llama-tied", "qwen2", "mistral", "bert", "roberta", "vit", "t5"]

# Expected role of named tensors (regex on the name; first match wins), per family.
EXPECTED = {
    "gpt2": [(r"wte\.weight", "embedding"), (r"wpe\.weight", "embedding"), (r"\.(c_attn|c_proj|c_fc)\.weight", "hidden"),
             (r"\.(ln_1|ln_2|ln_f)\.", "vector"), (r"\.(c_attn|c_fc|c_proj)\.bias", "vector")],
    "llama": [(r"embed_tokens", "embedding"), (r"_proj\.weight", "hidden"), (r"norm\.weight", "vector"),
              (r"lm_head\.weight", "readout")],
    "bert": [(r"(word|position|token_type)_embeddings", "embedding"), (r"cls\.predictions\.bias", "scalar"),
             (r"(query|key|value|dense)\.weight", "hidden"), (r"LayerNorm|\.bias$", "vector")],
    "vit": [(r"cls_token|position_embeddings|patch_embeddings\.projection\.weight", "embedding"),
            (r"classifier\.weight", "readout"), (r"classifier\.bias", "scalar"),
            (r"(_proj|fc1|fc2)\.weight", "hidden"), (r"layernorm|\.bias$", "vector")],
    "t5": [(r"shared\.weight", "embedding"), (r"relative_attention_bias", "embedding"),
           (r"\.(q|k|v|o|wi|wo)\.weight", "hidden"), (r"layer_norm", "vector")],
}
EXPECTED["llama-tied"] = EXPECTED["mistral"] = EXPECTED["llama"]
EXPECTED["qwen2"] = EXPECTED["llama"] + [(r"_proj\.bias", "vector")]
EXPECTED["roberta"] = [(r"lm_head\.bias", "scalar"), (r"lm_head\.layer_norm", "vector")] + EXPECTED["bert"]
# residual-branch outputs: the last matrix of each branch
BRANCH = {"gpt2": r"\.(attn|mlp)\.c_proj\.", "llama": r"\.(o_proj|down_proj)\.",
          "bert": r"\.(attention\.output|\d+\.output)\.dense\.", "vit": r"\.(o_proj|fc2)\.",
          "t5": r"\.(o|wo)\.weight"}
BRANCH.update({"llama-tied": BRANCH["llama"], "qwen2": BRANCH["llama"], "mistral": BRANCH["llama"],
               "roberta": BRANCH["bert"]})
ADAPTER = {"gpt2": "hf-scaling"}


def _expected_role(family: str, name: str) -> str | None:
    return next((role for pat, role in EXPECTED[family] if re.search(pat, name)), None)


def _expected_scale(tp: pt.TensorPlan, m: float, depth: float, recipe: str) -> tuple[float, float]:
    """muP's Adam table (Tensor Programs V) in the folded form, written out here independently of the rules
    code: (lr, init) multipliers relative to the base. CompleteP adds x1/L on residual-branch outputs."""
    lr = {"embedding": 1.0, "vector": 1.0, "scalar": 1.0, "hidden": 1 / m, "readout": 1 / m}[tp.role]
    init = {"embedding": 1.0, "vector": 1.0, "scalar": 1.0, "hidden": m ** -0.5, "readout": 1 / m}[tp.role]
    f = tp.attn_factor  # a query projection carries the attention-logit factor, folded like a multiplier
    if recipe == "completep" and tp.branch_output:
        f /= depth
    return lr * f, init * f


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("recipe", ["mup", "completep"])
def test_family_width_4x_depth_2x_without_overrides(family, recipe):
    base, target = build(family, 32, 2), build(family, 128, 4)
    plan = pt.parameterize(target, base, recipe=recipe, optimizer="adamw")
    for name, tp in plan.tensors.items():
        want = _expected_role(family, name)
        assert want is not None, f"{family}: no expectation for {name}"
        assert tp.role == want, f"{family} {name}: role {tp.role}, expected {want}"
        assert tp.branch_output == (tp.block is not None and re.search(BRANCH[family], name) is not None), name
        m = 4.0
        lr, init = _expected_scale(tp, m if tp.role in ("hidden", "readout") else 1.0, 2.0, recipe)
        sc = tp.scale("folded")
        assert math.isclose(sc.lr, lr, rel_tol=1e-9), f"{family} {name} ({tp.role}): lr x{sc.lr}, expected x{lr}"
        assert math.isclose(sc.init, init, rel_tol=1e-9), f"{family} {name}: init x{sc.init}, expected x{init}"
        if tp.block is not None:
            assert tp.depth == 2.0
    # every attention module gets the 1/d_head factor: head dim 8 -> 32, logits x (32/8)^-1/2 on top of the
    # model's own 1/sqrt(d_head); T5 applies no scale of its own (it folds 1/sqrt(d_kv) into its init, which the
    # plan replaces), so its factor is the whole (32/8)^-1
    assert plan.attention, family
    assert all(math.isclose(r["factor"], 0.25 if family == "t5" else 0.5) for r in plan.attention), plan.attention
    assert {r["adapter"] for r in plan.attention} == {ADAPTER.get(family, "query-projection")}
    assert not any("looks like attention" in n or "base is on 'meta'" in n for n in plan.notes), plan.notes
    # the parameterized model runs and its param groups carry the planned LRs
    groups = {g["name"]: g for g in plan.param_groups(lr=1e-3, weight_decay=0.1)}
    for name, tp in plan.tensors.items():
        assert math.isclose(groups[name]["lr"], 1e-3 * tp.scale("folded").lr)


def test_gpt2_attention_scaling_attribute_is_multiplied_once():
    target = build("gpt2", 128, 2)
    before = target.transformer.h[0].attn.scaling
    plan = pt.parameterize(target, build("gpt2", 32, 2))
    assert math.isclose(target.transformer.h[0].attn.scaling, before * 0.5)
    plan.apply(target)  # idempotent
    assert math.isclose(target.transformer.h[0].attn.scaling, before * 0.5)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "t5"])
def test_depth_only_roles_match_the_width_plan(family):
    """At equal width the roles come from the structure, not from growth; sizes that coincide with the
    vocabulary or the position count (GPT-2 with n_positions == n_embd; 4 x n_embd == vocab) change nothing."""
    over = {"n_positions": 32} if family == "gpt2" else {}
    plan = pt.parameterize(build(family, 32, 4, **over), build(family, 32, 2, **over), recipe="completep")
    for name, tp in plan.tensors.items():
        assert tp.role == _expected_role(family, name), (name, tp.role)


def test_base_width_equal_to_the_vocabulary_is_not_an_error():
    plan = pt.parameterize(build("llama", 4 * V, 2), build("llama", V, 2))
    assert plan.tensors["lm_head.weight"].role == "readout"
    assert plan.tensors["model.layers.0.mlp.up_proj.weight"].role == "hidden"


def test_changed_vocabulary_is_still_refused():
    base = build("llama", 32, 2)
    target = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=2 * V))
    with pytest.raises(pt.PlanError, match="vocabulary"):
        pt.parameterize(target, base)


def _ids(n=2, t=8):
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ["gpt2", "llama-tied"])
def test_tied_model_save_pretrained_round_trip(tmp_path, family):
    """The default tied policy keeps the shared weight a plain attribute: HF's tie_weights and save_pretrained
    work, and from_pretrained + plan.apply(reinit=False) gives the same outputs."""
    target = build(family, 128, 2).eval()
    plan = pt.parameterize(target, build(family, 32, 2))
    assert plan.forward_state()  # the readout multiplier (and GPT-2's attention scale) live in the forward pass
    target.tie_weights()
    out = target(_ids()).logits
    target.save_pretrained(tmp_path)
    plan.save(tmp_path / "proxytune_plan.json")
    loaded = type(target).from_pretrained(tmp_path).eval()
    assert not torch.allclose(loaded(_ids()).logits, out, atol=1e-5)  # without the plan: not the same model
    pt.Plan.load(tmp_path / "proxytune_plan.json").apply(loaded, reinit=False)
    torch.testing.assert_close(loaded(_ids()).logits, out, rtol=1e-5, atol=1e-6)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_checkpoint_needs_its_plan():
    """A state_dict of a model whose forward pass carries plan state loads into a model with the same plan,
    and is refused (not silently accepted) by a plain model or one with another plan."""
    target = build("gpt2", 128, 2).eval()
    plan = pt.parameterize(target, build("gpt2", 32, 2))
    state = target.state_dict()
    again = build("gpt2", 128, 2).eval()
    plan.apply(again, reinit=False)
    again.load_state_dict(state)
    torch.testing.assert_close(again(_ids()).logits, target(_ids()).logits)
    with pytest.raises(RuntimeError, match="proxytune_plan"):
        build("gpt2", 128, 2).load_state_dict(state)
    other = build("gpt2", 128, 2)
    pt.parameterize(other, build("gpt2", 64, 2))
    with pytest.raises(RuntimeError, match="parameterized by plan"):
        other.load_state_dict(state)


def test_t5_tied_output_scale_is_taken_into_account():
    """T5 (tied) multiplies the decoder output by d_model^-1/2 itself: relative to the base that is already
    (1/4)^1/2 at 4x width, so the plan adds the remaining 1/2 of muP's 1/m on the readout use."""
    target, base = build("t5", 128, 2), build("t5", 32, 2)
    plan = pt.parameterize(target, base)
    tp = plan.tensors["shared.weight"]
    assert tp.readout_use == "lm_head.weight" and math.isclose(tp.readout_multiplier, 0.5)
    assert any("the readout's input" in n and "ratio 0.5 (absorbed)" in n for n in plan.notes), plan.notes
    # a T5 whose forward does not scale its decoder output (scale_decoder_outputs False; in transformers 5 that
    # is what tie_word_embeddings=False gives) gets muP's full 1/m
    cfg = dict(d_ff=256, d_kv=32, num_layers=2, num_heads=4, vocab_size=V, tie_word_embeddings=False)
    plain = T5ForConditionalGeneration(T5Config(d_model=128, **cfg))
    plain_base = T5ForConditionalGeneration(T5Config(d_model=32, **{**cfg, "d_ff": 64, "d_kv": 8}))
    plan = pt.parameterize(plain, plain_base)
    scaled = getattr(plain.config, "scale_decoder_outputs", plain.config.tie_word_embeddings)
    out = plan.tensors.get("lm_head.weight") or plan.tensors["shared.weight"]
    if out.role == "readout":
        assert math.isclose(out.scale("explicit").multiplier, 1 / 4 / (0.5 if scaled else 1.0))
    else:
        assert math.isclose(out.readout_multiplier, 0.5 if scaled else 0.25)


def test_same_shape_tensors_start_from_the_base_init():
    """GPT-2 scales its residual projections' init by its own depth; with a materialized base, a CompleteP
    plan starts from the base's init (then x1/L), not from the target's depth-scaled one."""
    torch.manual_seed(0)
    base, target = build("gpt2", 64, 2), build("gpt2", 64, 8)
    plan = pt.parameterize(target, base, recipe="completep")
    b_std = base.transformer.h[0].attn.c_proj.weight.std().item()
    t_std = target.transformer.h[5].attn.c_proj.weight.std().item()
    assert plan.tensors["transformer.h.5.attn.c_proj.weight"].init_source == "base"
    assert t_std == pytest.approx(b_std / 4, rel=0.05)
    assert not any("meta" in n for n in plan.notes)


class _PosNet(nn.Module):
    """A user model with parameter tables: a learned position table and a class token."""

    def __init__(self, w: int, depth: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(6, w)
        self.pos = nn.Parameter(torch.randn(10, w) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.GELU(), nn.Linear(2 * w, w))
                                    for _ in range(depth))
        self.head = nn.Linear(w, 3)

    def forward(self, x):
        h = self.inp(x) + self.pos[: x.shape[1]]
        h = torch.cat([self.cls_token.expand(x.shape[0], 1, -1), h], dim=1)
        for blk in self.blocks:
            h = h + blk(h)
        return self.head(h[:, 0])


def test_parameter_tables_are_embeddings_and_stacks_are_found_under_any_name():
    plan = pt.parameterize(_PosNet(64, 4), _PosNet(16, 2), recipe="completep")
    assert plan.tensors["pos"].role == "embedding" and plan.tensors["cls_token"].role == "embedding"
    assert plan.tensors["pos"].scale("folded").lr == 1.0 and plan.tensors["head.weight"].role == "readout"
    # blocks found from the ModuleList; each branch ends at the Sequential's last Linear
    assert plan.tensors["blocks.3.3.weight"].branch_output and not plan.tensors["blocks.3.1.weight"].branch_output
    assert plan.tensors["blocks.3.1.weight"].depth == 2.0
    out = plan._model(torch.randn(2, 5, 6))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_explain_says_what_a_checkpoint_does_not_carry():
    plan = pt.parameterize(build("gpt2", 128, 2), build("gpt2", 32, 2))
    text = plan.explain(lr=1e-3)
    assert "forward-pass state not stored in the weights" in text and "hf-scaling" in text
    untied = pt.parameterize(build("llama", 128, 2), build("llama", 32, 2))
    assert not untied.forward_state() and "forward-pass state" not in untied.explain(lr=1e-3)

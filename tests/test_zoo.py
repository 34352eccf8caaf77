"""The model zoo (tests/zoo.py): models proxytune never saw, planned, checked and tuned as a new user would.

For every family, under muP and CompleteP:

(a) every tensor's init std and per-group LR at two widths (and two depths), against the rules written out here
    from Tensor Programs V's Adam table and CompleteP (Dey et al. 2025), with the roles of the zoo's own table,
    written from the architectures, never from a plan;
(b) the coordinate check says PASS under muP and FAIL under SP, at small widths; a plan without its readout
    fails;
(c) a tiny tune (base + 2 wider proxies, a handful of steps) finishes.

(c) runs for three families by default and for every family under ``-m slow``.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import proxytune as pt
from proxytune.diagnose import coord_check
from proxytune.modelspec import ModelSpec

import zoo

warnings.filterwarnings("ignore", message=".*batching rule.*")
ZOO = str(Path(__file__).parent / "zoo.py")
FAMILIES = list(zoo.FAMILIES)
VOCAB, SEQ = 128, 16


def spec(family: str, **extra) -> ModelSpec:
    """The model description a user would write for a zoo family."""
    over: dict = {"options": {}}
    if family == "nanogpt":
        over["targets_arg"] = "targets"  # its forward returns the last position only without targets
    if zoo.FAMILIES[family].input == "image":
        over["input"] = "image"
    return ModelSpec(builder=f"{ZOO}:build_{family}", **{**over, **extra})


# The attention-logit factor each family's plan must fold into a separate query projection (regex of the tensors,
# power of the head-dim ratio). Families not listed apply it elsewhere: an attribute the forward passes as the
# scale (HF GPT-2, Falcon, GPT-NeoX: `scaling`) or the query rows of a fused projection (nanoGPT's c_attn, the
# parallel block's qkv), which the forward sees and the tensor's init and LR do not. T5 applies no scale of its own
# (it folds 1/sqrt(d_kv) into its init, which the plan replaces), so its query carries the whole 1/d_head.
QUERY = {
    "functional_tied": (r"\.to_q\.", -0.5), "moduledict_blocks": (r"\.wq\.", -0.5),
    "numbered_attrs": (r"\.wq\.", -0.5), "param_positions": (r"\.wq\.", -0.5), "postnorm": (r"\.q\.", -0.5),
    "hf_llama": (r"\.q_proj\.", -0.5), "hf_gemma": (r"\.q_proj\.", -0.5), "hf_phi": (r"\.q_proj\.", -0.5),
    "hf_gptj": (r"\.q_proj\.", -0.5), "hf_moe": (r"\.q_proj\.", -0.5), "hf_bert": (r"\.self\.query\.", -0.5),
    "hf_vit": (r"\.(q_proj|query)\.", -0.5), "hf_t5": (r"\.(SelfAttention|EncDecAttention)\.q\.", -1.0),
}
# A table tied to the readout carries more than the embedding rules when the forward gives its readout use no
# module of its own (functional_tied: the whole readout multiplier 1/m, undone on the lookup), or multiplies its
# lookup by sqrt(hidden) (Gemma: the plan divides that growth, m^1/2, out of the table).
TABLE = {"functional_tied": (r"^lexicon\.weight$", -1.0), "hf_gemma": (r"embed_tokens\.weight$", -0.5)}


def expected(family: str, name: str, m: float, head_ratio: float, depth_ratio: float,
             recipe: str) -> tuple[float, float]:
    """(init std multiplier, LR multiplier) of tensor ``name`` relative to the base, Adam, folded form.

    muP (Tensor Programs V, Table 3, with Adam): embedding, vector and scalar tensors keep their init and LR;
    hidden matrices init x m^-1/2 and LR x 1/m; the readout init x 1/m and LR x 1/m. A forward factor f folded
    into a tensor multiplies both its init and (Adam) its LR. CompleteP (alpha = 1): every residual branch's output
    x 1/L (folded: init and LR x 1/L); Adam's in-block LRs x L^(alpha - 1) = 1."""
    zm = zoo.FAMILIES[family]
    role = zm.role_of(name)
    init, lr = {"embedding": (1.0, 1.0), "vector": (1.0, 1.0), "scalar": (1.0, 1.0),
                "hidden": (m ** -0.5, 1 / m), "readout": (1 / m, 1 / m)}[role]
    f = 1.0
    if family in QUERY and re.search(QUERY[family][0], name):
        f *= head_ratio ** QUERY[family][1]
    if family in TABLE and re.search(TABLE[family][0], name):
        f *= m ** TABLE[family][1]
    if recipe == "completep" and re.search(zm.branch, name):
        f /= depth_ratio
    return init * f, lr * f


@pytest.mark.parametrize("recipe", ["mup", "completep"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_against_the_rules(family, recipe):
    """(a) Roles, init stds and per-group LRs at width 32 -> 64 and depth 2 -> 4, every tensor, no overrides."""
    zm = zoo.FAMILIES[family]
    torch.manual_seed(0)
    base = zm.builder(32, 2, vocab=VOCAB, seq_len=SEQ)
    torch.manual_seed(1)
    target = zm.builder(64, 4, vocab=VOCAB, seq_len=SEQ)
    plan = pt.parameterize(target, base, recipe=recipe, optimizer="adamw", seq_len=SEQ,
                           **spec(family).structure().plan_kwargs())
    t_params, b_params = plan.parameters(target), dict(base.named_parameters(remove_duplicate=False))
    groups = {g["name"]: g for g in plan.param_groups(lr=1.0, weight_decay=0.0)}
    for name, tp in plan.tensors.items():
        want = zm.role_of(name)
        assert tp.role == want, f"{family} {name}: role {tp.role}, the zoo says {want}"
        branch = bool(re.search(zm.branch, name)) and tp.block is not None
        assert tp.branch_output == branch, f"{family} {name}: branch output {tp.branch_output}, expected {branch}"
        init, lr = expected(family, name, 2.0, 2.0, 2.0, recipe)
        # 1e-6: Gemma's factor is read from a float32 buffer
        assert math.isclose(groups[name]["lr"], lr, rel_tol=1e-6), \
            f"{family} {name} ({tp.role}): lr x{groups[name]['lr']:.6g}, the rules say x{lr:.6g}"
        base_name = name
        if tp.block is not None:  # block i of the target is block i mod 2 of the base
            idx = re.search(r"(\d+)$", tp.block)
            base_name = f"{tp.block[:idx.start()]}{int(idx.group(1)) % 2}{name[len(tp.block):]}"
        b_std = float(b_params[base_name].detach().double().std()) if b_params[base_name].numel() > 1 else 0.0
        if b_std > 0:
            t_std = float(t_params[name].detach().double().std())
            assert math.isclose(t_std, b_std * init, rel_tol=1e-4), \
                f"{family} {name} ({tp.role}): init std {t_std:.6g}, base {b_std:.6g} x {init:.6g} = {b_std * init:.6g}"


def _check(family: str, recipe: str, **extra):
    return coord_check(spec(family, **extra), widths=[32, 64, 128], depth=2, recipe=recipe, seq_len=SEQ,
                       batch_size=4, seeds=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_coordinate_check_passes_mup_and_fails_sp(family):
    """(b) muP passes, SP fails, on a model proxytune never saw. The logits and the attention logits are among
    the judged outputs, so a plan that misses the readout or the attention scale cannot pass."""
    mup = _check(family, "mup")
    assert mup.passed, mup.table()
    assert "logits" in mup.last_step_slopes() and any(m.startswith("attn-logits:") for m in mup.last_step_slopes())
    sp = _check(family, "sp")
    assert not sp.passed and "blow up with width" in sp.line, sp.table()


@pytest.mark.parametrize("family", ["hf_opt", "hf_qwen3", "hf_bloom"])
def test_attention_scales_the_model_sets_itself(family):
    """(b) Three ways a model sets its own attention scale, each of which once got a plan whose attention logits
    kept SP's scale (the check caught every one): OPT scales q before the product (the trace reads that factor),
    Qwen3 normalizes q after its projection (a factor folded into q_proj would be normalized away: the scaling
    attribute takes it), BLOOM scales inside alibi.baddbmm (inv_norm_factor)."""
    def check(recipe):
        return coord_check(ModelSpec(builder=f"{ZOO}:build_{family}"), widths=[32, 64, 128], depth=2, recipe=recipe,
                           seq_len=SEQ, batch_size=4, seeds=1)

    mup = check("mup")
    assert mup.passed, mup.table()
    sp = check("sp")
    assert not sp.passed, sp.table()


def test_a_plan_without_its_readout_fails_the_check():
    """(b) The functional tied readout forced away (the table declared an embedding only, readout: none), as the
    plan was before the forward pass was traced: the table keeps embedding rules, the logits keep SP's scale, and
    the check says so instead of PASS. Without readout: none, proxytune refuses such a plan."""
    with pytest.raises(pt.PlanError, match="no readout found"):
        pt.parameterize(zoo.build_functional_tied(64), zoo.build_functional_tied(32),
                        roles={"lexicon.weight": "embedding"})
    cc = _check("functional_tied", "mup", roles={"lexicon.weight": "embedding"}, readout="none")
    assert not cc.passed
    assert "no readout" in cc.line and "logits" in cc.line, cc.line


def _tune_file(tmp_path: Path, family: str) -> Path:
    zm = zoo.FAMILIES[family]
    model = spec(family).model_dump(exclude_defaults=True)
    data: dict = {"data": "stdlib"}
    if zm.input == "image":
        data = {"data": "teacher", "data_options": {"shape": [3, 16, 16], "d_out": 10}}
    cfg = {
        "name": f"zoo-{family}", "model": model, **data, "base": {"width": 16, "depth": 1}, "widths": [32, 64],
        "recipes": ["mup"], "runs_dir": str(tmp_path / "runs"),
        "train": {"steps": 6, "batch_size": 4, "seq_len": SEQ, "eval_every": 6, "eval_batches": 1, "warmup": 0},
        "search": {"strategy": "tpe", "n_trials": 4, "lr": {"start": -8, "stop": -6, "step": 1},
                   "multipliers": ["role_lr.readout", "attn_mult"], "finalists": 1, "seeds": 2},
        "verify": {"span": 0.5, "step": 0.5, "seeds": 1, "max_extend": 0, "race": False},
        "executor": {"kind": "inline", "batch": 4},
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


FAST_TUNES = ("nanogpt", "functional_tied", "hf_llama")


@pytest.mark.parametrize("family", [f if f in FAST_TUNES else pytest.param(f, marks=pytest.mark.slow)
                                    for f in FAMILIES])
def test_a_tiny_tune_finishes(tmp_path, family):
    """(c) tune on the zoo model, through its model: description in the tune file, ends with a recommendation."""
    result = pt.tune(str(_tune_file(tmp_path, family)), log=lambda line: None)
    assert result.recipe == "mup" and math.isfinite(result.lr) and result.lr > 0
    assert result.candidates and result.candidates[0]["recipe"] == "mup"

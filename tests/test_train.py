"""The trainer: schedules, determinism, divergence, records, and batched == sequential."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from proxytune.train import (
    BatchError,
    RunResult,
    TrainConfig,
    group_batchable,
    lr_factor,
    make_config,
    train,
    train_batched,
)
from proxytune.train.setup import param_settings, prepare

TINY_LM = dict(model="gpt", width=32, depth=1, batch_size=4, seq_len=16, steps=12, eval_every=6, eval_batches=2,
               data_options={"max_bytes": 200_000})


def lm(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY_LM, **kw})


# ---------------------------------------------------------------- schedules
def test_schedules_shapes():
    steps = 100
    assert lr_factor(0, steps, "cosine", warmup=10) == pytest.approx(0.1)
    assert lr_factor(9, steps, "cosine", warmup=10) == pytest.approx(1.0)
    assert lr_factor(99, steps, "cosine", warmup=10, final_frac=0.1) == pytest.approx(0.1)
    mid = lr_factor(54, steps, "cosine", warmup=10, final_frac=0.0)
    assert mid == pytest.approx(0.5, abs=0.02)
    assert lr_factor(99, steps, "linear", final_frac=0.0) == pytest.approx(0.0)
    assert lr_factor(49, steps, "linear", final_frac=0.0) == pytest.approx(0.5)
    # WSD: flat until the cooldown, then linear to final_frac
    wsd = [lr_factor(s, steps, "wsd", warmup=0, final_frac=0.0, cooldown=0.2) for s in range(steps)]
    assert all(f == 1.0 for f in wsd[:80]) and wsd[80] < 1.0 and wsd[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(wsd, wsd[1:]))
    assert all(lr_factor(s, steps, "constant", warmup=5) == 1.0 for s in range(5, steps))


def test_schedule_is_applied_to_every_group():
    cfg = lm(schedule="linear", warmup=0, final_lr_frac=0.0, steps=4, eval_every=4)
    seen = []
    train(cfg, progress=lambda step, total, loss: seen.append((step, total, loss)))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in seen)


# ----------------------------------------------------------------- config
def test_config_errors_name_the_field_and_suggest():
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        make_config(stpes=10)
    with pytest.raises(ValueError, match="did you mean 'mup'"):
        TrainConfig(recipe="mupp")
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        TrainConfig(schedule="cosin")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="role"):
        TrainConfig(role_lr={"readuot": 0.5})
    with pytest.raises(ValueError, match="fraction"):
        TrainConfig(warmup=1.5)


# ----------------------------------------------------------- single runs
def test_same_seed_same_result_and_records():
    a, b = train(lm(seed=3)), train(lm(seed=3))
    assert a.train_losses == b.train_losses and a.final_val_loss == b.final_val_loss
    c = train(lm(seed=4))
    assert c.train_losses != a.train_losses
    assert a.status == "complete" and a.steps_done == 12
    assert a.tokens == 12 * 4 * 16
    assert [e["step"] for e in a.evals] == [6, 12]
    assert math.isfinite(a.final_val_loss) and a.final_val_loss == a.evals[-1]["val_loss"]
    # FLOPs counted by torch: at least the 6 N D of the matmul weights
    n_matmul = sum(p.numel() for n, p in prepare(lm()).model.named_parameters() if p.ndim == 2 and "wte" not in n
                   and "wpe" not in n)
    assert a.flops >= 6 * n_matmul * a.tokens * 0.9
    assert a.env["data"]["sha256"] and a.env["python"] and a.env["torch"] == torch.__version__
    assert a.config["seed"] == 3
    again = RunResult.from_dict(a.to_dict())
    assert again.train_losses == a.train_losses and again.config == a.config


def test_training_reduces_loss_on_the_stdlib_corpus():
    res = train(lm(steps=60, eval_every=60, lr=1e-2, batch_size=8))
    assert res.status == "complete"
    assert res.final_train_loss < res.train_losses[0] - 1.0  # from ~ln 256 = 5.5 towards byte statistics


def test_divergence_is_a_result_not_an_exception():
    res = train(lm(lr=50.0, optimizer="sgd", recipe="sp", grad_clip=None, steps=30))
    assert res.status == "diverged" and res.diverged
    assert res.final_val_loss == math.inf and res.loss == math.inf
    assert res.diverged_step is not None and res.steps_done == res.diverged_step + 1 < 30
    assert res.reason
    assert RunResult.from_dict(res.to_dict()).final_val_loss == math.inf


def test_trainer_uses_the_plan():
    cfg = lm(width=64, base_width=32, recipe="mup", optimizer="adamw", lr=1e-2)
    prep = prepare(cfg)
    settings = param_settings(prep)
    assert settings["blocks.0.mlp.fc.weight"]["lr"] == pytest.approx(1e-2 / 2)  # hidden: lr / m
    assert settings["wte.weight"]["lr"] == pytest.approx(1e-2)  # embedding: lr
    sp = param_settings(prepare(cfg.model_copy(update={"recipe": "sp"})))
    assert sp["blocks.0.mlp.fc.weight"]["lr"] == pytest.approx(1e-2)


def test_init_multipliers():
    zero = prepare(lm(role_init={"readout": 0.0}))
    assert float(zero.model.lm_head.weight.detach().abs().max()) == 0.0
    ref, big = prepare(lm(seed=1)), prepare(lm(seed=1, init_scale=2.0))
    w_ref, w_big = ref.model.blocks[0].attn.q_proj.weight, big.model.blocks[0].attn.q_proj.weight
    assert torch.allclose(w_big, 2 * w_ref)
    assert torch.equal(big.model.ln_f.weight, ref.model.ln_f.weight)  # vectors keep their init


def test_mlp_on_teacher_task_learns():
    res = train(TrainConfig(model="mlp", width=64, depth=2, data="teacher", batch_size=64, steps=80, lr=3e-3,
                            eval_every=40, seq_len=1))
    assert res.status == "complete"
    assert res.final_val_loss < 0.8 * math.log(4)
    assert res.tokens == 80 * 64


def test_text_and_token_files(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 400)
    res = train(lm(data=str(text), steps=6, eval_every=3, data_options={}))
    assert res.status == "complete" and res.env["data"]["kind"] == "text"
    tokens = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 500, size=20_000).astype(np.uint16).tofile(tokens)
    res = train(lm(data=str(tokens), steps=6, eval_every=3, data_options={"vocab_size": 500}))
    assert res.status == "complete"
    assert res.train_losses[0] == pytest.approx(math.log(500), abs=0.5)  # the model got vocab 500


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nothing-here.txt"):
        train(lm(data=str(tmp_path / "nothing-here.txt"), data_options={}))


# -------------------------------------------------------- batched trials
def _compare(seq: list[RunResult], bat: list[RunResult], rtol: float) -> float:
    worst = 0.0
    for s, b in zip(seq, bat):
        assert s.status == b.status and s.steps_done == b.steps_done
        assert len(s.train_losses) == len(b.train_losses)
        for x, y in zip(s.train_losses, b.train_losses):
            if math.isfinite(x):
                worst = max(worst, abs(x - y) / abs(x))
        if s.status == "complete":
            worst = max(worst, abs(s.final_val_loss - b.final_val_loss) / s.final_val_loss)
    assert worst <= rtol, worst
    return worst


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adam-atan2", "muon"])
def test_batched_matches_sequential_fp64(optimizer):
    """Each member equals the same config trained alone, for every batched optimizer.

    Members differ in lr, weight decay, init scale, per-role LR, and seed
    (so also in data order); one member diverges and must not disturb the
    others.
    """
    big_lr = {"sgd": 200.0, "adam": 30.0, "adamw": 30.0, "adam-atan2": 30.0, "muon": 30.0}[optimizer]
    lr = {"sgd": 0.3}.get(optimizer, 1e-2)
    common = dict(optimizer=optimizer, precision="fp64", width=32, base_width=16, recipe="mup", steps=10,
                  eval_every=5, grad_clip=1.0)
    members = [
        lm(**common, lr=lr),
        lm(**common, lr=lr / 3, weight_decay=0.1, init_scale=0.5),
        lm(**common, lr=lr, seed=7, role_lr={"readout": 0.5}),
        lm(**common, lr=big_lr, seed=2),
    ]
    seq = [train(c) for c in members]
    bat = train_batched(members)
    assert seq[3].status == "diverged", "the test needs one diverging member"
    assert [r.status for r in bat[:3]] == ["complete"] * 3
    _compare(seq, bat, rtol=1e-9)


def test_batched_matches_sequential_fp32_default_attention():
    members = [lm(lr=lr, steps=12) for lr in (1e-3, 3e-3, 1e-2)]
    seq, bat = [train(c) for c in members], train_batched(members)
    _compare(seq, bat, rtol=1e-4)
    assert bat[0].env["batch_group"]["size"] == 3


def test_batched_tied_rope_swiglu_gpt():
    opts = {"tied": True, "positions": "rope", "mlp": "swiglu", "norm": "rmsnorm"}
    members = [lm(lr=lr, steps=6, eval_every=3, precision="fp64", model_options=opts) for lr in (1e-3, 1e-2)]
    _compare([train(c) for c in members], train_batched(members), rtol=1e-9)


def test_batched_moe_and_mlp():
    moe = [lm(model="moe", lr=lr, steps=6, eval_every=3, precision="fp64") for lr in (1e-3, 1e-2)]
    _compare([train(c) for c in moe], train_batched(moe), rtol=1e-9)
    mlp = [TrainConfig(model="mlp", width=32, depth=2, data="teacher", batch_size=32, steps=8, eval_every=4,
                       lr=lr, precision="fp64") for lr in (1e-3, 1e-2)]
    _compare([train(c) for c in mlp], train_batched(mlp), rtol=1e-9)


def test_batched_group_rules():
    with pytest.raises(BatchError, match="width"):
        train_batched([lm(width=32), lm(width=64)])
    with pytest.raises(BatchError, match="adafactor"):
        train_batched([lm(optimizer="adafactor"), lm(optimizer="adafactor", lr=1e-2)])
    configs = [lm(width=32, lr=1e-3), lm(width=64), lm(width=32, lr=1e-2, seed=2)]
    assert group_batchable(configs) == [[0, 2], [1]]


def test_all_members_diverging_ends_the_group():
    res = train_batched([lm(lr=100.0, optimizer="sgd", recipe="sp", grad_clip=None, steps=40, seed=s)
                         for s in range(2)])
    assert all(r.status == "diverged" and r.steps_done < 40 for r in res)


def test_on_eval_prunes_single_and_batched_members():
    res = train(lm(steps=12, eval_every=4), on_eval=lambda step, val: step >= 8)
    assert res.status == "pruned" and res.steps_done == 8 and math.isfinite(res.final_val_loss)
    members = [lm(lr=lr, steps=12, eval_every=4) for lr in (1e-3, 3e-3, 1e-2)]
    out = train_batched(members, on_eval=lambda i, step, val: i == 1 and step >= 4)
    assert [r.status for r in out] == ["complete", "pruned", "complete"]
    assert out[1].steps_done == 4 and out[0].steps_done == 12
    alone = train(members[2])
    assert out[2].final_val_loss == pytest.approx(alone.final_val_loss, rel=1e-4)


def test_batched_tied_readout_with_its_multiplier():
    """Under muP a tied readout gets an input multiplier, and the model the plan's marker buffer (its digest,
    which differs between seeds). Members that differ in lr and seed batch and match training alone; members whose
    forward multipliers differ (output_mult cancels the readout's here) are refused: member 0's template would
    run the other with the wrong multiplier."""
    common = dict(width=32, base_width=16, recipe="mup", precision="fp64", steps=6, eval_every=3,
                  model_options={"tied": True})
    members = [lm(**common, lr=1e-2, seed=0), lm(**common, lr=3e-3, seed=1)]
    _compare([train(c) for c in members], train_batched(members), rtol=1e-9)
    for pair in ([lm(**common, output_mult=2.0), lm(**common)], [lm(**common), lm(**common, embedding_mult=2.0)]):
        with pytest.raises(BatchError, match="forward pass of member 1 differs"):
            train_batched(pair)

"""``tune`` with Muon, Shampoo and SOAP (issue 31, item 4): stage 1 searches each optimizer's own constants.

Muon's ``muon_lr_ratio`` (its matrices' base LR over the AdamW LR of the other tensors) and Shampoo's ``eps_mult``
(a multiplier on the base damping ``matrix_eps``) join the default search; SOAP's ``eps_mult`` (Adam's eps) is
accepted by name. The end-to-end runs are tiny (width 8 -> 16, 32, a handful of steps, one recipe, the
inline executor) and check that stage 1 varied the constant, that the optimizer was built with it, and that the
recommendation and the target's settings carry it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from proxytune.plan import Plan
from proxytune.train import TrainConfig, train, train_batched
from proxytune.train.config import default_eps, optimizer_fields
from proxytune.tune import TuneConfig, TuneConfigError, Tuner
from proxytune.tune.config import DEFAULT_MULTIPLIERS
from proxytune.tune.report import optimizer_constant_lines

needs_library = pytest.mark.skipif(importlib.util.find_spec("pytorch_optimizer") is None,
                                   reason="pytorch-optimizer (the matrix extra) is not installed")

TINY = {
    "name": "tiny-opt", "model": "gpt", "model_options": {"head_dim": 8}, "data_options": {"max_bytes": 200_000},
    "base": {"width": 8, "depth": 1}, "widths": [16, 32], "recipes": ["mup"], "target": {"width": 64},
    "train": {"steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 1},
    "search": {"strategy": "oat", "lr": {"start": -8, "stop": -6, "step": 1}, "rounds": 1, "span": 1,
               "lr_span": 1, "finalists": 1},
    "verify": {"max_extend": 0, "seeds": 1},
    "executor": {"kind": "inline", "batch": 8},
}


def tiny(tmp_path: Path, **over: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(TINY))
    d["runs_dir"] = str(tmp_path / "runs")
    for key, value in over.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d.get(key), dict) else value
    return d


# ------------------------------------------------------------------ config
def test_default_multipliers_for_adamw_are_unchanged():
    assert DEFAULT_MULTIPLIERS == ("role_init.hidden", "role_init.readout", "role_init.embedding",
                                   "role_lr.embedding", "role_lr.readout", "role_lr.vector", "attn_mult")
    for optimizer in ("adamw", "adam", "sgd", "soap"):
        cfg = TuneConfig.from_dict({"name": "x", "optimizer": optimizer})
        assert cfg.search.multipliers == list(DEFAULT_MULTIPLIERS), optimizer


@pytest.mark.parametrize("optimizer, axis", [("muon", "muon_lr_ratio"), ("dion", "muon_lr_ratio"),
                                             ("shampoo", "eps_mult")])
def test_the_optimizers_constant_joins_the_default_search(optimizer, axis):
    cfg = TuneConfig.from_dict({"name": "x", "optimizer": optimizer})
    assert cfg.search.multipliers == [*DEFAULT_MULTIPLIERS, axis]
    # a list given is searched as given: the constant is then tuned only when named
    given = TuneConfig.from_dict({"name": "x", "optimizer": optimizer, "search": {"multipliers": ["attn_mult"]}})
    assert given.search.multipliers == ["attn_mult"]
    # the stored file reads back the same (a run continues with the same search)
    again = TuneConfig.from_dict(cfg.model_dump(mode="json"))
    assert again.search.multipliers == cfg.search.multipliers and again.identity() == cfg.identity()


def test_soap_and_muon_accept_eps_mult_by_name():
    for optimizer in ("soap", "muon", "adamw"):
        cfg = TuneConfig.from_dict({"name": "x", "optimizer": optimizer, "search": {"multipliers": ["eps_mult"]}})
        assert cfg.search.multipliers == ["eps_mult"]


@pytest.mark.parametrize("optimizer, axis, valid", [
    ("adamw", "muon_lr_ratio", "eps_mult"),
    ("shampoo", "muon_lr_ratio", "eps_mult"),
    ("sgd", "eps_mult", "none"),
    ("adam-atan2", "eps_mult", "none"),
    ("adafactor", "eps_mult", "none"),  # its eps is a pair: no single base eps to multiply
])
def test_an_optimizer_constant_named_for_the_wrong_optimizer_is_refused(tmp_path, optimizer, axis, valid):
    with pytest.raises(TuneConfigError, match=rf"{axis}.*optimizer '{optimizer}' has no such constant.*"
                                              rf"valid for '{optimizer}': {valid}"):
        TuneConfig.from_dict(tiny(tmp_path, optimizer=optimizer, search={"multipliers": [axis]}))
    assert not (tmp_path / "runs").exists()


def test_other_optimizer_constant_errors(tmp_path):
    with pytest.raises(TuneConfigError, match="role_lr.hidden and muon_lr_ratio both scale"):
        TuneConfig.from_dict(tiny(tmp_path, optimizer="muon",
                                  search={"multipliers": ["muon_lr_ratio", "role_lr.hidden"]}))
    with pytest.raises(TuneConfigError, match="set by tune itself"):  # tuned, not fixed in train:
        TuneConfig.from_dict(tiny(tmp_path, optimizer="muon", train={"muon_lr_ratio": 2.0}))
    with pytest.raises(TuneConfigError, match="did you mean 'muon_lr_ratio'"):
        TuneConfig.from_dict(tiny(tmp_path, optimizer="muon", search={"multipliers": ["muon_lr_ration"]}))


def test_train_config_fields_and_what_the_plan_gets():
    assert default_eps("adamw") == 1e-8 and default_eps("shampoo") == 1e-6 and default_eps("sgd") is None
    assert optimizer_fields("muon") == ("muon_lr_ratio", "eps_mult") and optimizer_fields("sgd") == ()
    assert TrainConfig(optimizer="muon").group_kwargs() == {"eps": None, "muon_lr": None}  # as before: the defaults
    cfg = TrainConfig(optimizer="muon", lr=0.01, muon_lr_ratio=0.25)
    assert cfg.group_kwargs() == {"eps": None, "muon_lr": 0.0025}
    assert cfg.group_kwargs(lr=0.1)["muon_lr"] == pytest.approx(0.025)
    assert TrainConfig(optimizer="shampoo", eps_mult=4.0).base_eps() == pytest.approx(4e-6)
    assert TrainConfig(optimizer="adamw", eps=1e-6, eps_mult=0.5).base_eps() == pytest.approx(5e-7)
    for bad in ({"optimizer": "adamw", "muon_lr_ratio": 2.0}, {"optimizer": "sgd", "eps_mult": 2.0},
                {"optimizer": "muon", "muon_lr_ratio": 0.0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_batched_muon_members_with_their_own_ratio_and_eps_train_as_alone():
    """The batched trainer takes each member's Muon ratio and eps multiplier (they are batchable fields)."""
    common = dict(model="gpt", width=32, depth=1, base_width=16, batch_size=4, seq_len=16, steps=6, eval_every=3,
                  eval_batches=1, data_options={"max_bytes": 200_000}, optimizer="muon", precision="fp64", lr=1e-2)
    members = [TrainConfig(**common), TrainConfig(**common, muon_lr_ratio=0.25),
               TrainConfig(**common, muon_lr_ratio=4.0, eps_mult=8.0)]
    seq, bat = [train(c) for c in members], train_batched(members)
    assert bat[0].env["batch_group"]["size"] == 3
    for s, b in zip(seq, bat):
        assert b.final_val_loss == pytest.approx(s.final_val_loss, rel=1e-9)
    assert len({round(s.final_val_loss, 6) for s in seq}) == 3  # the ratio changed the training


# ------------------------------------------------------------------ end to end
def _spy_groups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, list[dict[str, Any]]]]:
    """Record (base lr, param groups) of every optimizer the trainer builds (single and batched trials)."""
    seen: list[tuple[float, list[dict[str, Any]]]] = []
    original = Plan.param_groups

    def spy(self: Plan, lr: float, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        groups = original(self, lr, *args, **kwargs)
        seen.append((lr, [{k: v for k, v in g.items() if k not in ("params",)} for g in groups]))
        return groups

    monkeypatch.setattr(Plan, "param_groups", spy)
    return seen


def _stage1_values(tuner: Tuner, axis: str) -> set[float]:
    return {round(float(r[axis]), 6) for stage, sweep in tuner.sweeps.items() if stage.startswith("s1-")
            for r in sweep.records() if r.get("status") in ("complete", "diverged") and axis in r}


@pytest.mark.parametrize("optimizer, flag", [("muon", "use_muon"), ("dion", "use_dion")])
def test_tune_with_muon_searches_the_lr_ratio(tmp_path, monkeypatch, optimizer, flag):
    seen = _spy_groups(monkeypatch)
    cfg = TuneConfig.from_dict(tiny(tmp_path, optimizer=optimizer, search={"multipliers": ["muon_lr_ratio"]}))
    tuner = Tuner(cfg, log=lambda m: None)
    result = tuner.run()
    # stage 1 scanned the ratio around the library's default (1: muon_lr = lr), one octave each side
    assert _stage1_values(tuner, "muon_lr_ratio") == {0.5, 1.0, 2.0}
    # and the optimizer got it: the Muon matrices' LR over the base lr, at the base (where the plan scales nothing)
    ratios = {round(g["lr"] / lr, 6) for lr, groups in seen for g in groups if g.get(flag)}
    assert {0.5, 1.0, 2.0} <= ratios
    # the recommendation carries the ratio chosen, the target's settings its muon_lr, the training code too
    ratio = result.stage1.winner.setting["muon_lr_ratio"]
    assert result.constants.get("muon_lr_ratio", 1.0) == ratio
    assert f"`muon_lr_ratio: {ratio:g}`" in optimizer_constant_lines(result.stage1)[0]
    p = result.prediction
    assert p.setting("muon_lr").value == pytest.approx(p.lr * ratio)
    assert "muon_lr = " in Path(result.report).read_text()
    plan = json.loads(Path(p.plan).read_text())
    code = Path(p.snippet).read_text()
    if ratio != 1.0:
        assert plan["base_hparams"]["muon_lr"] == pytest.approx(p.lr * ratio)
        assert f"muon_lr=lr * {ratio!r}" in code
    else:
        assert "muon_lr" not in plan["base_hparams"] and "muon_lr=" not in code


def test_tpe_stage1_samples_the_muon_ratio_on_its_log2(tmp_path, monkeypatch):
    seen = _spy_groups(monkeypatch)
    cfg = TuneConfig.from_dict(tiny(tmp_path, optimizer="muon",
                                    search={"strategy": "tpe", "n_trials": 4, "multipliers": ["muon_lr_ratio"]}))
    tuner = Tuner(cfg, log=lambda m: None)
    s1 = tuner.stage1()
    sampled = [r["log2_muon_lr_ratio"] for r in tuner.sweeps["s1-tpe"].records()]
    assert len(sampled) == 4 and all(-3 <= x <= 3 for x in sampled) and len(set(sampled)) == 4
    ratios = {round(g["lr"] / lr, 6) for lr, groups in seen for g in groups if g.get("use_muon")}
    assert {round(2.0 ** x, 6) for x in sampled} <= ratios
    assert "muon_lr_ratio" in s1.winner.setting


@needs_library
def test_tune_with_shampoo_searches_the_damping(tmp_path, monkeypatch):
    seen = _spy_groups(monkeypatch)
    cfg = TuneConfig.from_dict(tiny(tmp_path, optimizer="shampoo", search={"multipliers": ["eps_mult"]},
                                    train={"steps": 6, "eval_every": 6}))
    tuner = Tuner(cfg, log=lambda m: None)
    result = tuner.run()
    assert _stage1_values(tuner, "eps_mult") == {0.5, 1.0, 2.0}
    # the damping Shampoo was built with, over its default 1e-6 (at the base every tensor's multiplier is 1)
    damping = {round(g["matrix_eps"] / 1e-6, 6) for _, groups in seen for g in groups}
    assert {0.5, 1.0, 2.0} <= damping
    mult = result.stage1.winner.setting["eps_mult"]
    eps = result.prediction.setting("eps")
    assert eps.value == pytest.approx(1e-6 * mult) and "damping matrix_eps" in eps.source
    assert math.isfinite(result.log2_lr) and result.recipe == "mup"
    plan = json.loads(Path(result.prediction.plan).read_text())
    assert plan["base_hparams"]["eps"] == (None if mult == 1.0 else pytest.approx(1e-6 * mult))


@needs_library
def test_tune_with_soap_and_eps_mult_named(tmp_path, monkeypatch):
    seen = _spy_groups(monkeypatch)
    cfg = TuneConfig.from_dict(tiny(tmp_path, optimizer="soap", search={"multipliers": ["eps_mult"]},
                                    train={"steps": 6, "eval_every": 6}, target=None))
    tuner = Tuner(cfg, log=lambda m: None)
    result = tuner.run()
    assert _stage1_values(tuner, "eps_mult") == {0.5, 1.0, 2.0}
    assert {0.5, 1.0, 2.0} <= {round(g["eps"] / 1e-8, 6) for _, groups in seen for g in groups}
    assert result.prediction is None and "eps_mult" in result.stage1.winner.setting


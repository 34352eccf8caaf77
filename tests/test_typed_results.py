"""Typed results between layers: attributes to read, a dict form generated from them, the old subscripting kept
for one release with a warning; and `proxytune train`'s flags derived from TrainConfig."""

from __future__ import annotations

import json
import re
import typing

import pytest
from typer.testing import CliRunner

from proxytune.analysis.prediction import HPEstimate, LossEstimate, Prediction, ProxySummary, RecipeRef, TargetSize
from proxytune.analysis.predict import trust_warnings
from proxytune.cli import _TRAIN_FLAGS, app
from proxytune.train.config import TrainConfig, field_choices
from proxytune.tune.results import Finalist, Round, Stage1Result, TuneCost


def prediction(lo=-7.5, hi=-6.5, width=512) -> Prediction:
    return Prediction(
        target=TargetSize(width=width, depth=2, params=1e6, tokens=1e5, batch_tokens=1024),
        hp=HPEstimate(name="log2_lr", value=-7.0, interval=(lo, hi), confidence=0.9),
        loss=LossEstimate(value=3.0, interval=(2.9, 3.1), law="L = a N^b + c", at_tokens=1e5, fit=object()),
        notes=("a note",), recipe=RecipeRef(recipe="mup", optimizer="adamw", sweep="s"),
        proxies=ProxySummary(widths=(32, 64, 128), depths=(2,), base_depth=2, base_residual=1.0, tokens=1e5,
                             batch_tokens=(1024,), seeds=2),
        warnings=(), plan=None)


def test_a_prediction_is_read_by_attribute_and_its_dict_form_is_generated():
    p = prediction()
    assert p.hp.lr == 2.0 ** -7 and p.hp.lr_interval == (2.0 ** -7.5, 2.0 ** -6.5) and p.snippet is None
    d = p.to_dict()
    assert list(d) == ["target", "hp", "loss", "notes", "recipe", "proxies", "warnings", "plan"]
    assert d["hp"] == {"name": "log2_lr", "value": -7.0, "interval": [-7.5, -6.5], "confidence": 0.9, "source": "",
                       "lr": 2.0 ** -7, "lr_interval": [2.0 ** -7.5, 2.0 ** -6.5]}
    assert d["loss"]["fit"] is p.loss.fit  # the law object, as the dict form has always carried it
    assert d["proxies"]["widths"] == [32, 64, 128]
    json.dumps(d, default=str)
    # another log2 axis has its natural value under its own name, and no learning rate
    init = HPEstimate(name="log2_init_std", value=-3.0, interval=(-4.0, -2.0), confidence=0.9)
    assert init.lr is None and init.to_dict()["init_std"] == 0.125 and "lr" not in init.to_dict()


def test_the_old_subscripting_still_works_and_warns():
    p = prediction()
    with pytest.warns(DeprecationWarning, match="subscripting a Prediction is deprecated"):
        hp = p["hp"]
    assert hp is p.hp  # a nested result stays typed
    with pytest.warns(DeprecationWarning):
        assert hp["lr"] == p.hp.lr and "lr" in hp and p.get("missing", 5) == 5
    with pytest.warns(DeprecationWarning), pytest.raises(KeyError):
        p["nothing"]


def test_trust_warnings_read_a_prediction_and_its_dict_form_alike():
    wide = prediction(lo=-10.0, hi=-6.0, width=128 * 32)
    typed = trust_warnings(wide)
    assert len(typed) == 2 and "interval spans a factor 16" in typed[0] and "x the largest proxy" in typed[1]
    assert trust_warnings(wide.to_dict()) == typed
    assert trust_warnings(prediction()) == []


def test_tune_results_dict_forms():
    cost = TuneCost(flops=10.0, trials=3, per_stage={"s1-lr": 10.0})
    assert cost.to_dict() == {"flops": 10.0, "trials": 3, "per_stage": {"s1-lr": 10.0}}
    with pytest.warns(DeprecationWarning):
        assert "vs_target_run" not in cost
    win = Finalist(setting={"log2_lr": -7.0}, mean=3.0, se=0.01, seeds=2)
    s1 = Stage1Result(strategy="oat", lr_scan={}, defaults={"log2_lr": -7.0},
                      rounds=(Round(round=1, center={"log2_lr": -7.0}, decisions=[], trials=3),), finalists=(win,),
                      winner=win, control=win, trials=3)
    d = s1.to_dict()
    assert d["rounds"] == [{"round": 1, "center": {"log2_lr": -7.0}, "decisions": [], "trials": 3}]
    assert d["winner"] == {"setting": {"log2_lr": -7.0}, "mean": 3.0, "se": 0.01, "seeds": 2}
    with pytest.raises(Exception):  # frozen
        s1.trials = 4  # type: ignore[misc]


def _help(command: str) -> str:
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert res.exit_code == 0, res.output
    return " ".join(re.sub(r"[│\s]+", " ", res.output).split())


def test_train_flags_are_derived_from_train_config():
    """Each flag that sets a TrainConfig field says the field's description, its choices and its default: a
    field that changes there changes here."""
    text = _help("train")
    for field, name, _ in _TRAIN_FLAGS:
        info = TrainConfig.model_fields[field]
        flag = "--" + name.replace("_", "-")
        start = text.index(flag + " ")
        entry = text[start:start + 600]
        if info.description:
            assert " ".join(info.description.split())[:40] in entry, (flag, entry)
        for choice in field_choices(field) or ():
            assert choice in entry, (flag, choice)
        if info.default is not None:
            assert f"[default: {info.default}]" in entry, (flag, entry)
        kind = [t for t in typing.get_args(info.annotation) or (info.annotation,) if t is not type(None)]
        assert ("<float>" if float in kind else "<int>" if kind == [int] else "<str>") in entry[:60], (flag, entry)


def test_train_grad_clip_zero_turns_clipping_off():
    args = ["train", "--width", "16", "--depth", "1", "--steps", "2", "--batch-size", "2", "--seq-len", "8",
            "--eval-every", "2", "--json"]
    off = CliRunner().invoke(app, [*args, "--grad-clip", "0"])
    assert off.exit_code == 0, off.output
    assert json.loads(off.stdout)["config"]["grad_clip"] is None
    on = CliRunner().invoke(app, args)
    assert json.loads(on.stdout)["config"]["grad_clip"] == TrainConfig().grad_clip

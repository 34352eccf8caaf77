"""Hostile sweep files: every one is either accepted or refused in one line (exit 2), never a traceback or hang."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from proxytune.cli import app

VALID = {
    "name": "fz", "model": "gpt", "data": "stdlib", "data_options": {"max_bytes": 200_000},
    "model_options": {"head_dim": 8}, "recipe": "mup", "optimizer": "adamw", "base": {"width": 16, "depth": 1},
    "axes": {"width": [16, 32], "log2_lr": {"start": -9, "stop": -5, "step": 2}, "seed": [0]},
    "train": {"depth": 1, "steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 1},
    "strategy": {"kind": "grid", "refine": False}, "executor": {"kind": "local", "workers": 1},
}
SECTIONS = ("train", "axes", "executor", "strategy", "base", "data_options", "model_options")

values = st.one_of(
    st.integers(min_value=-(10 ** 12), max_value=10 ** 12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e-7, 1e300, "", "cuda:7", "tpu", "bogus", True, None,
                     "/proc/nope", "/dev/null", "x" * 300, [], {}, [math.inf], {"start": 0, "stop": 1e9, "step": 1e-7}]),
    st.text(max_size=12), st.booleans(), st.none(),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=2),
)
keys = st.one_of(st.sampled_from(sorted(VALID) + ["storage", "runs_dir", "points", "program", "tracking"]),
                 st.text(min_size=1, max_size=8))


@st.composite
def mutations(draw: st.DrawFn) -> dict:
    d = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(("top",) + SECTIONS))
        target = d if where == "top" else d.setdefault(where, {})
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(("set", "delete", "set-known")))
        if action == "delete" and target:
            target.pop(draw(st.sampled_from(sorted(target))), None)
        elif action == "set-known" and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(values)
        else:
            target[draw(keys)] = draw(values)
    return d


def check(tmp_path: Path, d: dict) -> int:
    path = tmp_path / "fz.yaml"
    d = {**d, "runs_dir": d.get("runs_dir", str(tmp_path / "runs"))} if isinstance(d, dict) else d
    path.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(app, ["sweep", str(path), "--check"])
    assert res.exception is None or isinstance(res.exception, SystemExit), (d, res.output, res.exc_info)
    assert res.exit_code in (0, 2), (d, res.output)
    if res.exit_code == 2:
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (d, res.output)
    assert not (tmp_path / "runs").exists() or res.exit_code == 0 and not any((tmp_path / "runs").iterdir()), d
    return res.exit_code


@settings(max_examples=40, deadline=30_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(d=mutations())
def test_a_mutated_sweep_file_is_accepted_or_refused_in_one_line(tmp_path, d):
    check(tmp_path, d)


@pytest.mark.parametrize("change", [
    {"axes": {"log2_lr": {"start": -9, "stop": math.inf, "step": 1}}},
    {"axes": {"lr": [math.inf]}},
    {"axes": {"log2_lr": [math.nan]}},
    {"axes": {"log2_lr": [2000]}},
    {"axes": {"log2_lr": {"start": 0, "stop": 10, "step": 1e-7}}},
    {"data_options": {"max_bytes": 200_000, "bogus": 1}},
    {"storage": "/proc/nope/x.journal"},
    {"storage": "/tmp"},
    {"runs_dir": "/proc/nope"},
    {"runs_dir": "/dev/null"},
    {"name": "x" * 300},
    {"train": {**VALID["train"], "depth": 1_000_000_000}},
    {"train": {**VALID["train"], "device": "cuda:7"}},
    {"train": {**VALID["train"], "device": "tpu"}},
    {"train": {**VALID["train"], "lr": math.inf}},
    {"train": {**VALID["train"], "steps": True}},
    {"train": {**VALID["train"], "roles": {"*": "bogus"}}},
    {"base": {"width": 1_000_000_000, "depth": 1}},
    {"base": {"width": 12, "depth": 1}},               # head_dim 8 does not divide 12
    {"model_options": {"head_dim": 8, "seq_len": 8}},  # shorter than the training seq_len 16
    {"model_options": {"head_dim": 8, "vocab": 10}},   # smaller than the data's vocabulary
    pytest.param({"executor": {"kind": "ray"}}, marks=pytest.mark.skipif(
        importlib.util.find_spec("ray") is not None, reason="Ray is installed here: the ray executor is legitimate")),
])
def test_what_the_fuzzer_found_is_refused_in_one_line(tmp_path, change):
    d = {**copy.deepcopy(VALID), **change}
    assert check(tmp_path, d) == 2


def test_a_legitimate_edge_is_accepted(tmp_path):
    # a base width of 24 with head_dim 8 builds (3 heads): nothing wrong with it
    assert check(tmp_path, {**copy.deepcopy(VALID), "base": {"width": 24, "depth": 1}}) == 0


def test_a_non_utf8_or_binary_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: x\nmodel: \xff\xfe\n")
    res = CliRunner().invoke(app, ["sweep", str(path), "--check"])
    assert res.exit_code == 2 and str(path) in res.output and "UTF-8" in res.output
    path.write_text("name: !!binary aGVsbG8=\n")
    res = CliRunner().invoke(app, ["sweep", str(path), "--check"])
    assert res.exit_code == 2 and "binary" in res.output

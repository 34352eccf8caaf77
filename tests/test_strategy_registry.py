"""Sweep strategies are one registry: the documented kinds, and a new kind added by one class (here, in this file)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from optuna.trial import TrialState

from proxytune.sweep import Sweep, SweepConfigError
from proxytune.sweep.space import grid_points
from proxytune.sweep.strategy import STRATEGIES, GridStrategy, register, strategy_of
from proxytune.sweep.worker import SAMPLED

DOCUMENTED = ["grid", "list", "random", "tpe", "halving", "tpe-halving", "hyperband", "telescoping"]
KNOWN = "Input should be 'grid', 'list', 'random', 'tpe', 'halving', 'tpe-halving', 'hyperband' or 'telescoping'"


class ReverseGrid(GridStrategy):
    """The toy strategy, and the whole of it: the grid's points, last first, with no refinement pass."""

    name = "reverse-grid"

    def initial_points(self, cfg, store):
        return grid_points(cfg.axes)[::-1]

    def refines(self, cfg):
        return False


@pytest.fixture
def reverse_grid():
    register(ReverseGrid)
    yield ReverseGrid
    STRATEGIES.pop(ReverseGrid.name)


def sweep_dict(tmp_path: Path, kind: str) -> dict:
    """A sweep of a tiny function program (no torch), run in this process (the registry is this process's)."""
    (tmp_path / "strategy_toy_prog.py").write_text(textwrap.dedent("""
        import math

        def run(trial):
            return (math.log2(trial.params["lr"]) + 7) ** 2 / 10 + 64 / trial.width
    """))
    return {"name": "toy", "program": {"function": "strategy_toy_prog:run", "cwd": str(tmp_path)},
            "base": {"width": 32, "depth": 2}, "axes": {"width": [32], "log2_lr": [-9, -8, -7, -6, -5]},
            "strategy": {"kind": kind}, "executor": {"kind": "inline"}, "runs_dir": str(tmp_path / "runs")}


def test_the_registry_holds_the_documented_strategies():
    assert list(STRATEGIES) == DOCUMENTED
    assert all(STRATEGIES[name].name == name for name in DOCUMENTED)
    assert SAMPLED == ("random", "tpe", "halving", "tpe-halving", "hyperband")
    assert [name for name in DOCUMENTED if STRATEGIES[name].samples] == list(SAMPLED)


def test_an_unknown_kind_is_refused_with_the_registered_names(tmp_path):
    with pytest.raises(SweepConfigError, match=f"strategy.kind: {KNOWN}$"):
        Sweep.from_dict(sweep_dict(tmp_path, "reverse-grid"))


def test_a_strategy_added_by_one_class_runs_its_points_in_its_order(tmp_path, reverse_grid):
    sweep = Sweep.from_dict(sweep_dict(tmp_path, "reverse-grid"))
    assert isinstance(strategy_of(sweep.cfg), ReverseGrid)
    assert sweep.run()["complete"] == 5
    trials = sorted(sweep.store().trials((TrialState.COMPLETE,)), key=lambda t: t.datetime_start)
    assert [t.user_attrs["point"]["log2_lr"] for t in trials] == [-5, -6, -7, -8, -9]
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert {r["stage"] for r in sweep.records()} == {0}  # no second pass: it does not refine


def test_a_registered_kind_is_named_in_the_message_until_it_is_removed(tmp_path, reverse_grid):
    with pytest.raises(SweepConfigError, match="'hyperband', 'telescoping' or 'reverse-grid'"):
        Sweep.from_dict(sweep_dict(tmp_path, "reverse"))
    d = sweep_dict(tmp_path, "reverse-grid")
    d["axes"]["log2_lr"] = {"low": -9, "high": -5}  # the grid's own checks come with the class it extends
    with pytest.raises(SweepConfigError, match="strategy reverse-grid needs a list or"):
        Sweep.from_dict(d)

"""Sampled strategies (random, TPE, halving) run n_trials distinct points, however often the sampler repeats
itself, and a rerun after a stop carries on to n_trials; a space smaller than n_trials is said and run whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxytune.sweep import Sweep
from proxytune.sweep.space import point_key, sampled_budget, space_size, unvisited_points

PROGRAM = """
import math

def run(trial):
    p = trial.point
    return 1.0 + (p["log2_lr"] + 7) ** 2 / 10 + 0.01 * p.get("seed", 0)
"""


def sampled(tmp_path: Path, name: str, axes: dict, n_trials: int, kind: str = "random", **over) -> dict:
    (tmp_path / "bowl.py").write_text(PROGRAM)
    d = {"name": name, "program": {"function": "bowl:run", "cwd": str(tmp_path)}, "axes": axes,
         "strategy": {"kind": kind, "n_trials": n_trials, **({"min_resource": 1} if kind == "halving" else {})},
         "executor": {"kind": "inline", "batch": 1}, "runs_dir": str(tmp_path / "runs")}
    d.update(over)
    return d


def distinct_done(sw: Sweep) -> int:
    return len({point_key({k: r[k] for k in sw.cfg.axes}) for r in sw.records()
                if r["status"] in ("complete", "pruned", "diverged", "failed")})


@pytest.mark.parametrize("kind", ["random", "tpe", "halving"])
def test_a_small_space_still_runs_n_trials_distinct_points(tmp_path, kind):
    """14 distinct points, 12 trials asked: 12 distinct points run (before: 4, the first repeat ended it)."""
    axes = {"log2_lr": [-9, -8, -7, -6, -5, -4, -3], "seed": [0, 1]}
    sw = Sweep.from_dict(sampled(tmp_path, kind, axes, 12, kind))
    sw.run()
    assert distinct_done(sw) == 12
    assert sw.run()["complete"] + sw.store().counts()["pruned"] >= 12  # a rerun adds nothing: the budget is spent
    assert distinct_done(sw) == 12


def test_a_space_smaller_than_n_trials_is_said_and_run_whole(tmp_path):
    axes = {"log2_lr": [-9, -8, -7, -6, -5]}
    sw = Sweep.from_dict(sampled(tmp_path, "small", axes, 10, "tpe"))
    with pytest.warns(UserWarning, match=r"5 distinct point\(s\), fewer than strategy.n_trials = 10"):
        counts = sw.run()
    assert counts["complete"] == 5 and distinct_done(sw) == 5


def test_a_rerun_after_a_stop_continues_to_n_trials(tmp_path, monkeypatch):
    """A TPE sweep stopped after 3 trials: the rerun's sampler starts from the same seed, proposes the points
    already run first, and still brings the sweep to n_trials (before, it added none)."""
    import proxytune.sweep.worker as worker

    axes = {"log2_lr": [-9, -8, -7, -6, -5, -4, -3, -2], "seed": [0, 1]}
    sw = Sweep.from_dict(sampled(tmp_path, "rerun", axes, 10, "tpe"))
    real = worker.suggest_point
    calls = []

    def stop_after_three(trial, cfg):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(trial, cfg)

    monkeypatch.setattr(worker, "suggest_point", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        sw.run()
    assert distinct_done(sw) == 3
    monkeypatch.setattr(worker, "suggest_point", real)
    Sweep.open(tmp_path / "runs" / "rerun").run()
    assert distinct_done(sw) == 10


def test_two_workers_with_one_seed_do_not_starve_each_other(tmp_path):
    """Two worker processes built with the same sampler seed: each gets its own stream, and the sweep reaches
    n_trials distinct points."""
    axes = {"log2_lr": [-9, -8, -7, -6, -5, -4, -3, -2], "seed": [0, 1, 2]}
    sw = Sweep.from_dict(sampled(tmp_path, "two", axes, 16, "random", executor={"workers": 2, "batch": 1}))
    sw.run(poll_seconds=0.2)
    assert distinct_done(sw) == 16


def test_space_size_and_unvisited_points():
    from proxytune.sweep.config import SweepConfig

    def cfg(axes: dict) -> SweepConfig:
        return SweepConfig.from_dict({"name": "s", "program": {"function": "m:f", "cwd": "/"}, "axes": axes,
                                      "strategy": {"kind": "random", "n_trials": 50}})

    stepped = cfg({"lr": {"start": 0.1, "stop": 0.5, "step": 0.1}, "seed": [0, 0, 1]})
    assert space_size(stepped) == 10 and sampled_budget(stepped) == 10
    assert space_size(cfg({"lr": {"low": 0.1, "high": 0.5}, "seed": [0, 1]})) is None
    # a sampler's 0.30000000000000004 is the grid's 0.3
    visited = {point_key({"lr": 0.1 + 0.2, "seed": 0})}
    left = unvisited_points(stepped, visited)
    assert {"lr": 0.3, "seed": 0} not in left and {"lr": 0.3, "seed": 1} in left


def test_of_two_trials_that_pass_the_budget_check_at_once_only_the_later_steps_aside(tmp_path):
    """Two workers each see one point left, ask and register: by trial number, the later one is surplus, and
    an ask whose point is not recorded yet holds its place."""
    from proxytune.sweep.worker import _beyond_budget, open_store, visited_points

    axes = {"log2_lr": [-9, -8, -7, -6]}
    sw = Sweep.from_dict(sampled(tmp_path, "race", axes, 2))
    store = sw.prepare()
    first, second = store.study.ask(), store.study.ask()
    assert store.register(first._trial_id, {"log2_lr": -9})
    assert not _beyond_budget(store, sw.cfg, first.number)
    third, fourth = store.study.ask(), store.study.ask()  # two asks at once for the last point of the budget
    assert store.register(fourth._trial_id, {"log2_lr": -7})
    assert _beyond_budget(store, sw.cfg, fourth.number)  # `third` (and `second`) are in flight before it
    store.step_aside(fourth._trial_id, "surplus")
    assert store.register(third._trial_id, {"log2_lr": -8})
    # `second` is still in flight before `third`: it holds the last place until it records a point or is old
    assert _beyond_budget(store, sw.cfg, third.number)
    store.step_aside(second._trial_id, "duplicate")
    assert not _beyond_budget(store, sw.cfg, third.number)
    assert len(visited_points(open_store(sw.cfg))) == 2

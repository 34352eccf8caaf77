"""Issue 30, item 2: every stage of ``tune`` says its cost before it runs (an estimate: its trials not stored yet,
each model counted at its width, depth, steps and batch) and after (its trials' own FLOPs), in FLOPs and as a
fraction of one target run."""

from __future__ import annotations

import re

import pytest

from proxytune.tune.config import TuneConfig
from proxytune.tune.run import Tuner, run_flops


def _tuner(tmp_path, logs: list[str], **over) -> Tuner:
    d = {"name": "c", "model": "gpt", "model_options": {"head_dim": 8}, "data_options": {"max_bytes": 100_000},
         "base": {"width": 8, "depth": 1}, "widths": [16, 32], "recipes": ["mup"],
         "target": {"width": 64, "tokens": 1e6},
         "train": {"steps": 6, "batch_size": 4, "seq_len": 16, "eval_every": 6, "eval_batches": 1},
         "executor": {"kind": "inline", "batch": 1}, "runs_dir": str(tmp_path / "runs"), **over}
    return Tuner(TuneConfig.from_dict(d), log=logs.append)


def _flops(line: str, word: str) -> float:
    return float(re.search(rf"{word} ([0-9.e+]+) FLOPs", line).group(1))


def test_the_estimate_before_a_stage_is_what_its_trials_then_cost(tmp_path):
    logs: list[str] = []
    t = _tuner(tmp_path, logs)
    # two shapes, two step counts, two batches: the estimate scales each trial by its own model and tokens
    pts = [{"log2_lr": -6.0, "seed": 0, "width": 8, "steps": 6, "batch_size": 4},
           {"log2_lr": -5.0, "seed": 0, "width": 16, "steps": 3, "batch_size": 8}]
    recs = t._run(t._sweep("x", "mup", points=pts), "probe")
    spent = sum(r["flops"] for r in recs)
    before, after = logs[0], logs[1]
    assert before.startswith("probe: 2 trials -> ") and _flops(before, "about") == pytest.approx(spent, rel=1e-2)
    assert _flops(after, "probe:") == pytest.approx(spent, rel=1e-2) and after.endswith("spent")
    target = run_flops(t.cfg, 64, 1, 1e6)
    share = float(re.search(r"([0-9.e+-]+)% of one target run", before).group(1))
    assert share == pytest.approx(100 * spent / target, rel=1e-2)
    # run again: every trial is stored, nothing is estimated to train
    t._run(t._sweep("x", "mup", points=pts), "probe")
    assert logs[2].endswith("all 2 trials stored: nothing to train")


def test_without_a_target_the_cost_is_in_flops_only(tmp_path):
    logs: list[str] = []
    t = _tuner(tmp_path, logs, target=None)
    t._run(t._sweep("y", "mup", points=[{"log2_lr": -6.0, "seed": 0}]), "one")
    assert "FLOPs" in logs[0] and "target run" not in logs[0] and "target run" not in logs[1]


def test_a_sampled_stage_is_estimated_at_its_shape(tmp_path):
    logs: list[str] = []
    t = _tuner(tmp_path, logs)
    sweep = t._sweep("s1-tpe", "mup", axes={"log2_lr": {"low": -8, "high": -4}, "seed": [0]},
                     strategy={"kind": "tpe", "n_trials": 3, "seed": 0})
    recs = t._run(sweep, "tpe")
    assert len(recs) == 3
    assert _flops(logs[0], "about") == pytest.approx(sum(r["flops"] for r in recs), rel=1e-2)


def test_a_stage_that_reuses_part_of_a_bigger_stored_sweep_counts_only_its_own_points(tmp_path):
    logs: list[str] = []
    t = _tuner(tmp_path, logs)
    three = [{"log2_lr": x, "seed": 0} for x in (-7.0, -6.0, -5.0)]
    t._run(t._sweep("z", "mup", points=three), "three")
    t._run(t._sweep("z", "mup", points=three[:2]), "two")
    assert logs[2].endswith("all 2 trials stored: nothing to train")
    t._run(t._sweep("z", "mup", points=[*three[:2], {"log2_lr": -4.0, "seed": 0}]), "one new")
    assert "(2 stored trials reused)" in logs[4]


def test_a_stage_with_one_trial_left_trains_it_in_this_process(tmp_path, monkeypatch):
    """Starting worker processes costs more than one small trial (issue 30, item 4): a local executor's stage
    with one trial left runs it inline, at the workers' thread count, and the caller's thread count is put back.
    Two trials left keep the workers; so does a stage whose trials are all stored (nothing to start)."""
    import torch

    from proxytune.sweep import Sweep
    from proxytune.tune.run import _one_trial_inline

    logs: list[str] = []
    t = _tuner(tmp_path, logs, executor={"workers": 2, "threads": 1, "batch": 8})
    one = [{"log2_lr": -6.0, "seed": 0}]
    two = one + [{"log2_lr": -5.0, "seed": 0}]
    runner, threads = _one_trial_inline(t._sweep("z", "mup", points=one))
    assert runner.cfg.executor.kind == "inline" and threads == 1
    runner, threads = _one_trial_inline(t._sweep("z", "mup", points=two))
    assert runner.cfg.executor.kind == "local" and threads is None
    seen: list[int] = []
    real_run = Sweep.run

    def run(self, **kw):  # which executor trains, and at how many threads
        seen.append((self.cfg.executor.kind, torch.get_num_threads()))
        return real_run(self, **kw)

    monkeypatch.setattr(Sweep, "run", run)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        recs = t._run(t._sweep("z", "mup", points=one), "one trial")
        assert seen == [("inline", 1)] and torch.get_num_threads() == 2
        assert recs[0]["status"] == "complete"
        # one of the two is stored now: the other is the one trial left
        t._run(t._sweep("z", "mup", points=two), "one more")
        assert seen[-1] == ("inline", 1)
        assert {r["log2_lr"] for r in t.sweeps["z"].records()} == {-6.0, -5.0}
        runner, _ = _one_trial_inline(t._sweep("z", "mup", points=two))  # both stored: nothing to start
        assert runner.cfg.executor.kind == "local"
    finally:
        torch.set_num_threads(before)

"""The horizon and batch laws (issue 29, item 2) on synthetic LR scans whose answer is known: the fitted exponents
of LR*(D, B), the shift to a held-out (D, B), the optimal batch per horizon and its law, the priors named where
nothing was measured, and the AdamW timescale carried from one horizon to another."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxytune.analysis.horizon import (
    Cell, batch_answer, batch_optima, check_timescale, lr_shift, prior_lr_shift, timescale_wd,
)
from proxytune.analysis.optimum import find_optimum

D0, B0 = 2.0 ** 16, 2.0 ** 10  # tokens, tokens per step


def _cell(d: float, b: float, opt: float, noise: float = 0.002, seed: int = 0, level: float = 3.0) -> Cell:
    rng = np.random.default_rng(seed)
    recs = [{"log2_lr": float(x), "seed": s, "val_loss": level + 0.05 * (x - opt) ** 2 + rng.normal(0, noise)}
            for x in np.arange(round(opt) - 3, round(opt) + 4) for s in (0, 1)]
    return Cell(d, b, find_optimum(recs, "log2_lr", n_boot=100))


def _grid(a: float, b: float, horizons=(1, 2, 4, 8), batches=(1, 2, 4), noise: float = 0.002) -> list[Cell]:
    return [_cell(D0 * h, B0 * k, -8.0 + a * math.log2(h) + b * math.log2(k), noise, seed=int(10 * h + k))
            for h in horizons for k in batches]


def test_the_lr_law_recovers_known_exponents_and_carries_them_to_a_held_out_point():
    cells = _grid(a=-0.4, b=0.5)
    s = lr_shift(cells, (D0, B0), (64 * D0, 16 * B0))
    assert s.exponents["D"][0] == pytest.approx(-0.4, abs=0.05)
    assert s.exponents["B"][0] == pytest.approx(0.5, abs=0.05)
    assert s.exponents["D"][1] <= s.exponents["D"][0] <= s.exponents["D"][2]
    # 6 octaves of tokens at -0.4; the batch only up to the largest measured (4x, 2 octaves at +0.5): the law
    # is not extrapolated past it (near the critical batch the optimal LR stops rising)
    assert s.shift == pytest.approx(-2.4 + 1.0, abs=0.3)
    assert s.interval[0] <= s.shift <= s.interval[1]
    assert s.source.startswith("measured") and s.cells == 12
    assert "not extrapolated past the largest batch measured (4.1e+03 tokens)" in s.source
    # inside the measured batches, and below them, the law is used as fitted
    inside = lr_shift(cells, (D0, B0), (64 * D0, 2 * B0))
    assert inside.shift == pytest.approx(-2.4 + 0.5, abs=0.3) and "not extrapolated" not in inside.source
    below = lr_shift(cells, (D0, B0), (D0, B0 / 4))
    assert below.shift == pytest.approx(-1.0, abs=0.2)
    # a wrong exponent is caught: the same cells cannot give the rule's -0.32 for an exponent of -0.8
    steep = lr_shift(_grid(a=-0.8, b=0.5), (D0, B0), (64 * D0, B0))
    assert steep.exponents["D"][2] < -0.6


def test_the_lr_law_in_tokens_alone_when_the_batch_was_not_varied():
    cells = _grid(a=-0.3, b=0.0, batches=(1,))
    s = lr_shift(cells, (D0, B0), (16 * D0, 8 * B0))
    assert set(s.exponents) == {"D"} and "B not varied, so not moved" in s.source
    assert s.shift == pytest.approx(-1.2, abs=0.25)
    with pytest.raises(ValueError, match="needs 3 or more cells"):
        lr_shift(cells[:2], (D0, B0), (16 * D0, B0))


def test_the_prior_is_named_and_not_measured():
    p = prior_lr_shift((D0, B0), (16 * D0, 4 * B0), "adamw")
    assert p.shift == pytest.approx(-0.32 * 4 + 0.5 * 2)
    assert p.source.startswith("not measured") and "Bjorck" in p.source and "square-root" in p.source
    assert prior_lr_shift((D0, B0), (D0, 4 * B0), "sgd").shift == pytest.approx(2.0)


def _batch_cells(best_log2b_by_h: dict[int, float], batches=(1, 2, 4, 8, 16, 32)) -> list[Cell]:
    cells = []
    for h, best in best_log2b_by_h.items():
        for k in batches:
            level = 3.0 + 0.02 * (math.log2(B0 * k) - best) ** 2
            cells.append(_cell(D0 * h, B0 * k, -8.0, seed=h * 100 + k, level=level))
    return cells


def test_the_optimal_batch_per_horizon_and_its_law():
    # B_opt doubles when D quadruples: beta = 0.5
    truth = {1: math.log2(B0) + 1.5, 4: math.log2(B0) + 2.5, 16: math.log2(B0) + 3.5}
    opts = batch_optima(_batch_cells(truth))
    assert [o.edge for o in opts] == [None, None, None]
    for o, best in zip(opts, truth.values()):
        assert math.log2(o.value) == pytest.approx(best, abs=0.25)
        assert o.interval[0] <= o.value <= o.interval[1]
    ans = batch_answer(opts, target_tokens=D0 * 256, proxy_tokens=D0, proxy_batch=B0)
    assert ans.measured and ans.source.startswith("measured: B_opt ∝ D^")
    assert float(ans.source.split("D^")[1].split()[0]) == pytest.approx(0.5, abs=0.05)
    assert math.log2(ans.value) == pytest.approx(math.log2(B0) + 1.5 + 0.5 * 8, abs=0.4)


def test_a_batch_optimum_on_the_edge_falls_back_to_the_named_prior():
    truth = {1: math.log2(B0) - 2, 4: math.log2(B0) - 2}  # smaller than every batch tried
    opts = batch_optima(_batch_cells(truth))
    assert all(o.edge == "low" and o.value is None for o in opts)
    ans = batch_answer(opts, target_tokens=1e9, proxy_tokens=D0, proxy_batch=B0)
    assert not ans.measured and "Step Law" in ans.source and "smallest batch tried was the best" in ans.source
    assert ans.value == pytest.approx(0.58 * 1e9 ** 0.571)


def test_the_adamw_timescale_is_carried_and_checked():
    tuned_cell = Cell(D0, B0, None)  # only its sizes are read
    lr, lam = 2.0 ** -8, 2.0 ** -3
    tuned = find_optimum([{"log2_weight_decay": x, "seed": s, "val_loss": 3 + 0.01 * (x + 3) ** 2 + 1e-4 * s}
                          for x in range(-7, 2) for s in (0, 1)], "log2_weight_decay", n_boot=100)
    tau = B0 / (lr * lam * D0)
    # 8x the tokens at half the LR: the timescale keeps lr x wd x D / B, so wd goes down 4x: log2 -5
    carried = timescale_wd(tau, lr / 2, B0, 8 * D0)
    assert carried == pytest.approx(-5.0)
    check_cell = Cell(8 * D0, B0, None)
    measured = find_optimum([{"log2_weight_decay": x, "seed": s, "val_loss": 3 + 0.01 * (x + 5) ** 2 + 1e-4 * s}
                             for x in range(-9, 0) for s in (0, 1)], "log2_weight_decay", n_boot=100)
    out = check_timescale(tuned, tuned_cell, lr, measured, check_cell, lr / 2)
    assert out.tau == pytest.approx(tau, rel=0.05)
    assert out.carried == pytest.approx(-5.0, abs=0.1)
    assert "is inside the measured optimum's interval" in out.verdict and "unchanged wd (log2 -3.00) is outside" in out.verdict


# ------------------------------------------------------------------ the stage inside tune, on a synthetic loss
import json  # noqa: E402

from proxytune.tune.config import TuneConfig, TuneConfigError  # noqa: E402
from proxytune.tune.horizon import run_horizon_stage, target_settings, wants_horizon  # noqa: E402
from proxytune.tune.run import Tuner  # noqa: E402

SEQ, STEPS, BS = 16, 8, 4
REF_D, REF_B = STEPS * BS * SEQ, BS * SEQ
A_D, A_B, WD_TAU = -0.5, 0.5, 64.0  # the known answer: lr* ∝ D^-0.5 B^0.5, and the optimal AdamW timescale


def _cfg(tmp_path, **over) -> TuneConfig:
    d = {"name": "h", "model": "gpt", "model_options": {"head_dim": 8}, "data_options": {"max_bytes": 200_000},
         "base": {"width": 8, "depth": 1}, "widths": [16, 32], "recipes": ["mup"],
         "target": {"width": 128, "tokens": 64 * REF_D, "batch": 4 * BS},
         "horizon": {"horizons": [1, 2, 4], "batches": [1, 2], "weight_decay": {"start": -6, "stop": 2, "step": 1},
                     "min_steps": 2},
         "train": {"steps": STEPS, "batch_size": BS, "seq_len": SEQ, "eval_every": STEPS, "eval_batches": 1,
                   "weight_decay": 0.01},
         "executor": {"kind": "inline", "batch": 8}, "runs_dir": str(tmp_path / "runs")}
    d.update(over)
    return TuneConfig.from_dict(json.loads(json.dumps(d)))


def _loss(p) -> float:
    d, b = p["steps"] * p["batch_size"] * SEQ, p["batch_size"] * SEQ
    opt = -7.0 + A_D * math.log2(d / REF_D) + A_B * math.log2(b / REF_B)
    loss = 3.0 + 0.05 * (p["log2_lr"] - opt) ** 2
    if "log2_weight_decay" in p:  # the best wd keeps B / (lr wd D) at WD_TAU
        best = math.log2(b / (2.0 ** p["log2_lr"] * WD_TAU * d))
        loss += 0.02 * (p["log2_weight_decay"] - best) ** 2
    return loss


def _fake_run(self, sweep, label):
    return [{**p, "status": "complete", "val_loss": _loss(p) + 0.001 * p.get("seed", 0), "trial": i}
            for i, p in enumerate(sweep.cfg.points or [])]


def test_stage_3_measures_the_law_and_the_target_gets_every_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(Tuner, "_run", _fake_run)
    # the power law in D and B (the critical-batch law has its own test below)
    cfg = _cfg(tmp_path, horizon={"horizons": [1, 2, 4], "batches": [1, 2], "min_steps": 2, "noise_scale": False,
                                  "weight_decay": {"start": -6, "stop": 2, "step": 1}})
    assert wants_horizon(cfg)
    tuner = Tuner(cfg, log=lambda m: None)
    stage = run_horizon_stage(tuner, "mup", {"log2_lr": -7.0}, {}, center=-7.0)
    assert len(stage.cells) == 6 and stage.reference == (REF_D, REF_B)
    # every scan was centred by the priors and grown at an edge until the optimum was inside
    assert all(c.optimum.edge is None for c in stage.cells)
    settings, notes = target_settings(cfg, stage, (-7.0, (-7.25, -6.75), "width: the test's"))
    by = {s.name: s for s in settings}
    lr = by["lr"]
    # 64x the tokens at -0.5; the batch (4x) taken at the largest measured, 2x, at +0.5: -3 + 0.5 from -7
    assert math.log2(lr.value) == pytest.approx(-9.5, abs=0.15)
    assert lr.measured and lr.interval[0] <= lr.value <= lr.interval[1]
    law = lr.source.split("the law lr* ∝ ")[1]
    assert float(law.split("D^")[1].split()[0]) == pytest.approx(A_D, abs=0.05)
    assert float(law.split("B^")[1].split()[0]) == pytest.approx(A_B, abs=0.05)
    assert by["batch_tokens"].value == 4 * REF_B
    assert by["batch_tokens"].source == "given: yours, from the tune file (target.batch)"
    assert by["steps"].value == 64 * REF_D / (4 * REF_B)
    # weight decay: tuned at the shortest horizon, its timescale kept at the target: wd = B / (lr tau D)
    wd = by["weight_decay"]
    expect = 4 * REF_B / (lr.value * WD_TAU * 64 * REF_D)
    assert wd.measured and math.log2(wd.value) == pytest.approx(math.log2(expect), abs=0.3)
    assert stage.weight_decay is not None and "carried wd" in stage.weight_decay.verdict
    assert "is inside the measured optimum's interval" in stage.weight_decay.verdict
    assert by["beta2"].value == pytest.approx(0.95 ** 4) and not by["beta2"].measured
    assert by["warmup"].value == pytest.approx(0.125) and "not measured" in by["warmup"].source


def test_without_stage_3_the_published_rules_move_the_lr_and_say_so(tmp_path):
    cfg = _cfg(tmp_path, horizon={"run": False})
    assert not wants_horizon(cfg)
    settings, _ = target_settings(cfg, None, (-7.0, (-7.25, -6.75), "width: the test's"))
    lr = next(s for s in settings if s.name == "lr")
    assert math.log2(lr.value) == pytest.approx(-7.0 - 0.32 * 6 + 0.5 * 2)
    assert not lr.measured and "not measured: the published rules" in lr.source and "Bjorck" in lr.source
    wd = next(s for s in settings if s.name == "weight_decay")
    assert not wd.measured and "not tuned" in wd.source and "timescale" in wd.source
    # the same target as the proxies: nothing moves, no stage is wanted
    same = _cfg(tmp_path, target={"width": 128})
    assert not wants_horizon(same)
    settings, _ = target_settings(same, None, (-7.0, (-7.25, -6.75), "w"))
    assert {s.name: s.value for s in settings}["lr"] == 2.0 ** -7.0


def test_the_target_batch_is_given_once(tmp_path):
    with pytest.raises(TuneConfigError, match="batch .*or batch_tokens"):
        _cfg(tmp_path, target={"width": 128, "batch": 8, "batch_tokens": 128})
    with pytest.raises(TuneConfigError, match="did you mean 'horizons'"):
        _cfg(tmp_path, horizon={"horizon": [1, 2]})


def test_a_stage_without_a_law_falls_back_to_the_named_rules_instead_of_failing(tmp_path):
    """Every cell's optimum on the edge of its scan (a bound, not a value): no law can be fitted; the answer is the
    published rules, marked not measured, with the reason, and nothing raises after the trials were run."""
    from proxytune.analysis.horizon import HorizonStage

    def low_edge(d: float, b: float) -> Cell:  # losses falling toward the scan's low end: the optimum is below it
        recs = [{"log2_lr": float(x), "seed": s, "val_loss": 3.0 + 0.05 * (x + 20) ** 2 + 0.001 * s}
                for x in range(-10, -4) for s in (0, 1)]
        return Cell(d, b, find_optimum(recs, "log2_lr", n_boot=50))

    edge = [low_edge(REF_D * h, REF_B * k) for h in (1, 2, 4) for k in (1, 2)]
    assert all(c.optimum.edge == "low" for c in edge)
    stage = HorizonStage((REF_D, REF_B), tuple(edge), ())
    settings, _ = target_settings(_cfg(tmp_path), stage, (-7.0, (-7.25, -6.75), "w"))
    lr = next(s for s in settings if s.name == "lr")
    assert not lr.measured and "not measured: the published rules" in lr.source
    assert "stage 3 gave no law" in lr.source and "inside their LR scan" in lr.source
    assert math.log2(lr.value) == pytest.approx(-7.0 - 0.32 * 6 + 0.5 * 2)


# ------------------------------------------------------------------ the critical batch (the gradient noise scale)
BN = 4.0 * REF_B  # the synthetic noise scale, tokens: the target's batch (4x) reaches it, its tokens do not move it


def _critical_loss(p) -> float:
    from proxytune.analysis.horizon import batch_lr_factor

    b = p["batch_size"] * SEQ
    opt = -7.0 + A_D * math.log2(p["steps"] / STEPS) + float(batch_lr_factor(b, BN) - batch_lr_factor(REF_B, BN))
    return 3.0 + 0.05 * (p["log2_lr"] - opt) ** 2


def _fake_critical_run(self, sweep, label):
    out = []
    for i, p in enumerate(sweep.cfg.points or []):
        rec = {**p, "status": "complete", "val_loss": _critical_loss(p) + 0.001 * p.get("seed", 0), "trial": i}
        if p.get("noise_scale"):
            rec["noise_scale"] = BN * (1.0 + 0.02 * p.get("seed", 0))
        out.append(rec)
    return out


def test_stage_3_with_the_noise_scale_moves_the_lr_by_the_critical_batch_law(tmp_path, monkeypatch):
    """The cells follow lr* ∝ S^-0.5 x factor(B, Bn): the probes measure Bn, the fit recovers the steps exponent,
    and the target's LR, 4x the batch (at Bn) and 64x the tokens (16x the steps), is the law's, not the power
    law's clamped at the largest batch measured."""
    from proxytune.analysis.horizon import batch_lr_factor

    monkeypatch.setattr(Tuner, "_run", _fake_critical_run)
    cfg = _cfg(tmp_path)
    assert cfg.horizon.noise_scale  # on by default
    stage = run_horizon_stage(Tuner(cfg, log=lambda m: None), "mup", {"log2_lr": -7.0}, {}, center=-7.0)
    assert stage.noise is not None and len(stage.noise.points) == 3 * cfg.horizon.seeds
    assert stage.noise.at(64 * REF_D) == pytest.approx(BN, rel=0.05)
    settings, notes = target_settings(cfg, stage, (-7.0, (-7.25, -6.75), "width: the test's"))
    assert any("the critical batch" in n and "is at it" in n for n in notes)  # the target's batch is 4x = Bn
    lr = next(s for s in settings if s.name == "lr")
    truth = -7.0 + A_D * 4 + float(batch_lr_factor(4 * REF_B, BN) - batch_lr_factor(REF_B, BN))
    assert math.log2(lr.value) == pytest.approx(truth, abs=0.15)
    assert lr.measured and "factor(B, B_noise(D))" in lr.source and "Li et al. 2024" in lr.source
    assert float(lr.source.split("S^")[1].split()[0]) == pytest.approx(A_D, abs=0.05)
    # the old power law, clamped at the largest batch measured, would have said something else here
    assert abs(truth - (-7.0 + A_D * 4 + 0.5 * 1 + A_D * 2)) > 0.3


def test_batch_lr_factor_is_the_square_root_rule_below_the_critical_batch_and_peaks_at_it():
    from proxytune.analysis.horizon import batch_lr_factor

    bn = 1e4
    # well below Bn: +0.5 octave per doubling (Adam), +1 (SGD); a wrong exponent fails these
    assert float(batch_lr_factor(20.0, bn) - batch_lr_factor(10.0, bn)) == pytest.approx(0.5, abs=0.01)
    assert float(batch_lr_factor(20.0, bn, "linear") - batch_lr_factor(10.0, bn, "linear")) == pytest.approx(1.0, abs=0.01)
    # Adam's peaks at Bn and falls symmetrically beyond it (in log B); SGD's flattens
    bs = 2.0 ** np.arange(0, 28)
    f = batch_lr_factor(bs, bn)
    assert bs[int(np.argmax(f))] == pytest.approx(bn, rel=0.5)
    assert float(batch_lr_factor(bn * 8, bn)) == pytest.approx(float(batch_lr_factor(bn / 8, bn)))
    lin = batch_lr_factor(np.asarray([1e6, 2e6]), bn, "linear")
    assert float(lin[1] - lin[0]) == pytest.approx(0.0, abs=0.02)


def test_the_noise_scale_law_over_horizons():
    from proxytune.analysis.horizon import noise_scale_law

    d = [2.0 ** k for k in (14, 15, 16) for _ in (0, 1)]
    law = noise_scale_law([(x, 3.0 * x ** 0.5 * (1.03 if i % 2 else 0.97)) for i, x in enumerate(d)])
    assert law.gamma == pytest.approx(0.5, abs=0.02)
    assert law.at(2.0 ** 20) == pytest.approx(3.0 * 2.0 ** 10, rel=0.05)
    draws = law.draws([2.0 ** 20], 2000, np.random.default_rng(0))
    assert np.percentile(draws, 5) < 10 + math.log2(3.0) < np.percentile(draws, 95)
    # one horizon: a constant; a probe whose |G|^2 estimate was not positive is dropped and counted
    one = noise_scale_law([(2.0 ** 14, 100.0), (2.0 ** 14, 120.0), (2.0 ** 14, math.inf)])
    assert one.gamma == 0.0 and one.dropped == 1 and 100 < one.at(2.0 ** 30) < 120
    assert "one horizon measured" in one.line()
    assert noise_scale_law([(2.0 ** 14, math.inf)]) is None


def test_lr_shift_with_the_noise_scale_recovers_a_known_law_and_extrapolates_past_the_batches():
    from proxytune.analysis.horizon import NoiseScaleLaw, batch_lr_factor

    bn = 8 * B0
    noise = NoiseScaleLaw(((D0, bn), (8 * D0, bn)), math.log2(bn), 0.0, ((1e-4, 0.0), (0.0, 1e-6)))

    def opt(d, b):
        return -8.0 - 0.3 * math.log2(d / b / (D0 / B0)) + float(batch_lr_factor(b, bn) - batch_lr_factor(B0, bn))

    cells = [_cell(D0 * h, B0 * k, opt(D0 * h, B0 * k), seed=int(10 * h + k)) for h in (1, 2, 4, 8) for k in (1, 2)]
    target = (64 * D0, 32 * B0)  # 4x past the critical batch, 16x past the batches measured
    s = lr_shift(cells, (D0, B0), target, noise=noise)
    assert s.exponents["S"][0] == pytest.approx(-0.3, abs=0.05)
    assert s.shift == pytest.approx(opt(*target) - opt(D0, B0), abs=0.15)
    assert s.interval[0] <= s.shift <= s.interval[1]
    assert "above its critical batch" in s.source and "check: the free law's batch exponent" in s.source

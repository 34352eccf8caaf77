"""proxytune tune: the config, the stage-1 search logic, the recipe race and choice, and a tiny run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import proxytune as pt
from proxytune.analysis.optimum import find_optimum
from proxytune.cli import app
from proxytune.sweep import Sweep, SweepConfig, SweepConfigError
from proxytune.tune import TuneConfig, TuneConfigError, Tuner
from proxytune.tune.report import pick_recommendation
from proxytune.tune.run import constants_of
from proxytune.tune.search import (
    LR_AXIS, finalist_settings, mean_losses, next_center, oat_points, scan_optimum,
)

TINY = {
    "name": "tiny", "model": "gpt", "model_options": {"head_dim": 8}, "data_options": {"max_bytes": 200_000},
    "base": {"width": 8, "depth": 1}, "widths": [16, 32], "target": {"width": 128},
    "train": {"steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 8, "eval_batches": 1},
    "search": {"strategy": "oat", "lr": {"start": -8, "stop": -6, "step": 1}, "multipliers": ["role_init.readout"],
               "rounds": 1,
               "span": 1, "lr_span": 1, "finalists": 1},
    "verify": {"max_extend": 1},
    "executor": {"kind": "inline", "batch": 8},  # worker processes are tested in test_sweep.py
}


def tiny(tmp_path: Path, **over) -> dict:
    d = json.loads(json.dumps(TINY))
    d["runs_dir"] = str(tmp_path / "runs")
    d.update(over)
    return d


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("change, message", [
    ({"serach": {}}, "did you mean 'search'"),
    ({"search": {"multipliers": ["role_lr.embeding"]}}, "did you mean 'embedding'"),
    ({"search": {"multipliers": ["log2_lr"]}}, "search.multipliers"),
    ({"search": {"stratgy": "oat"}}, "did you mean 'strategy'"),
    ({"verify": {"sedes": 2}}, "did you mean 'seeds'"),
    ({"train": {"lr": 0.1}}, "set by tune itself"),
    ({"train": {"stesp": 3}}, "did you mean 'steps'"),
    ({"recipes": ["mupp"]}, "did you mean 'mup'"),
    ({"recipes": ["u-mup", "mup"]}, "tune it alone"),
    ({"widths": [8, 16]}, "larger than the base width"),
    ({"widths": [16]}, "2 or more wider proxies"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(TuneConfigError, match=message):
        TuneConfig.from_dict(tiny(tmp_path, **change))
    assert not (tmp_path / "runs").exists()


def test_defaults_and_candidates(tmp_path):
    cfg = TuneConfig.from_dict({"name": "x"})
    assert cfg.proxy_widths == [64, 128, 256] and cfg.candidates == ["mup", "sp-perlayer"]
    assert cfg.search.strategy == "halving" and cfg.verify.seeds == 2
    deep = TuneConfig.from_dict({"name": "x", "depths": [4, 8]})
    assert deep.candidates == ["mup", "sp-perlayer", "completep"]
    assert TuneConfig.from_dict({"name": "x", "target": {"width": 4096, "depth": 8}}).candidates[-1] == "completep"
    # u-muP's named HPs are tune multipliers like the others
    umup = TuneConfig.from_dict({"name": "x", "recipes": ["u-mup"], "search": {
        "lr": {"start": -4, "stop": 2, "step": 1},
        "multipliers": ["attn_mult", "act_mult", "residual_mult", "residual_attn_ratio", "output_mult"]}})
    assert umup.candidates == ["u-mup"] and len(umup.search.multipliers) == 5


# ------------------------------------------------------------------ stage-1 search logic
def _records(points, loss):
    return [{**p, "status": "complete", "val_loss": loss(p), "trial": i} for i, p in enumerate(points)]


def test_oat_points_scan_one_axis_at_a_time():
    center = {LR_AXIS: -7.0, "role_init.readout": 1.0, "role_lr.embedding": 2.0}
    pts = oat_points(center, ["role_init.readout", "role_lr.embedding"], span=2, step=1, lr_span=2)
    assert pts[0] == {**center, "seed": 0}
    moved = [sum(p[a] != center[a] for a in center) for p in pts]
    assert moved[0] == 0 and all(m == 1 for m in moved[1:])  # one axis at a time
    assert sorted(p["role_lr.embedding"] for p in pts if p["role_lr.embedding"] != 2.0) == [0.5, 1.0, 4.0, 8.0]
    assert 0.0 in {p["role_init.readout"] for p in pts}  # the readout init also tries a zero readout
    assert sorted(p[LR_AXIS] for p in pts if p[LR_AXIS] != -7.0) == [-9.0, -8.0, -6.0, -5.0]
    assert len(pts) == 1 + 4 + 5 + 4 and len({json.dumps(p, sort_keys=True) for p in pts}) == len(pts)


def test_scan_optimum_and_next_center_find_the_minimum_of_each_axis():
    center = {LR_AXIS: -7.0, "role_init.readout": 1.0, "role_lr.embedding": 1.0}
    pts = oat_points(center, ["role_init.readout", "role_lr.embedding"], span=2, step=1, lr_span=2)

    def loss(p):  # optimum at log2 lr -6, readout init x2 (log2 +1), embedding lr x0.5; zero init worse
        ri = p["role_init.readout"]
        readout = 0.3 if ri == 0 else 0.1 * (math.log2(ri) - 1) ** 2
        return 2.0 + 0.1 * (p[LR_AXIS] + 6) ** 2 + readout + 0.1 * (math.log2(p["role_lr.embedding"]) + 1) ** 2

    new, decisions = next_center(center, _records(pts, loss), [LR_AXIS, "role_init.readout", "role_lr.embedding"])
    assert new == {LR_AXIS: -6.0, "role_init.readout": 2.0, "role_lr.embedding": 0.5}
    assert all(d["from"] == center[d["axis"]] for d in decisions)
    # a zero readout init that beats every nonzero value is taken
    zero_best = _records(pts, lambda p: 1.0 if p["role_init.readout"] == 0 else loss(p))
    assert scan_optimum(zero_best, center, "role_init.readout")["value"] == 0.0


def test_finalists_are_the_best_distinct_settings_and_the_control():
    axes = [LR_AXIS, "attn_mult"]
    recs = _records([{LR_AXIS: x, "attn_mult": m, "seed": 0} for x in (-7, -6) for m in (1.0, 2.0, 4.0)],
                    lambda p: 3 - 0.1 * p["attn_mult"] + 0.01 * p[LR_AXIS])
    fin = finalist_settings(recs, axes, 2, defaults={LR_AXIS: -6.0, "attn_mult": 1.0})
    assert fin[0] == {LR_AXIS: -7.0, "attn_mult": 1.0}  # the control: the best setting with every multiplier 1
    assert fin[1:] == [{LR_AXIS: -7.0, "attn_mult": 4.0}, {LR_AXIS: -6.0, "attn_mult": 4.0}]
    stats = mean_losses(recs + [{**recs[2], "seed": 1, "val_loss": recs[2]["val_loss"] + 0.2}], fin[1:2], axes)
    assert stats[0]["seeds"] == 2 and stats[0]["mean"] == pytest.approx(recs[2]["val_loss"] + 0.1)
    assert constants_of({LR_AXIS: -7.0, "attn_mult": 4.0, "role_lr.embedding": 2.0, "role_init.readout": 1.0}) == {
        "attn_mult": 4.0, "role_lr": {"embedding": 2.0}}


# ------------------------------------------------------------------ race and choice
def _optimum(width, loss, opt=-7.0, noise=0.0, seed=0):
    """An Optimum at ``width`` whose best loss is ``loss`` (2 seeds, a parabola around ``opt``)."""
    rows = [{"width": width, "log2_lr": x, "seed": s, "val_loss": loss + 0.05 * (x - opt) ** 2 + (noise * (-1) ** s)}
            for x in (opt - 1, opt - 0.5, opt, opt + 0.5, opt + 1) for s in (0, 1)]
    return find_optimum(rows, "log2_lr", seed=seed)


def _candidate(recipe, losses, widths=(8, 16, 32), noise=0.001, dropped=None):
    from proxytune.analysis.verdict import transfer_verdict

    optima = [_optimum(w, v, noise=noise) for w, v in zip(widths, losses)]
    return {"recipe": recipe, "optima": optima, "dropped": dropped, "lrs": [], "sweep": "",
            "verdict": transfer_verdict(optima, "width")}


def test_the_lowest_loss_at_the_largest_proxy_is_recommended(tmp_path):
    cfg = TuneConfig.from_dict(tiny(tmp_path))
    a, b = _candidate("mup", [3.0, 2.8, 2.6]), _candidate("sp-perlayer", [3.0, 2.8, 2.5])
    choice, why = pick_recommendation([a, b], cfg)
    assert choice is b and "lowest best loss" in why[0] and "sp-perlayer: the optimal log2 lr goes from" in why[1]
    assert "beyond the seed noise" in why[2]
    dropped = _candidate("sp-perlayer", [3.0, 2.9], widths=(8, 16), dropped="behind at width 16")
    choice, why = pick_recommendation([a, dropped], cfg)
    assert choice is a and "dropped out of the race" in why[2]


def _jittered(width, loss, opt=-7.0, noise=0.03, jitter=0.0):
    """An Optimum whose seeds differ by ``noise`` and whose points scatter by up to ``jitter`` (a less pinned
    optimum, so a wider drift interval across widths)."""
    rows = [{"width": width, "log2_lr": x, "seed": s,
             "val_loss": loss + 0.05 * (x - opt) ** 2 + noise * (-1) ** s + jitter * ((k * 7 + s * 3) % 5 - 2) / 2}
            for k, x in enumerate((opt - 1, opt - 0.5, opt, opt + 0.5, opt + 1)) for s in (0, 1)]
    return find_optimum(rows, "log2_lr", seed=0)


def _tied_candidate(recipe, losses, opts=(-7.0, -7.0, -7.0), jitter=0.0):
    from proxytune.analysis.verdict import transfer_verdict

    optima = [_jittered(w, v, o, jitter=jitter) for w, v, o in zip((8, 16, 32), losses, opts)]
    return {"recipe": recipe, "optima": optima, "dropped": None, "lrs": [], "sweep": "",
            "verdict": transfer_verdict(optima, "width")}


def test_a_tie_is_called_a_tie_and_goes_to_the_better_verdict(tmp_path):
    """Losses at the widest proxy within the seed noise: the recommendation says it is a tie, takes the recipe
    whose transfer verdict PASSes over the lower loss that FAILs, and names the runner-up with its numbers."""
    cfg = TuneConfig.from_dict(tiny(tmp_path))
    stays = _tied_candidate("mup", [3.0, 2.8, 2.6])
    drifts = _tied_candidate("sp-perlayer", [3.0, 2.8, 2.59], opts=(-7.0, -7.6, -8.2))
    assert stays["verdict"].state == "PASS" and drifts["verdict"].state == "FAIL"
    choice, why = pick_recommendation([stays, drifts], cfg)
    assert choice is stays
    assert "in a tie at width 32 with sp-perlayer" in why[0] and "PASS vs FAIL" in why[0]
    assert "Runner-up: sp-perlayer (best loss 2.5900 vs 2.6000" in why[0] and "defensible" not in why[0]


def test_a_tie_between_two_passes_goes_to_the_narrower_drift_interval(tmp_path):
    cfg = TuneConfig.from_dict(tiny(tmp_path))
    pinned = _tied_candidate("mup", [3.0, 2.8, 2.6])
    loose = _tied_candidate("sp-perlayer", [3.0, 2.8, 2.595], jitter=0.02)
    assert pinned["verdict"].state == loose["verdict"].state == "PASS"
    choice, why = pick_recommendation([loose, pinned], cfg)
    assert choice is pinned and "its drift interval is narrower" in why[0] and "either is a defensible" in why[0]
    # beyond the noise, the lower loss wins as before, with no tie named
    clear = _tied_candidate("sp-perlayer", [3.0, 2.8, 2.3], jitter=0.02)
    choice, why = pick_recommendation([pinned, clear], cfg)
    assert choice is clear and "lowest best loss" in why[0] and "tie" not in why[0]


def test_race_drops_a_recipe_clearly_behind_before_the_largest_width(tmp_path, monkeypatch):
    cfg = TuneConfig.from_dict(tiny(tmp_path))
    ran: list[tuple[str, tuple]] = []
    loss = {"mup": {8: 3.0, 16: 2.8, 32: 2.6}, "sp-perlayer": {8: 3.0, 16: 3.2, 32: 2.5}}

    def fake_verify(self, recipe, setting, widths, lrs, axis="width", frozen=(), seeds_at=None, trial=None):
        ran.append((recipe, tuple(widths)))
        self.sweeps[f"verify-{recipe}"] = Sweep(SweepConfig.from_dict({"name": "x", "runs_dir": str(tmp_path)}))
        return [_optimum(w, loss[recipe][w]) for w in widths], {w: lrs for w in widths}

    monkeypatch.setattr(Tuner, "_verify", fake_verify)
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    assert ("mup", (8, 16, 32)) in ran and ("sp-perlayer", (8, 16, 32)) not in ran
    sp = next(c for c in out if c["recipe"] == "sp-perlayer")
    assert sp["dropped"] and "above mup's" in sp["dropped"]


def test_stage2_grows_only_the_scan_of_the_width_whose_optimum_is_on_its_edge(tmp_path, monkeypatch):
    """The optimum moves one octave up at width 16 only: that width's scan grows to reach it, the other widths
    keep their 3 learning rates (a grown scan at every width would train the widest proxy for nothing)."""
    trained: list[dict] = []

    def loss(p):
        trained.append(p)
        opt = -6.0 if p["width"] == 16 else -7.0
        return 2.0 + 0.1 * (p[LR_AXIS] - opt) ** 2

    _synthetic(monkeypatch, loss)
    # without the race, so that both recipes scan every width
    cfg = TuneConfig.from_dict(tiny(tmp_path, verify={"max_extend": 2, "race": False}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    for c in out:
        assert c["dropped"] is None
        assert c["lrs"][8] == c["lrs"][32] == [-7.5, -7.0, -6.5]
        assert c["lrs"][16] == [-7.5, -7.0, -6.5, -6.0, -5.5]
        opt = {o.group["width"]: o.value for o in c["optima"]}
        assert opt[16] == pytest.approx(-6.0, abs=0.1) and opt[32] == pytest.approx(-7.0, abs=0.1)
    # the widest proxy never trained outside its own scan
    assert {p[LR_AXIS] for p in trained if p["width"] == 32} == {-7.5, -7.0, -6.5}


def test_stage2_intervals_draw_on_the_noise_of_every_widths_scan(tmp_path, monkeypatch):
    """A 3-point scan on 2 seeds leaves 2 degrees of freedom for its noise; width 8's scan fits its parabola exactly
    here, and on its own noise its interval would be a point. The verification pools the widths' residuals (B5c):
    width 8's optimum rests on the 6 degrees of freedom of all three scans, and its interval has room."""
    def loss(p):
        base = 2.0 + 0.03 * (p[LR_AXIS] + 7.0) ** 2
        if p["width"] == 8:
            return base
        wiggle = {-7.5: 0.01, -7.0: -0.012, -6.5: 0.008}[p[LR_AXIS]] * (-1) ** p["seed"]
        return base + wiggle * (1 + p["width"] / 64)

    _synthetic(monkeypatch, loss)
    cfg = TuneConfig.from_dict(tiny(tmp_path, recipes=["mup"], verify={"max_extend": 0, "race": False}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    optima = {o.group["width"]: o for o in out[0]["optima"]}
    assert sorted(optima) == [8, 16, 32]
    assert optima[8].noise_df == 6 and optima[8].noise > 0.005 and optima[8].width > 0.1
    # the noisiest scan (width 32) keeps its own noise, above the pool's
    assert optima[32].noise_df == 2 and optima[32].noise > optima[8].noise


def test_race_scans_the_largest_width_for_the_leader_only(tmp_path, monkeypatch):
    """Two recipes level at width 16 both reach width 32, but there each trains at one LR first, the
    transferred one (-7); only the lower of the two (mup) gets the 3-LR scan. The other's probe is its loss at the largest proxy, left out of its verdict,
    and the recommendation says so."""
    trained: list[tuple[str, dict]] = []
    opt = {"mup": -7.0, "sp-perlayer": -6.5}
    level = {"mup": 2.0, "sp-perlayer": 2.005}  # within the seed noise (+-0.02) of each other at width 16

    def fake_run(self, sweep, label):
        r = sweep.cfg.recipe
        out = []
        for i, p in enumerate(sweep.cfg.points or []):
            o = opt[r] if p["width"] > 8 else -7.0
            trained.append((r, p))
            out.append({**p, "status": "complete", "trial": i,
                        "val_loss": level[r] + 0.1 * (p[LR_AXIS] - o) ** 2 + 0.02 * (-1) ** p["seed"]})
        return out

    monkeypatch.setattr(Tuner, "_run", fake_run)
    cfg = TuneConfig.from_dict(tiny(tmp_path, verify={"max_extend": 2}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    at32 = {r: sorted({p[LR_AXIS] for rr, p in trained if rr == r and p["width"] == 32}) for r in opt}
    assert at32 == {"mup": [-7.5, -7.0, -6.5], "sp-perlayer": [-7.0]}
    mup, sp = (next(c for c in out if c["recipe"] == r) for r in ("mup", "sp-perlayer"))
    assert mup["probe_only"] is None and sp["probe_only"] == 32 and sp["dropped"] is None
    assert sp["verdict"].sizes == [8, 16] and mup["verdict"].sizes == [8, 16, 32]
    choice, why = pick_recommendation(out, cfg)
    assert choice is mup
    assert any("sp-perlayer: loss 2.0300 at width 32 at its transferred LR" in w for w in why)


def _race_run(trained, level32, opt=None, jitter=0.02):
    """A fake ``Tuner._run``: recipes level at widths 8 and 16 (losses = parabola + seed offset +-``jitter``); at
    width 32 each recipe's level is ``level32[recipe]``. Every trained point is appended to ``trained``."""
    opt = opt or {}

    def fake_run(self, sweep, label):
        r = sweep.cfg.recipe
        out = []
        for i, p in enumerate(sweep.cfg.points or []):
            trained.append((r, p))
            level = level32[r] if p["width"] == 32 else 2.0
            o = opt.get(r, -7.0) if p["width"] > 8 else -7.0
            out.append({**p, "status": "complete", "trial": i,
                        "val_loss": level + 0.1 * (p[LR_AXIS] - o) ** 2 + jitter * (-1) ** p["seed"]})
        return out
    return fake_run


def test_race_probe_clearly_behind_on_its_first_seed_trains_no_second_seed(tmp_path, monkeypatch):
    """At the largest width the probes train seed 0 first. sp-perlayer is 0.3 above mup there, far beyond the
    margin (z x sqrt(2) x the per-run noise at width 16, about 0.066 here): its second seed is not trained, the
    candidate says why, and the recommendation names it. The transferred LR is not a round number: the probe is
    still the scan's centre point, not a fourth LR (its key rounded differently once cost 2 runs at the largest)."""
    trained: list[tuple[str, dict]] = []
    monkeypatch.setattr(Tuner, "_run", _race_run(trained, {"mup": 2.0, "sp-perlayer": 2.3}))
    cfg = TuneConfig.from_dict(tiny(tmp_path, verify={"max_extend": 2}))
    c = -7.0 + 1e-12  # a transferred LR with more digits than the scan keeps
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: c, "role_init.readout": 1.0})
    at32 = {r: sorted({(p[LR_AXIS], p["seed"]) for rr, p in trained if rr == r and p["width"] == 32})
            for r in ("mup", "sp-perlayer")}
    assert at32["sp-perlayer"] == [(-7.0, 0)]
    assert at32["mup"] == [(x, s) for x in (-7.5, -7.0, -6.5) for s in (0, 1)]
    mup, sp = (next(c for c in out if c.recipe == r) for r in ("mup", "sp-perlayer"))
    assert sp.one_seed and "0.3000 above the leader's, beyond the margin 0.06" in sp.one_seed
    assert mup.one_seed is None and sp.probe_only == 32
    choice, why = pick_recommendation(out, cfg)
    assert choice is mup
    assert any(w.startswith("sp-perlayer: loss 2.3200 at width 32 at its transferred LR") and "one seed" in w
               for w in why)


def test_race_probe_within_the_margin_trains_every_seed(tmp_path, monkeypatch):
    """0.05 behind on seed 0, inside the margin (0.066): a second seed could change the leader, so it trains."""
    trained: list[tuple[str, dict]] = []
    monkeypatch.setattr(Tuner, "_run", _race_run(trained, {"mup": 2.0, "sp-perlayer": 2.05}))
    out = Tuner(TuneConfig.from_dict(tiny(tmp_path, verify={"max_extend": 2})), log=lambda m: None).stage2(
        {LR_AXIS: -7.0, "role_init.readout": 1.0})
    assert sorted({p["seed"] for r, p in trained if r == "sp-perlayer" and p["width"] == 32}) == [0, 1]
    assert next(c for c in out if c.recipe == "sp-perlayer")["one_seed"] is None


def _curved_run(trained, curvature, level32=None):
    """A fake ``Tuner._run``: loss = level + curvature x (log2 lr + 7)^2 + 0.02 x (-1)^seed at every width (the
    per-run noise at width 16 is 0.028, the margin 0.066); ``level32`` moves a recipe's level at width 32."""
    def fake_run(self, sweep, label):
        out = []
        for i, p in enumerate(sweep.cfg.points or []):
            trained.append((sweep.cfg.recipe, p))
            level = (level32 or {}).get(sweep.cfg.recipe, 2.0) if p["width"] == 32 else 2.0
            out.append({**p, "status": "complete", "trial": i,
                        "val_loss": level + curvature * (p[LR_AXIS] + 7) ** 2 + 0.02 * (-1) ** p["seed"]})
        return out
    return fake_run


@pytest.mark.parametrize("recipes", [["mup", "sp-perlayer"], ["mup"]])
def test_largest_width_neighbours_clearly_behind_on_their_first_seed_train_no_second(tmp_path, monkeypatch,
                                                                                    recipes):
    """The scan at the largest width: the centre (the transferred LR) trains every seed, its neighbours the first
    seed first. Here they are 0.25 above the centre on seed 0, beyond the margin 0.066 measured at width 16:
    a second seed could not make either the optimum, so none trains. The candidate and the report say which
    points trained one seed, and the verdict still covers every width. With the race (two recipes) and without
    it (one), the same rule."""
    trained: list[tuple[str, dict]] = []
    monkeypatch.setattr(Tuner, "_run", _curved_run(trained, 1.0, {"sp-perlayer": 2.3}))
    cfg = TuneConfig.from_dict(tiny(tmp_path, recipes=recipes, verify={"max_extend": 2, "one_seed_points": True}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    at32 = sorted({(p[LR_AXIS], p["seed"]) for r, p in trained if r == "mup" and p["width"] == 32})
    assert at32 == [(-7.5, 0), (-7.0, 0), (-7.0, 1), (-6.5, 0)]
    at16 = sorted({(p[LR_AXIS], p["seed"]) for r, p in trained if r == "mup" and p["width"] == 16})
    assert at16 == [(x, s) for x in (-7.5, -7.0, -6.5) for s in (0, 1)]  # below the largest: every seed
    mup = next(c for c in out if c.recipe == "mup")
    assert len(mup.one_seed_points) == 2
    assert all("0.2500 above the scan's best there, beyond the margin 0.06" in w for w in mup.one_seed_points)
    assert mup.verdict.sizes == [8, 16, 32]
    o32 = next(o for o in mup.optima if o.group["width"] == 32)
    assert o32.value == pytest.approx(-7.0, abs=0.05) and o32.edge is None
    assert mup.to_dict()["one_seed_points"] == list(mup.one_seed_points)


def test_largest_width_neighbours_within_the_margin_train_every_seed(tmp_path, monkeypatch):
    """0.025 above the centre on seed 0, inside the margin (0.066): the second seed could move the optimum, so
    it trains, and no point is reported as one-seed."""
    trained: list[tuple[str, dict]] = []
    monkeypatch.setattr(Tuner, "_run", _curved_run(trained, 0.1))
    cfg = TuneConfig.from_dict(tiny(tmp_path, recipes=["mup"], verify={"max_extend": 2, "one_seed_points": True}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    at32 = sorted({(p[LR_AXIS], p["seed"]) for r, p in trained if p["width"] == 32})
    assert at32 == [(x, s) for x in (-7.5, -7.0, -6.5) for s in (0, 1)]
    assert out[0].one_seed_points == ()


def test_a_point_a_scan_gains_on_its_edge_trains_its_first_seed_first(tmp_path, monkeypatch):
    """At width 16 the optimum sits at -6.5, the scan's top edge: the scan gains -6.0, which trains seed 0 first.
    It is 0.25 above the best there on that seed, beyond the margin that width measured (0.066): one seed only.
    The optimum at 16 is then inside its scan at -6.5."""
    trained: list[tuple[str, dict]] = []

    def fake_run(self, sweep, label):
        out = []
        for i, p in enumerate(sweep.cfg.points or []):
            trained.append((sweep.cfg.recipe, p))
            o = -6.5 if p["width"] == 16 else -7.0
            out.append({**p, "status": "complete", "trial": i,
                        "val_loss": 2.0 + (p[LR_AXIS] - o) ** 2 + 0.02 * (-1) ** p["seed"]})
        return out

    monkeypatch.setattr(Tuner, "_run", fake_run)
    cfg = TuneConfig.from_dict(tiny(tmp_path, recipes=["mup"], verify={"max_extend": 2, "one_seed_points": True}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    at16 = sorted({(p[LR_AXIS], p["seed"]) for r, p in trained if p["width"] == 16})
    assert at16 == [(-7.5, 0), (-7.5, 1), (-7.0, 0), (-7.0, 1), (-6.5, 0), (-6.5, 1), (-6.0, 0)]
    # off (the default): the same scan trains every seed at every point
    trained.clear()
    cfg = TuneConfig.from_dict(tiny(tmp_path / "off", recipes=["mup"], verify={"max_extend": 2}))
    assert Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})[0].one_seed_points == ()
    assert (-6.0, 1) in {(p[LR_AXIS], p["seed"]) for r, p in trained if p["width"] == 16}
    assert any(w.startswith("width 16, log2 lr -6:") for w in out[0].one_seed_points)
    o16 = next(o for o in out[0].optima if o.group["width"] == 16)
    assert o16.edge is None and o16.value == pytest.approx(-6.5, abs=0.05)


def test_one_verification_seed_puts_nothing_on_trial(tmp_path, monkeypatch):
    """With one seed there is no second to save: every point trains once, nothing is called one-seed."""
    trained: list[tuple[str, dict]] = []
    monkeypatch.setattr(Tuner, "_run", _curved_run(trained, 1.0))
    cfg = TuneConfig.from_dict(tiny(tmp_path, recipes=["mup"], verify={"seeds": 1, "max_extend": 2,
                                                                      "one_seed_points": True}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    assert sorted({(p[LR_AXIS], p["seed"]) for r, p in trained if p["width"] == 32}) == [
        (-7.5, 0), (-7.0, 0), (-6.5, 0)]
    assert out[0].one_seed_points == ()


def test_race_margin_is_z_sqrt2_times_the_per_run_noise():
    from proxytune.tune.run import race_margin

    rows = [{"width": 16, "log2_lr": x, "seed": s, "val_loss": 2 + 0.1 * (x + 7) ** 2 + 0.02 * (-1) ** s}
            for x in (-7.5, -7.0, -6.5) for s in (0, 1)]
    o = find_optimum(rows, "log2_lr")
    margin, noise = race_margin([o, o])
    # no residual (a parabola), seed offsets +-0.02: one run's spread is their std, 0.0283
    assert noise == pytest.approx(0.02 * math.sqrt(2), rel=1e-3)
    assert margin == pytest.approx(1.6449 * math.sqrt(2) * noise, rel=1e-3)
    assert margin == pytest.approx(race_margin([o], confidence=0.9)[0])
    assert race_margin([o], confidence=0.99)[0] > margin
    one = find_optimum([r for r in rows if r["seed"] == 0], "log2_lr")
    assert all(math.isnan(x) for x in race_margin([one]))  # one seed: no noise to judge by, every seed trains


def test_stage_costs_count_the_points_asked_for_not_every_stored_trial():
    from types import SimpleNamespace

    from proxytune.tune.run import asked

    pts = [{"width": 32, LR_AXIS: -7.0, "seed": 0}, {"width": 32, LR_AXIS: -6.5, "seed": 0}]
    recs = [{**p, "status": "complete", "flops": 1.0, "trial": i} for i, p in enumerate(pts)]
    left = {"width": 32, LR_AXIS: -7.0, "seed": 1, "status": "complete", "flops": 1.0, "trial": 9}
    assert asked(SimpleNamespace(cfg=SimpleNamespace(points=pts)), [*recs, left]) == recs
    assert len(asked(SimpleNamespace(cfg=SimpleNamespace(points=None)), [*recs, left])) == 3  # sampled: all
    # a point stored twice (an LR written with more digits by an earlier run) counts once, its finished record
    twice = [{**recs[0], "status": "failed"}, {**recs[0], LR_AXIS: -7.0 + 1e-12, "trial": 5}, recs[1]]
    got = asked(SimpleNamespace(cfg=SimpleNamespace(points=pts)), twice)
    assert len(got) == 2 and got[0]["trial"] == 5


# ------------------------------------------------------------------ list strategy
def test_list_strategy_runs_exactly_its_points(tmp_path):
    pts = [{"log2_lr": -8, "role_init.readout": 0.0, "seed": 0}, {"log2_lr": -7, "role_init.readout": 2.0, "seed": 0}]
    d = {"name": "l", "model": "gpt", "model_options": {"head_dim": 8}, "data_options": {"max_bytes": 200_000},
         "base": {"width": 8, "depth": 1}, "points": pts, "strategy": {"kind": "list"},
         "train": {"width": 8, "depth": 1, "steps": 4, "batch_size": 2, "seq_len": 16, "eval_every": 4,
                   "eval_batches": 1}, "executor": {"workers": 1, "threads": 1, "batch": 4}, "runs_dir": str(tmp_path)}
    sweep = Sweep.from_dict(d)
    assert sweep.cfg.axes == {"log2_lr": [-8, -7], "role_init.readout": [0.0, 2.0], "seed": [0]}
    sweep.run()
    got = sorted((r["log2_lr"], r["role_init.readout"]) for r in sweep.records() if r["status"] == "complete")
    assert got == [(-8, 0.0), (-7, 2.0)]
    with pytest.raises(SweepConfigError, match="must set the same axes"):
        Sweep.from_dict({**d, "points": [pts[0], {"log2_lr": -7, "seed": 0}]})
    with pytest.raises(SweepConfigError, match="points are for strategy 'list'"):
        Sweep.from_dict({**d, "strategy": {"kind": "grid"}})


# ------------------------------------------------------------------ end to end
def test_tiny_tune_end_to_end_resumes_and_refuses_a_changed_config(tmp_path):
    cfg = tiny(tmp_path)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 0, res.output
    assert "Recommended" in res.output and "Cost" in res.output
    run_dir = tmp_path / "runs" / "tiny"
    result = json.loads((run_dir / "tune.json").read_text())
    assert result["recipe"] in ("mup", "sp-perlayer")
    assert math.isfinite(result["log2_lr"]) and result["lr"] == pytest.approx(2 ** result["log2_lr"])
    assert {c["recipe"] for c in result["candidates"]} == {"mup", "sp-perlayer"}
    assert result["cost"]["flops"] > 0 and result["cost"]["vs_target_run"] > 0
    assert result["prediction"]["width"] == 128 and math.isfinite(result["prediction"]["lr"])
    report = (run_dir / "report.md").read_text()
    for part in ("## Recommendation", "## Stage 1", "## Stage 2", "## Cost", "stage1_scans.png"):
        assert part in report
    assert (run_dir / "target-plan.json").is_file() and (run_dir / "stage1_scans.png").is_file()
    # the verify sweeps are ordinary sweeps: the sweep commands work on them
    verify = result["candidates"][0]["sweep"]
    assert runner.invoke(app, ["analyze", verify]).exit_code == 0
    # running it again trains nothing new and gives the same answer
    trials = result["cost"]["trials"]
    again = pt.tune(str(path), log=lambda m: None)
    assert again.cost["trials"] == trials and again.recipe == result["recipe"]
    assert again.log2_lr == pytest.approx(result["log2_lr"])
    # a changed search is refused, naming what changed
    changed = dict(cfg, search={**cfg["search"], "span": 2})
    path.write_text(yaml.safe_dump(changed))
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 2 and "search.span" in res.output


def test_cli_bad_tune_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nwidhts: [64]\n")
    res = CliRunner().invoke(app, ["tune", str(path)])
    assert res.exit_code == 2 and "did you mean 'widths'" in res.output
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output


def test_a_model_that_fails_to_train_stops_tune_with_its_error(tmp_path, monkeypatch):
    pkg = tmp_path / "broken.py"
    pkg.write_text("import torch\n"
                   "from proxytune.models import gpt\n"
                   "def build(width, depth, **options):\n"
                   "    if torch.empty(0).device.type != 'meta':\n"
                   "        raise RuntimeError('this model cannot be built today')\n"
                   "    return gpt.build(width=width, depth=depth, **options)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TuneConfigError, match="this model cannot be built today"):
        pt.tune(tiny(tmp_path, model="broken:build"), log=lambda m: None)


def _synthetic(monkeypatch, loss):
    """Replace training by ``loss(setting)``: each stage's points get their loss without running anything."""
    def fake_run(self, sweep, label):
        pts = sweep.cfg.points or []
        return [{**p, "status": "complete", "val_loss": loss(p) + 0.001 * p.get("seed", 0), "trial": i}
                for i, p in enumerate(pts)]

    monkeypatch.setattr(Tuner, "_run", fake_run)


def test_stage1_finds_a_synthetic_optimum_and_grows_the_final_lr_scan(tmp_path, monkeypatch):
    """On a smooth synthetic loss with its optimum at log2 lr -2 with readout init x4 and embedding lr x2, the
    rounds walk toward it (1 octave of LR per round), the final LR scan grows past its edge to reach it, and
    the finalists beat the defaults."""
    def loss(p):
        return (2.0 + 0.05 * (p[LR_AXIS] + 2) ** 2 + 0.05 * (math.log2(max(p["role_init.readout"], 1e-3)) - 2) ** 2
                + 0.05 * (math.log2(p["role_lr.embedding"]) - 1) ** 2)

    _synthetic(monkeypatch, loss)
    search = {"strategy": "oat", "lr": {"start": -9, "stop": -6, "step": 1}, "rounds": 2, "lr_span": 1,
              "multipliers": ["role_init.readout", "role_lr.embedding"]}
    s1 = Tuner(TuneConfig.from_dict(tiny(tmp_path, search=search)), log=lambda m: None).stage1()
    final = s1["rounds"][-1]
    assert s1["rounds"][1]["center"][LR_AXIS] == pytest.approx(-5.0)  # after round 1: one octave up
    assert final["round"] == "final LR" and final["center"][LR_AXIS] == pytest.approx(-2.0)
    assert final["trials"] == 3 + 2  # -5 -4 -3, then grown by 2 octaves past the edge
    w = s1["winner"]["setting"]
    assert w == {LR_AXIS: -2.0, "role_init.readout": 4.0, "role_lr.embedding": 2.0}
    assert s1["winner"]["mean"] < s1["control"]["mean"] and s1["control"]["setting"]["role_init.readout"] == 1.0
    assert s1["winner"]["seeds"] == 2


def test_stage1_with_tpe(tmp_path):
    search = {"strategy": "tpe", "n_trials": 6, "lr": {"start": -8, "stop": -6, "step": 1},
              "multipliers": ["role_init.readout", "attn_mult"], "finalists": 1}
    tuner = Tuner(TuneConfig.from_dict(tiny(tmp_path, search=search)), log=lambda m: None)
    s1 = tuner.stage1()
    tpe = tuner.sweeps["s1-tpe"].records()
    assert len([r for r in tpe if r["status"] in ("complete", "diverged")]) == 6
    assert all(-3 <= r["log2_role_init.readout"] <= 3 for r in tpe)
    assert s1["strategy"] == "tpe" and s1["trials"] == 3 + 6 + 2 * 2
    assert set(s1["winner"]["setting"]) == {LR_AXIS, "role_init.readout", "attn_mult"}


def test_stage1_with_successive_halving(tmp_path):
    """Issue 30, item 1: TPE's points under successive halving. With 9 steps, factor 3 and 2 rungs, trials report
    at steps 1 and 3 and only the best third of those reaching a rung go on; only full-length trials can be
    finalists, and the stage costs less than its trials at full length would."""
    search = {"strategy": "halving", "n_trials": 12, "lr": {"start": -8, "stop": -6, "step": 1},
              "multipliers": ["role_init.readout", "attn_mult"], "finalists": 2}
    cfg = tiny(tmp_path, search=search, train={**TINY["train"], "steps": 9, "eval_every": 9},
               executor={"kind": "inline", "batch": 1})  # one at a time: each rung sees the trials before it
    logs: list[str] = []
    tuner = Tuner(TuneConfig.from_dict(cfg), log=logs.append)
    s1 = tuner.stage1()
    recs = tuner.sweeps["s1-halving"].records()
    pruned = [r for r in recs if r["status"] == "pruned"]
    full = [r for r in recs if r["status"] in ("complete", "diverged")]
    assert len(pruned) + len(full) == 12 and pruned and full
    assert {r["steps_done"] for r in pruned} <= {1, 3}
    assert "stopped at step 1, 3 of 9 unless in the best 1/3" in " ".join(logs)
    # the stage cost less than 12 full-length trials
    assert sum(r["flops"] for r in recs) < 0.8 * 12 * max(r["flops"] for r in full)
    # the finalists are the control and full-length trials, re-run on fresh seeds
    kept = {tuple(round(r[a], 6) for a in (LR_AXIS, "log2_role_init.readout", "log2_attn_mult")) for r in full}
    for f in s1.finalists[1:]:
        st = f.setting
        assert (round(st[LR_AXIS], 6), round(math.log2(st["role_init.readout"]), 6),
                round(math.log2(st["attn_mult"]), 6)) in kept
    assert s1.strategy == "halving"


def test_halving_starts_as_many_trials_as_tpe_trains_by_default(tmp_path, monkeypatch):
    """B1b: twice the trials cost 0.97x tpe's FLOPs and picked no better; as many cost 0.59x and picked as well."""
    asked: dict[str, int] = {}

    def fake_run(self, sweep, label):
        asked[sweep.cfg.name.rsplit("-", 1)[-1]] = sweep.cfg.strategy.n_trials
        return []

    monkeypatch.setattr(Tuner, "_run", fake_run)
    for strategy in ("tpe", "halving"):
        tuner = Tuner(TuneConfig.from_dict(tiny(tmp_path, search={**TINY["search"], "strategy": strategy})),
                      log=lambda m: None)
        tuner._tpe("mup", {LR_AXIS: -7.0}, halving=strategy == "halving")
    assert asked["tpe"] == asked["halving"] == tuner.oat_budget()


# ------------------------------------------------------------------ multipliers that cannot apply, failing stages
_NO_ATTENTION = '''
import torch
from torch import nn


class LM(nn.Module):
    """A language model with no attention at all: an attention multiplier has nothing to apply to."""

    def __init__(self, width, depth, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
                                    for _ in range(depth))
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.blocks:
            x = x + block(x)
        return self.lm_head(x)


def build(width, depth, vocab=256, seq_len=64, device=None):
    with torch.device(device or "cpu"):
        return LM(width, depth, vocab)
'''


def _no_attention(tmp_path, monkeypatch, **over) -> dict:
    (tmp_path / "noattn.py").write_text(_NO_ATTENTION)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tiny(tmp_path, model="noattn:build", model_options={}, **over)


def test_multipliers_that_cannot_apply_are_left_out_of_the_search(tmp_path, monkeypatch):
    """attn_mult on a model without attention: every trial that sets it would fail with a PlanError. It is
    dropped before the search, with the plan's error in a note; the search runs over the rest."""
    search = {**TINY["search"], "multipliers": ["role_init.readout", "attn_mult", "act_mult"]}
    lines = []
    tuner = Tuner(TuneConfig.from_dict(_no_attention(tmp_path, monkeypatch, search=search)), log=lines.append)
    notes = tuner.check_multipliers()
    assert tuner.mults == ["role_init.readout"] and tuner.axes == [LR_AXIS, "role_init.readout"]
    assert len(notes) == 2 and "attn_mult is left out of the search" in notes[0]
    assert "no attention module found" in notes[0] and "act_mult" in notes[1]
    assert [line for line in lines if line.startswith("note: attn_mult")]
    _synthetic(monkeypatch, lambda p: 2.0 + 0.05 * (p[LR_AXIS] + 7) ** 2)
    s1 = tuner.stage1()
    assert set(s1["winner"]["setting"]) == {LR_AXIS, "role_init.readout"}
    # a model with attention keeps it
    gpt = Tuner(TuneConfig.from_dict(tiny(tmp_path, search=search)), log=lambda m: None)
    assert gpt.check_multipliers() == [] and "attn_mult" in gpt.mults


def test_tune_on_a_model_without_attention_prints_progress_and_says_which_lr_is_which(tmp_path, monkeypatch):
    """End to end from the command line, output not a terminal: the note on the dropped multiplier, one plain
    progress line per stage start and per stage's counts, and one learning rate, printed once as what goes to
    plan.optimizer(lr=...), the one the training code sets (issue 29, item 3); predict on a verification sweep
    labels its LR the same way."""
    search = {**TINY["search"], "multipliers": ["role_init.readout", "attn_mult"]}
    cfg = _no_attention(tmp_path, monkeypatch, search=search, recipes=["mup"])
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "note: attn_mult is left out of the search: it cannot apply to this model" in out
    assert "stage 1 · LR scan at the base, every multiplier at 1: 3 trials" in out
    assert "  stage 1 · LR scan at the base, every multiplier at 1: done, 3 of 3 trials finished (3 complete)" in out
    assert [line for line in out.splitlines() if line.startswith("  stage 2 · mup: ") and "trials finished" in line]
    # one learning rate, printed once, labelled as what goes to plan.optimizer(lr=...), and the training code sets it
    assert out.count("lr for plan.optimizer(lr=...)") == 1
    assert "base LR predicted for the target" not in out and "the optimum measured at the base width" not in out
    result = json.loads((tmp_path / "runs" / "tiny" / "tune.json").read_text())
    assert result["lr"] == result["prediction"]["lr"] and result["lr_source"] == result["prediction"]["lr_source"]
    assert f"{result['lr']:.4g}" in out and f"it sets lr = {result['lr']!r}" in out
    assert any("attn_mult" in n for n in result["notes"])
    report = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert "note: attn_mult is left out" in report and report.count("lr for plan.optimizer(lr=...)") == 1
    snippet = Path(result["prediction"]["snippet"]).read_text()
    assert f"lr = {result['lr']!r}  # base LR" in snippet
    assert "this base LR is the LR predicted for this target (width 128" in snippet
    res = runner.invoke(app, ["predict", result["candidates"][0]["sweep"], "--width", "64"])
    assert res.exit_code == 0, res.output
    assert "lr for plan.optimizer(lr=...) of the target's plan:" in res.output and "  from " in res.output
    assert ", lr = " in res.output


def test_a_stage_whose_trials_keep_failing_stops_and_exits_2(tmp_path, monkeypatch):
    """A failure the plan check cannot foresee (here: the check is skipped) fails every TPE trial with one error
    (its sampled value differs in each message). Before, failed trials did not count towards n_trials and the stage
    never ended; now it stops after MAX_SAME_FAILURES in a row with the error in one line, exit code 2."""
    import proxytune.sweep.worker as worker
    from proxytune.tune.run import MAX_SAME_FAILURES

    real, asked = worker.suggest_point, []

    class Runaway(BaseException):
        pass

    def guarded(trial, cfg):  # the old behaviour asked forever: stop it so the test fails instead of hanging
        asked.append(1)
        if len(asked) > 60:
            raise Runaway("the stage never ended")
        return real(trial, cfg)

    monkeypatch.setattr(worker, "suggest_point", guarded)
    monkeypatch.setattr(Tuner, "check_multipliers", lambda self: [])
    search = {"strategy": "tpe", "n_trials": 40, "lr": {"start": -8, "stop": -6, "step": 1},
              "multipliers": ["attn_mult"]}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(_no_attention(tmp_path, monkeypatch, search=search)))
    res = CliRunner().invoke(app, ["tune", str(path)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    assert f"{MAX_SAME_FAILURES} trials in a row failed with the same error" in errors[0]
    assert "no attention module found" in errors[0] and "stage 1 · TPE" in errors[0]
    assert len(asked) <= 8 + MAX_SAME_FAILURES  # one batch of 8 may be under way when the streak is seen


def test_tune_warns_before_spending_when_a_depth_recipe_has_a_shallow_base(tmp_path, monkeypatch):
    """CompleteP from base depth 1 to a deeper target: one warning line before stage 1 starts (stage 1 is
    stopped here: nothing after the warning matters to this test); a deep enough base or muP alone: none."""
    from proxytune.thresholds import THRESHOLDS

    class Stop(Exception):
        pass

    def stop(self):
        raise Stop

    monkeypatch.setattr(Tuner, "stage1", stop)
    monkeypatch.setattr(Tuner, "check_multipliers", lambda self: [])

    def lines_for(**over) -> list[str]:
        lines: list[str] = []
        with pytest.raises(Stop):
            name = f"tiny{len(list(tmp_path.glob('runs/*')))}"  # each config its own run
            Tuner(TuneConfig.from_dict(tiny(tmp_path, name=name, **over)), log=lines.append).run()
        return [line for line in lines if line.startswith("warning:")]

    (w,) = lines_for(recipes=["mup", "completep"], target={"width": 128, "depth": 8})
    assert f"base depth 1 is below {THRESHOLDS.min_base_depth}" in w and "completep" in w
    deep = dict(TINY["base"], depth=THRESHOLDS.min_base_depth)
    assert lines_for(recipes=["completep"], base=deep, target={"width": 128, "depth": 16}) == []
    assert lines_for(recipes=["mup"], target={"width": 128, "depth": 8}) == []
    assert lines_for(recipes=["completep"], target={"width": 128, "depth": 1}) == []


# ------------------------------------------------------------------ the largest width's scan (widest_scan)
def _settled_optima(opts, widths=(8, 16, 32), noise=0.001, edge_at=None):
    out = []
    for w, o in zip(widths, opts):
        xs = (o, o + 0.5, o + 1.0) if w == edge_at else (o - 1, o - 0.5, o, o + 0.5, o + 1)
        rows = [{"width": w, "log2_lr": x, "seed": s, "val_loss": 2.0 + 0.05 * (x - o) ** 2 + noise * (-1) ** s}
                for x in xs for s in (0, 1)]
        out.append(find_optimum(rows, "log2_lr", seed=0))
    return out


def test_widest_settled_needs_three_inner_optima_a_pass_and_the_line_inside_the_scan():
    from proxytune.tune.run import widest_settled

    still = _settled_optima([-7.0, -7.0, -7.0])
    why = widest_settled(still, [8, 16, 32], 64, -7.0, 0.5)
    assert why is not None and "PASS" in why and "half a step inside the scan -7.50 .. -6.50" in why
    # two narrower widths: a line through two points is no evidence of where the third lands
    assert widest_settled(still[1:], [16, 32], 64, -7.0, 0.5) is None
    # the line misses the bracket: the same optima, the scan centred elsewhere or narrower
    assert widest_settled(still, [8, 16, 32], 64, -6.0, 0.5) is None
    # inside the scan but not half a step inside its edge: a 3-point optimum's interval can be too narrow
    assert widest_settled(still, [8, 16, 32], 64, -7.4, 0.5) is None
    assert widest_settled(still, [8, 16, 32], 64, -7.2, 0.5) is not None
    # an optimum on the edge of its scan is not located
    edged = _settled_optima([-7.0, -7.0, -7.0], edge_at=16)
    assert edged[1].edge and widest_settled(edged, [8, 16, 32], 64, -7.0, 0.5) is None
    # a drift the verdict resolves (FAIL): not settled, whatever the line says
    drifting = _settled_optima([-6.0, -7.0, -8.0])
    assert widest_settled(drifting, [8, 16, 32], 64, -9.0, 3.0) is None


def test_widest_settled_carries_the_line_to_the_largest_width_not_the_mean():
    """Optima -7.0, -7.1, -7.2 (a PASS: 0.1 octave per doubling): their mean, -7.1, is inside -7 +- 0.25 / 2, but
    the line puts width 64 at -7.3, outside it: the scan there is still needed."""
    from proxytune.analysis.verdict import transfer_verdict
    from proxytune.tune.run import widest_settled

    slow = _settled_optima([-7.0, -7.1, -7.2])
    assert transfer_verdict(slow, "width").state == "PASS"
    assert widest_settled(slow, [8, 16, 32], 64, -7.0, 0.25) is None
    assert widest_settled(slow, [8, 16, 32], 64, -7.3, 0.25) is not None


def _four_widths(tmp_path, **verify):
    return TuneConfig.from_dict(tiny(tmp_path, widths=[16, 32, 64], verify={"max_extend": 2, **verify}))


def test_race_at_the_largest_width_trains_the_probes_only_when_the_narrower_widths_settle_it(tmp_path, monkeypatch):
    """Widths 8..64, both recipes' optima at -7 everywhere: the narrower widths PASS and put width 64's optimum
    inside the scan, so width 64 trains the transferred LR only, for the leader too; its verdict and the target's
    LR rest on 8..32, and the report says why. With ``widest_scan: always`` the leader scans it as before."""
    trained: list[tuple[str, dict]] = []

    def fake_run(self, sweep, label):
        r = sweep.cfg.recipe
        out = []
        for i, p in enumerate(sweep.cfg.points or []):
            trained.append((r, p))
            level = {"mup": 2.0, "sp-perlayer": 2.01}[r] if p["width"] == 64 else 2.0
            out.append({**p, "status": "complete", "trial": i,
                        "val_loss": level + 0.1 * (p[LR_AXIS] + 7.0) ** 2 + 0.001 * (-1) ** p["seed"]})
        return out

    monkeypatch.setattr(Tuner, "_run", fake_run)
    logs: list[str] = []
    out = Tuner(_four_widths(tmp_path), log=logs.append).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    at64 = {r: sorted({p[LR_AXIS] for rr, p in trained if rr == r and p["width"] == 64}) for r in ("mup", "sp-perlayer")}
    assert at64 == {"mup": [-7.0], "sp-perlayer": [-7.0]}
    mup = next(c for c in out if c.recipe == "mup")
    assert mup.probe_only == 64 and mup.widest_settled and "PASS" in mup.widest_settled
    assert mup.verdict.sizes == [8, 16, 32]
    assert any("mup trains its transferred LR only" in m for m in logs)
    choice, why = pick_recommendation(out, _four_widths(tmp_path))
    assert choice.recipe == "mup"
    assert any("mup trained width 64 at its transferred LR only" in w and "PASS" in w for w in why)

    trained.clear()
    out = Tuner(_four_widths(tmp_path / "always", widest_scan="always"), log=lambda m: None).stage2(
        {LR_AXIS: -7.0, "role_init.readout": 1.0})
    at64 = {r: sorted({p[LR_AXIS] for rr, p in trained if rr == r and p["width"] == 64}) for r in ("mup", "sp-perlayer")}
    assert at64 == {"mup": [-7.5, -7.0, -6.5], "sp-perlayer": [-7.0]}
    assert next(c for c in out if c.recipe == "mup").widest_settled is None


def test_a_largest_width_worse_than_the_next_narrower_is_scanned_though_the_line_settles_it(tmp_path, monkeypatch):
    """The narrower widths PASS and their line sits inside the scan, but both probes at width 64 are 0.3 above
    width 32's best loss (far beyond the seed noise): wider should not be worse, so the leader's scan trains."""
    trained: list[tuple[str, dict]] = []
    monkeypatch.setattr(Tuner, "_run", _race_run(trained, {"mup": 2.0, "sp-perlayer": 2.0}, jitter=0.001))

    def worse_at_64(self, sweep, label, inner=Tuner._run):
        return [{**r, "val_loss": r["val_loss"] + 0.3} if r["width"] == 64 else r for r in inner(self, sweep, label)]

    monkeypatch.setattr(Tuner, "_run", worse_at_64)
    out = Tuner(_four_widths(tmp_path), log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    led = [c for c in out if c.probe_only is None]
    assert len(led) == 1 and led[0].widest_settled is None
    assert sorted({p[LR_AXIS] for r, p in trained if r == led[0].recipe and p["width"] == 64}) == [-7.5, -7.0, -6.5]


def test_one_recipe_scans_the_largest_width_when_the_narrower_widths_drift(tmp_path, monkeypatch):
    """One candidate, no race: optima -7 at 8, -7.5 at 16, -8 at 32 (a resolved drift): width 64 gets its full scan
    (grown on the edge the drift reaches). With the optima still, the scan is its centre only."""
    trained: list[dict] = []

    def drift(p):
        trained.append(p)
        o = {8: -7.0, 16: -7.5, 32: -8.0, 64: -8.5}[p["width"]]
        return 2.0 + 0.1 * (p[LR_AXIS] - o) ** 2

    _synthetic(monkeypatch, drift)
    cfg = TuneConfig.from_dict(tiny(tmp_path, widths=[16, 32, 64], recipes=["mup"], verify={"max_extend": 3}))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    assert out[0].widest_settled is None and out[0].probe_only is None
    assert {p[LR_AXIS] for p in trained if p["width"] == 64} >= {-7.5, -7.0, -6.5, -8.0}

    trained.clear()
    _synthetic(monkeypatch, lambda p: trained.append(p) or 2.0 + 0.1 * (p[LR_AXIS] + 7.0) ** 2)
    cfg = TuneConfig.from_dict(tiny(tmp_path / "b", widths=[16, 32, 64], recipes=["mup"]))
    out = Tuner(cfg, log=lambda m: None).stage2({LR_AXIS: -7.0, "role_init.readout": 1.0})
    assert {p[LR_AXIS] for p in trained if p["width"] == 64} == {-7.0}
    assert out[0].widest_settled and out[0].probe_only == 64 and out[0].verdict.sizes == [8, 16, 32]

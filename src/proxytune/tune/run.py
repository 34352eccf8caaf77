"""``proxytune tune``: the settings to train the big model with, found and verified on proxies.

Stage 1, at the base shape (the smallest proxy), once for every candidate
recipe (they all coincide there: base identity): an LR grid with every named
multiplier at 1, then the search (:mod:`proxytune.tune.search`: rounds of
one-at-a-time scans, or TPE), then the best settings re-run on fresh seeds,
the defaults among them as the control.

Stage 2, per candidate recipe: the winner's constants at every wider proxy,
with a short LR scan around the LR found at the base (the transferred
optimum), 2 seeds. A width whose optimum sits on the edge of its scan grows
that scan by a step (that width's only). The
recipes race: one clearly behind the leader (beyond the seed noise) at the
second-largest width does not run at the largest; the others run there at the
transferred LR (the first seed first: one clearly behind on it, beyond
:func:`race_margin`, trains no other seed), and only the lowest of them gets
the full LR scan at the largest width, unless the narrower widths already
place the optimum there inside that scan (:func:`widest_settled`,
``verify.widest_scan``).

Then: the recipe with the best loss at the largest proxy, its transfer
verdict, the base LR and loss predicted for the target (the sweep's laws,
with intervals), the per-tensor plan and training code, the cost, and a
report.

Every stage is a sweep under ``runs_dir/name/``, so a stopped run continues
where it was: the next points are derived again from the stored trials.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import yaml

from ..analysis.carry import carry_lr
from ..analysis.optimum import Optimum, optima_by_group
from ..analysis.horizon import HorizonStage, TargetSetting
from ..analysis.predict import predict_from_sweep, target_plan, trust_warnings
from ..analysis.prediction import HPEstimate
from ..analysis.verdict import loss_gap, lsq_slope, optimum_draws, transfer_verdict
from ..builders import build_model, load_builder
from ..errors import PlanError
from ..optimum_fit import RECORD_META
from ..plan import parameterize
from ..rules.recipes import get_optimizer
from ..sweep import Sweep, SweepConfig
from ..sweep.config import apply_point, base_config
from ..sweep.errors import RepeatedFailure, SweepConfigError
from ..sweep.store import _diff
from ..thresholds import THRESHOLDS, shallow_base_warning
from ..train.config import TrainConfig, default_eps
from ..train.setup import _builder_options, build_models, flops_per_step, load_data, loss_function
from .config import TuneConfig, TuneConfigError
from .horizon import run_horizon_stage, target_settings, wants_horizon
from .report import pick_recommendation, write_report
from .results import Candidate, Finalist, Round, Stage1Result, TargetPrediction, TuneCost, TuneResult
from .search import (
    LR_AXIS, default_setting, finalist_settings, lr_scan_points, mean_losses, next_center, oat_points, with_seed,
)

CONFIG_FILE = "tune.yaml"
RESULT_FILE = "tune.json"
_DONE = ("complete", "diverged")
#: a stage stops when this many of its trials in a row fail with the same error (docs/tuning.md, "When trials fail")
MAX_SAME_FAILURES = 5

# log(message) and on_poll(stage label, counts) for progress output
LogFn = Callable[[str], None]
PollFn = Callable[[str, dict[str, int]], None]


def constants_of(setting: dict[str, float]) -> dict[str, Any]:
    """TrainConfig fields (``role_lr``, ``role_init``, ``output_mult``...) of a setting's multipliers, the
    ones equal to 1 left out."""
    out: dict[str, Any] = {}
    for axis, value in setting.items():
        if axis == LR_AXIS or value == 1.0:
            continue
        if axis.startswith(("role_lr.", "role_init.")):
            f, role = axis.split(".", 1)
            out.setdefault(f, {})[role] = value
        else:
            out[axis] = value
    return out


class Tuner:
    """Runs (or continues) one tuning run; :func:`tune` is the one-call form."""

    def __init__(self, cfg: TuneConfig, log: LogFn = print, on_poll: PollFn | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.on_poll = on_poll
        self.mults = list(cfg.search.multipliers)
        self.axes = [LR_AXIS, *self.mults]
        self.sweeps: dict[str, Sweep] = {}
        self.notes: list[str] = []
        self.costs = StageCosts(cfg)

    # ---------------------------------------------------------------- sweeps
    def _sweep(self, stage: str, recipe: str, *, fixed: dict[str, Any] | None = None,
               points: list[dict[str, Any]] | None = None, axes: dict[str, Any] | None = None,
               strategy: dict[str, Any] | None = None) -> Sweep:
        cfg = self.cfg
        d = {
            "name": f"{cfg.name}-{stage}", "model": cfg.model, "model_options": cfg.model_options,
            "model_structure": cfg.model_structure.model_dump(), "data": cfg.data,
            "data_options": cfg.data_options, "recipe": recipe, "optimizer": cfg.optimizer,
            **({"program": cfg.program.model_dump()} if cfg.program is not None else {}),
            "base": {"width": cfg.base_width, "depth": cfg.base_depth},
            "axes": axes or {}, "points": points,
            # every stage trains at the base shape unless its axes say otherwise
            "train": {"width": cfg.base_width, "depth": cfg.base_depth, **cfg.train, **(fixed or {})},
            "strategy": strategy or {"kind": "list" if points is not None else "grid", "refine": False},
            "executor": cfg.executor.model_dump(), "storage": cfg.storage, "runs_dir": str(cfg.run_dir),
        }
        if cfg.program is not None:
            d["executor"]["batch"] = 1  # a program trains one trial at a time
        sweep = Sweep(SweepConfig.from_dict(d, source=f"tune stage {stage}"))
        self.sweeps[stage] = sweep
        return sweep

    def _run(self, sweep: Sweep, label: str) -> list[dict[str, Any]]:
        n = len(sweep.cfg.points or []) or None
        self.log(f"{label}" + (f": {n} trials" if n else "") + f" -> {sweep.cfg.run_dir}"
                 + self.costs.before(sweep))
        poll = (lambda counts, store: self.on_poll(label, counts)) if self.on_poll else None
        runner, threads = _one_trial_inline(sweep)
        threads_before = torch.get_num_threads()
        try:
            if threads:  # the workers' thread count, so the trial's numbers are the ones a worker gets
                torch.set_num_threads(threads)
            counts = runner.run(on_poll=poll, stop_after_failures=MAX_SAME_FAILURES)
        except RepeatedFailure as exc:
            raise TuneConfigError(f"{label.split(':')[0]} ({sweep.cfg.name}) stopped: {exc}. Fix the cause and run "
                                  f"tune again (finished trials are kept); proxytune status {sweep.cfg.run_dir} "
                                  "lists the trials") from None
        finally:
            if threads:
                torch.set_num_threads(threads_before)
        if self.on_poll is not None:
            self.on_poll(label, counts)  # the final counts (the last poll may have come before the last trial)
        records = sweep.records()
        self.log(f"  {label.split(':')[0]}: {self.costs.after(asked(sweep, records))}")
        failed = [r for r in records if r.get("status") == "failed"]
        if failed and not any(r.get("status") in _DONE for r in records):
            last = (failed[0].get("error") or "").strip().splitlines()
            raise TuneConfigError(f"every trial of {sweep.cfg.name} failed ({len(failed)}); the first error: "
                                  f"{last[-1] if last else 'unknown'}. See proxytune status {sweep.cfg.run_dir}")
        return records

    # ---------------------------------------------------------------- stage 1
    def stage1(self) -> Stage1Result:
        cfg, s = self.cfg, self.cfg.search
        recipe = cfg.candidates[0]
        lr_grid = s.lr.values()
        records: list[dict[str, Any]] = []
        start = default_setting(self.mults, lr_grid[0])
        recs = self._run(self._sweep("s1-lr", recipe, points=[with_seed({**start, LR_AXIS: x}, s.seed) for x in lr_grid]),
                         "stage 1 · LR scan at the base, every multiplier at 1")
        records += recs
        center, (lr_pick,) = next_center(start, recs, [LR_AXIS])
        defaults = dict(center)
        rounds: list[Round] = []
        if s.strategy == "oat":
            records += self._oat(recipe, center, rounds)
        else:
            records += self._tpe(recipe, center, halving=s.strategy == "halving")
        finalists = finalist_settings(records, self.axes, s.finalists, defaults)
        # fresh seeds: the search picked on one seed, so its best look better than they are (winner's curse)
        seeds = list(range(s.seed + 1, s.seed + s.seeds + 1))
        recs = self._run(self._sweep("s1-final", recipe, points=[with_seed(f, k) for f in finalists for k in seeds]),
                         f"stage 1 · {len(finalists)} finalists on {len(seeds)} fresh seeds")
        stats = [Finalist(**st) for st in mean_losses(recs, finalists, self.axes)]
        ok = [st for st in stats if math.isfinite(st.mean)]
        if not ok:
            raise TuneConfigError("every finalist diverged at the base: lower the search.lr grid")
        winner = min(ok, key=lambda st: st.mean)
        return Stage1Result(strategy=s.strategy, lr_scan=lr_pick, defaults=defaults, rounds=tuple(rounds),
                            finalists=tuple(stats), winner=winner, control=stats[0],
                            trials=len(records) + len(recs))

    def _oat(self, recipe: str, center: dict[str, float], rounds: list[Round]) -> list[dict[str, Any]]:
        """The one-at-a-time rounds and the final LR scan; appends each round's decisions to ``rounds``."""
        s = self.cfg.search
        records: list[dict[str, Any]] = []
        for r in range(1, s.rounds + 1):
            pts = oat_points(center, self.mults, span=s.span, step=s.step, lr_span=s.lr_span, seed=s.seed)
            recs = self._run(self._sweep(f"s1-r{r}", recipe, points=pts),
                             f"stage 1 · round {r}: one-at-a-time scans of {len(self.mults)} multipliers and the LR")
            records += recs
            new, decisions = next_center(center, recs, self.axes)
            rounds.append(Round(round=r, center=center, decisions=decisions, trials=len(recs)))
            center = new
        points = lr_scan_points(center, s.lr_span, s.seed)
        for _ in range(3):  # an optimum on the scan's edge: scan 2 more octaves on that side (twice at most)
            recs = self._run(self._sweep("s1-lrf", recipe, points=points), "stage 1 · LR scan at the combined setting")
            new, (lr_final,) = next_center(center, recs, [LR_AXIS])
            scanned = sorted(p[LR_AXIS] for p in points)
            side = -1 if new[LR_AXIS] <= scanned[0] else 1 if new[LR_AXIS] >= scanned[-1] else 0
            if not side or len(points) >= len(lr_scan_points(center, s.lr_span)) + 4:
                break
            end = scanned[0] if side < 0 else scanned[-1]
            points = points + [with_seed({**center, LR_AXIS: round(end + side * k, 10)}, s.seed) for k in (1, 2)]
        rounds.append(Round(round="final LR", center=new, decisions=[lr_final], trials=len(recs)))
        return records + recs

    def _tpe(self, recipe: str, center: dict[str, float], halving: bool = False) -> list[dict[str, Any]]:
        """TPE over log2 lr (+-3 octaves around the LR scan's best) and log2 of every multiplier; with ``halving``,
        as many trials started (default) under successive halving: each is evaluated at the rungs ``steps / f^k`` and
        stopped there unless in the best 1 / f of those that reached the rung (only full-length trials can be
        finalists, and the finalists are re-run at full length on fresh seeds)."""
        s = self.cfg.search
        bounds = {LR_AXIS: {"low": center[LR_AXIS] - 3, "high": center[LR_AXIS] + 3},
                  **{f"log2_{m}": {"low": -s.bound, "high": s.bound} for m in self.mults}}
        if not halving:
            budget = s.n_trials or self.oat_budget()
            sweep = self._sweep("s1-tpe", recipe, axes={**bounds, "seed": [s.seed]},
                                strategy={"kind": "tpe", "n_trials": budget, "seed": 0})
            return self._run(sweep, f"stage 1 · TPE over the LR and {len(self.mults)} multipliers, {budget} trials")
        # as many trials as tpe: in B1b, twice as many cost 0.97x tpe's FLOPs and picked no better (issue 30)
        budget = s.n_trials or self.oat_budget()
        steps = int(self.cfg.train.get("steps", TrainConfig.model_fields["steps"].default))
        first = max(1, steps // s.reduction_factor ** s.rungs)
        rungs = [first * s.reduction_factor ** k for k in range(s.rungs)]
        sweep = self._sweep("s1-halving", recipe, axes={**bounds, "seed": [s.seed]}, fixed={"eval_every": first},
                            strategy={"kind": "tpe-halving", "n_trials": budget, "seed": 0, "min_resource": first,
                                      "reduction_factor": s.reduction_factor})
        with warnings.catch_warnings():
            # the sweep's warning about early cuts favouring large LRs is answered here: the finalists re-run at
            # full length on fresh seeds decide, never a cut trial
            warnings.filterwarnings("ignore", message=".*stops trials early", category=UserWarning)
            return self._run(sweep, f"stage 1 · TPE with successive halving over the LR and {len(self.mults)} "
                                    f"multipliers, {budget} trials, each stopped at step {', '.join(map(str, rungs))}"
                                    f" of {steps} unless in the best 1/{s.reduction_factor} of those that reached it")

    def oat_budget(self) -> int:
        """Trials of the one-at-a-time rounds and final LR scan, for a TPE run of the same size."""
        s = self.cfg.search
        center = default_setting(self.mults, 0.0)
        return s.rounds * len(oat_points(center, self.mults, span=s.span, step=s.step, lr_span=s.lr_span)) + len(
            lr_scan_points(center, s.lr_span))

    # ---------------------------------------------------------------- stage 2
    def _verify(self, recipe: str, setting: dict[str, float], sizes: list[int],
                lrs: dict[int, list[float]] | list[float], axis: str = "width", frozen: tuple[int, ...] = (),
                seeds_at: dict[int, list[int]] | None = None, trial: SeedTrial | None = None,
                ) -> tuple[list[Optimum], dict[int, list[float]]]:
        """Run the LR scan of ``recipe`` at ``sizes`` (widths, or depths with ``axis="depth"``).

        ``lrs`` is the scan per size (or one list for every size; a size not in the dict gets the first
        size's list). Only a size whose optimum sits on an edge of its own scan grows, by one step on that
        side, up to ``max_extend`` times: growing every size's scan for one size's edge would train the
        widest proxies at learning rates nobody needs. A size in ``frozen`` never grows (the race's single-LR
        probe). A size in ``seeds_at`` trains those seeds only (the race's one-seed probe), the others every
        verification seed. With ``verify.one_seed_points``, the points in ``trial`` (and every point a scan gains
        on an edge) train the first seed first and the others only when that seed leaves them in the running
        (:class:`SeedTrial`).
        Returns the optima per size and the final scans."""
        v = self.cfg.verify
        stage = f"verify-{recipe}" + ("" if axis == "width" else "-depth")
        fixed = constants_of(setting)
        default = list(lrs) if isinstance(lrs, list) else list(next(iter(lrs.values())))
        scans = {s: sorted(lrs.get(s, default) if isinstance(lrs, dict) else default) for s in sizes}
        trial = trial or SeedTrial.for_config(v)
        grown = 0
        while True:
            points = [{axis: s, LR_AXIS: x, "seed": k} for s in sizes for x in scans[s]
                      for k in trial.seeds(s, x, (seeds_at or {}).get(s, list(range(v.seeds))))]
            sweep = self._sweep(stage, recipe, fixed=fixed, points=points)
            # the points asked for only: a seed the race did not ask for may be stored from an earlier run
            recs = asked(sweep, self._run(sweep, f"stage 2 · {recipe}: LR scan at {axis} "
                                                 f"{', '.join(map(str, sizes))}"))
            wanted = {(s, round(x, 6)) for s in sizes for x in scans[s]}
            # 3 points on 2 seeds leave 2 degrees of freedom for a scan's noise: pooled over the sizes, its
            # intervals cover (B5c)
            optima = optima_by_group([r for r in recs if r.get(axis) in scans and r.get(LR_AXIS) is not None
                                      and (r[axis], round(float(r[LR_AXIS]), 6)) in wanted], LR_AXIS,
                                     size_axes=[axis], pool_noise=True)
            if trial.judge(recs, optima, axis, self.log):
                continue  # a point stayed in the running on its first seed: its other seeds first
            edges = [(o.group[axis], o.edge) for o in optima if o.edge and o.group[axis] not in frozen]
            if not edges or grown == v.max_extend:
                return optima, scans
            grown += 1
            for s, edge in edges:
                lo, hi = min(scans[s]), max(scans[s])
                x = round(lo - v.step, 10) if edge == "low" else round(hi + v.step, 10)
                scans[s] = sorted([*scans[s], x])
                trial.add(s, x)
                self.log(f"  at {axis} {s} the optimum sits on the {edge} edge of the LR scan: scanning "
                         f"{', '.join(f'{x:g}' for x in scans[s])}")

    def stage2(self, setting: dict[str, float]) -> list[Candidate]:
        """Each candidate recipe's LR scans at the wider proxies (the race among them when several), as
        :class:`Candidate` evidence with its transfer verdicts."""
        cfg, v = self.cfg, self.cfg.verify
        c = setting[LR_AXIS]
        n = int(math.floor(v.span / v.step + 1e-9))
        lrs0 = [round(c + k * v.step, 10) for k in range(-n, n + 1)]
        widths = [cfg.base_width, *cfg.proxy_widths]
        racing = v.race and len(cfg.candidates) > 1
        first = widths[:-1] if len(widths) > 1 else widths
        state: dict[str, dict[str, Any]] = {}
        for recipe in cfg.candidates:
            trial = SeedTrial.for_config(v)
            optima, lrs = self._verify(recipe, setting, first, lrs0, trial=trial)
            state[recipe] = {"recipe": recipe, "optima": optima, "lrs": lrs, "dropped": None, "trial": trial}
        if racing and len(widths) > 1:
            at = widths[-2]
            best = {r: _at(s["optima"], "width", at) for r, s in state.items()}
            ok = {r: o for r, o in best.items() if o is not None and math.isfinite(o.loss)}
            if ok:
                leader = min(ok, key=lambda r: ok[r].loss)
                z = NormalDist().inv_cdf(0.5 + THRESHOLDS.confidence / 2)
                for r, st in state.items():
                    o = ok.get(r)
                    if o is None:
                        st["dropped"] = f"no finite loss at width {at}"
                        continue
                    gap, se = loss_gap(o, ok[leader])
                    if r != leader and math.isfinite(se) and gap > z * se:
                        st["dropped"] = (f"at width {at} its best loss is {gap:.4f} above {leader}'s "
                                         f"(beyond {z:.2f} x its standard error {se:.4f})")
                        self.log(f"  {r} drops out: {st['dropped']}")
        survivors = [r for r, st in state.items() if st["dropped"] is None]
        if racing and len(survivors) > 1:
            self._probe_largest(setting, survivors, state, widths)
        elif len(widths) > 1:
            for r in survivors:  # the largest width: the scan around the transferred optimum, its centre every seed
                st = state[r]
                big, cr = widths[-1], round(c, 10)
                if v.widest_scan == "auto" and len(widths) >= 4:  # the centre first: it may settle the rest
                    st["optima"], st["lrs"] = self._verify(r, setting, widths, {**st["lrs"], big: [cr]},
                                                           frozen=(big,), trial=st["trial"])
                    if self._widest_settled(r, st, widths, cr) is not None:
                        st["probe_only"] = big
                        continue
                self._trial_neighbours(st["trial"], big, lrs0, setting, st["optima"], widths[-2])
                st["optima"], st["lrs"] = self._verify(r, setting, widths,
                                                       {**{w: lrs0 for w in widths}, **st["lrs"], big: lrs0},
                                                       trial=st["trial"])
        out = []
        for r, st in state.items():
            optima = st["optima"]
            # a single-LR probe says nothing about where the optimum is: the verdict leaves it out
            scanned = [o for o in optima if o.group.get("width") != st.get("probe_only")]
            cand = Candidate(recipe=r, sweep=str(self.sweeps[f"verify-{r}"].cfg.run_dir), optima=tuple(optima),
                             lrs=st["lrs"], dropped=st["dropped"], probe_only=st.get("probe_only"),
                             one_seed=st.get("one_seed"), one_seed_points=tuple(st["trial"].behind.values()),
                             widest_settled=st.get("widest_settled"),
                             verdict=transfer_verdict(scanned, "width") if len(scanned) >= 2 else None)
            if cfg.proxy_depths:
                d_optima, _ = self._verify(r, setting, [cfg.base_depth, *cfg.proxy_depths], lrs0, "depth")
                cand = replace(cand, depth_optima=tuple(d_optima),
                               depth_verdict=transfer_verdict(d_optima, "depth") if len(d_optima) >= 2 else None)
            out.append(cand)
        return out

    def _probe_largest(self, setting: dict[str, float], survivors: list[str], state: dict[str, dict[str, Any]],
                       widths: list[int]) -> None:
        """The race at the largest width: every surviving recipe trains there at the transferred LR (the
        base's, which is what the recipe carries to any width); only the lowest loss among them gets the full LR
        scan (and its edge growth). The others keep their probe: their loss at the largest proxy at the LR they
        transfer, compared with the leader's best.

        The probes train the first verification seed first. A recipe whose loss on that seed is above the
        leader's by more than :func:`race_margin` (z x sqrt(2) x the per-run noise measured at the
        second-largest width) is not given the other seeds: at that confidence more seeds could not make it
        lead, so they would not change the decision. The others train every seed and lead on the seed mean."""
        v = self.cfg.verify
        big = widths[-1]
        c = round(setting[LR_AXIS], 10)  # the scan's own rounding: the probe is the scan's centre point
        n = int(math.floor(v.span / v.step + 1e-9))
        scan = [round(c + k * v.step, 10) for k in range(-n, n + 1)]
        first = {big: list(range(min(1, v.seeds)))}
        for r in survivors:
            st = state[r]
            st["optima"], st["lrs"] = self._verify(r, setting, widths, {**st["lrs"], big: [c]}, frozen=(big,),
                                                   seeds_at=first if v.seeds > 1 else None, trial=st["trial"])
        margin, noise = race_margin([o for r in survivors for o in state[r]["optima"]
                                     if o.group.get("width") == widths[-2]])
        probes = {r: _at(state[r]["optima"], "width", big) for r in survivors}
        finite = {r: o.loss for r, o in probes.items() if o is not None and math.isfinite(o.loss)}
        if v.seeds > 1:
            lead0 = min(finite.values()) if finite else math.nan
            self.log(f"  race at width {big}: first seed " + ", ".join(f"{r} {x:.4f}" for r, x in finite.items())
                     + (f"; margin {margin:.4f} (per-run noise {noise:.4f} at width {widths[-2]})"
                        if math.isfinite(margin) else "; no noise measured: every seed trains"))
            for r in survivors:
                behind = finite.get(r, math.inf) - lead0
                if math.isfinite(margin) and math.isfinite(lead0) and behind > margin:
                    state[r]["one_seed"] = (f"on seed 0 its loss at width {big} is {behind:.4f} above the leader's, "
                                            f"beyond the margin {margin:.4f} (z x sqrt(2) x the per-run noise "
                                            f"{noise:.4f}): a second seed could not make it lead, so it did not run")
                    self.log(f"  race at width {big}: {r} trains one seed only: {state[r]['one_seed']}")
                    continue
                st = state[r]  # within the margin (or no noise to judge by): every seed
                st["optima"], st["lrs"] = self._verify(r, setting, widths, {**st["lrs"], big: [c]}, frozen=(big,),
                                                       trial=st["trial"])
            probes = {r: _at(state[r]["optima"], "width", big) for r in survivors}
            finite = {r: probes[r].loss for r in survivors if "one_seed" not in state[r] and probes[r] is not None
                      and math.isfinite(probes[r].loss)}
        leader = min(finite, key=finite.__getitem__) if finite else survivors[0]
        st = state[leader]
        settled = self._widest_settled(leader, st, widths, c)
        for r in survivors:
            o = probes[r]
            self.log(f"  race at width {big}: {r} at log2 lr {c:g}: "
                     + (f"loss {o.loss:.4f}" if o is not None and math.isfinite(o.loss) else "no finite loss")
                     + (f" ({o.n_seeds} seed{'s' * (o.n_seeds != 1)})" if o is not None else "")
                     + ("" if r != leader else " (leads)" if settled else " (leads: its LR scan there follows)"))
        if settled is None:
            self._trial_neighbours(st["trial"], big, scan, setting, st["optima"], widths[-2], margin)
            st["optima"], st["lrs"] = self._verify(leader, setting, widths, {**st["lrs"], big: scan},
                                                   trial=st["trial"])
        for r in survivors:
            if r != leader or settled is not None:
                state[r]["probe_only"] = big

    def _widest_settled(self, recipe: str, st: dict[str, Any], widths: list[int], centre: float) -> str | None:
        """With ``verify.widest_scan: auto``: why the narrower widths settle where ``recipe``'s optimum is at the
        largest width, so that its LR scan there (the transferred LR's neighbours) is not trained; None when
        they leave doubt (:func:`widest_settled`). Logged, and kept in ``st`` for the report."""
        v = self.cfg.verify
        if v.widest_scan != "auto" or len(widths) < 2:
            return None
        why = widest_settled(st["optima"], widths[:-1], widths[-1], centre, v.span, probe=_at(st["optima"], "width",
                                                                                           widths[-1]))
        if why is not None:
            st["widest_settled"] = why
            self.log(f"  at width {widths[-1]}: {recipe} trains its transferred LR only (2^{centre:g}): {why}")
        return why

    @staticmethod
    def _trial_neighbours(trial: SeedTrial, size: int, scan: list[float], setting: dict[str, float],
                          optima: list[Optimum], below: int, margin: float | None = None) -> None:
        """Put the points of ``scan`` at ``size`` other than its centre (the transferred LR) on trial, judged by
        the margin measured at ``below`` (the next smaller width) until ``size`` measures its own."""
        c = round(setting[LR_AXIS], 10)
        trial.fallback = margin if margin is not None else race_margin([o for o in optima
                                                                        if o.group.get("width") == below])[0]
        for x in scan:
            if round(x, 6) != round(c, 6):
                trial.add(size, x)

    # ---------------------------------------------------------------- all
    def check_multipliers(self) -> list[str]:
        """Drop from the search the multipliers that cannot apply to this model, before any trial.

        For each one, the plan of the widest proxy against the base is built (the target on ``meta``, the base
        on the CPU: small) with that multiplier alone set, for every candidate recipe; a multiplier whose plan
        raises :class:`PlanError` (an attention multiplier on a model whose attention proxytune cannot reach)
        would fail every trial that sets it. Returns the notes, one per dropped multiplier (also in
        ``self.notes`` and logged). A program builds its own model: nothing is checked, a stage whose trials
        keep failing stops instead (``MAX_SAME_FAILURES``)."""
        if self.cfg.program is None and self.mults:
            dropped = inapplicable_multipliers(self.cfg, self.mults)
            for name, why in dropped.items():
                note = (f"{name} is left out of the search: it cannot apply to this model (the plan with {name} = 2: "
                        f"{why})")
                self.notes.append(note)
                self.log(f"note: {note}")
            self.mults = [m for m in self.mults if m not in dropped]
            self.axes = [LR_AXIS, *self.mults]
        return self.notes

    def run(self) -> TuneResult:
        cfg = self.cfg
        _check_stored(cfg)
        self.check_multipliers()
        deepest = max([cfg.target.depth if cfg.target is not None and cfg.target.depth else 0, *cfg.proxy_depths])
        for recipe in cfg.candidates:  # before any compute is spent: a base too shallow for the depth rule
            shallow = shallow_base_warning(recipe, cfg.base_depth, deepest or None)  # residual 1 until stage 1
            if shallow and deepest > cfg.base_depth:
                self.log(f"warning: {shallow}")
        s1 = self.stage1()
        winner = s1.winner.setting
        self.log(f"stage 1 done: best setting {_describe(winner)} (loss {s1.winner.mean:.4f} on fresh seeds, "
                 f"defaults {s1.control.mean:.4f})")
        candidates = self.stage2(winner)
        choice, why = pick_recommendation(candidates, cfg)
        stage3 = None
        if wants_horizon(cfg):
            center = _lr_of(choice, winner)[0]
            stage3 = run_horizon_stage(self, choice.recipe, winner, constants_of(winner), center)
        prediction = self._predict(choice, stage3) if cfg.target else None
        cost = self._cost(candidates, prediction)
        if prediction is not None:  # one LR: the target's, which the plan and the training code use
            log2_lr, interval, source = prediction.log2_lr, prediction.log2_lr_interval, prediction.lr_source
        else:
            log2_lr, interval, source = _lr_of(choice, winner)
        result = TuneResult(
            name=cfg.name, run_dir=str(cfg.run_dir), recipe=choice.recipe, log2_lr=log2_lr, lr=2.0 ** log2_lr,
            constants=constants_of(winner), stage1=s1, candidates=tuple(candidates), recommendation=tuple(why),
            prediction=prediction, cost=cost, notes=tuple(self.notes),
            lr_interval=(2.0 ** interval[0], 2.0 ** interval[1]), lr_source=source)
        result = replace(result, report=str(write_report(result, cfg)))
        (cfg.run_dir / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=1, default=_json_default))
        return result

    def _predict(self, choice: Candidate, stage3: HorizonStage | None = None) -> TargetPrediction:
        """The target's settings: the width answer from the recipe's verification sweep at the proxies' tokens and
        batch, moved for the target's tokens and batch by stage 3's law (or the named published rules), the batch,
        steps, weight decay, warmup and beta2; the plan and training code written with exactly them."""
        t = self.cfg.target
        sweep = Sweep.open(choice.sweep)
        depth = t.depth or self.cfg.base_depth
        # at the proxies' tokens and batch; a width probed at one LR says nothing about its optimum
        res = predict_from_sweep(sweep, width=t.width, depth=depth, pool_noise=True,
                                 probe_widths=(choice.probe_only,) if choice.probe_only is not None else ())
        h = res.hp
        settings, notes = target_settings(self.cfg, stage3, (h.value, h.interval, h.source))
        lr, batch, steps = (next(x for x in settings if x.name == n) for n in ("lr", "batch_tokens", "steps"))
        tokens = steps.value * batch.value
        covered = res.proxies
        if stage3 is not None:  # what the trust warnings measure the target against: the longest, widest covered
            covered = replace(covered, tokens=max(c.tokens for c in stage3.cells),
                              batch_tokens=tuple(sorted({c.batch_tokens for c in stage3.cells})))
        warnings = trust_warnings(replace(res, target=replace(res.target, tokens=tokens, batch_tokens=batch.value),
                                          proxies=covered, hp=replace(h, interval=tuple(math.log2(x)
                                                                                       for x in lr.interval))))
        plan_path: Path | None = self.cfg.run_dir / "target-plan.json"
        snippet: Path | None = self.cfg.run_dir / f"train-width{t.width}-depth{depth}.py"
        # one float from here on: the LR printed, stored, planned and written into the training code
        hp = HPEstimate("log2_lr", math.log2(lr.value), tuple(math.log2(x) for x in lr.interval), h.confidence,
                        lr.source)
        settings = tuple(replace(x, value=hp.lr) if x.name == "lr" else x for x in settings)
        settings += optimizer_settings(base_config(sweep.cfg), self.mults, hp.lr, lr.interval)
        if res.snippet is not None:
            plan = target_plan(sweep, t.width, depth, hp, plan_path, overrides=_run_fields(settings, sweep))
            snippet.write_text(plan["snippet"])
        else:  # a program sweep: the proxies' plans are on disk, the target's is the user's call
            plan_path = snippet = None
        if res.loss is not None and res.proxies.tokens and not math.isclose(tokens, res.proxies.tokens, rel_tol=1e-6):
            notes.append(f"the expected loss is for the proxies' token budget ({res.proxies.tokens:.3g}), not the "
                         f"target's ({tokens:.3g}): the loss law is fitted across width only")
        return TargetPrediction(width=t.width, depth=depth, params=res.target.params, tokens=tokens,
                                log2_lr=hp.value, log2_lr_interval=hp.interval, lr=hp.lr,
                                lr_interval=hp.lr_interval, loss=res.loss, warnings=tuple(warnings),
                                notes=(*res.notes, *notes, *(stage3.notes if stage3 else ())),
                                plan=plan_path and str(plan_path), snippet=snippet and str(snippet),
                                lr_source=lr.source, settings=settings, horizon=stage3)

    def _cost(self, candidates: list[Candidate], prediction: TargetPrediction | None) -> TuneCost:
        """FLOPs of every proxy trial, per stage, against one run of the target and an LR sweep at the largest
        proxy (the search's LR grid x the verification seeds: what tuning the LR there alone would cost)."""
        per_stage: dict[str, float] = {}
        trials = 0
        largest_trial = 0.0
        big = max(self.cfg.proxy_widths)
        for stage, sweep in self.sweeps.items():
            recs = [r for r in asked(sweep, sweep.records()) if r.get("status") in (*_DONE, "pruned")]
            trials += len(recs)
            per_stage[stage] = per_stage.get(stage, 0.0) + sum(float(r.get("flops") or 0.0) for r in recs)
            for r in recs:
                if r.get("width") == big and r.get("status") == "complete":
                    largest_trial = max(largest_trial, float(r.get("flops") or 0.0))
        total = sum(per_stage.values())
        out = TuneCost(flops=total, trials=trials, per_stage=per_stage)
        if largest_trial:
            lr_sweep = largest_trial * len(self.cfg.search.lr.values()) * self.cfg.verify.seeds
            out = replace(out, lr_sweep_at_largest=lr_sweep, vs_lr_sweep_at_largest=total / lr_sweep,
                          largest_width=big)
        if prediction is not None and self.cfg.program is None:  # a program's model is not ours to count
            target_flops = run_flops(self.cfg, prediction.width, prediction.depth, prediction.tokens)
            if target_flops:
                out = replace(out, target_run=target_flops, vs_target_run=total / target_flops)
        return out


def tune(config: TuneConfig | dict[str, Any] | str | Path, *, log: LogFn = print,
         on_poll: PollFn | None = None) -> TuneResult:
    """Run (or continue) a tuning run: a :class:`TuneConfig`, its dict form, or the path of its YAML file."""
    if isinstance(config, (str, Path)):
        cfg = TuneConfig.from_yaml(config)
    elif isinstance(config, dict):
        cfg = TuneConfig.from_dict(config)
    else:
        cfg = config
    return Tuner(cfg, log=log, on_poll=on_poll).run()


def inapplicable_multipliers(cfg: TuneConfig, names: list[str]) -> dict[str, str]:
    """``{multiplier: why}`` for the named multipliers (search axis names) whose plan raises :class:`PlanError` on
    this model, under any candidate recipe: the plan of the widest proxy (on ``meta``) against the base (on the
    CPU), with that multiplier alone set to 2. When the model cannot be built or planned even with every
    multiplier at 1, nothing is judged here (every trial would fail with that error; the stage says so)."""
    def plan(tc: TrainConfig, target: Any, base: Any, data: Any) -> None:
        # the trainer's call (train.setup.prepare), with the model's own attention adapters, roles and patterns
        parameterize(target, base, recipe=tc.recipe, optimizer=tc.optimizer, mode=tc.mode, alignment=tc.alignment,
                     weight_decay=tc.weight_decay_policy, multipliers=tc.multipliers(), **tc.plan_kwargs(),
                     seq_len=tc.seq_len if getattr(data, "task", "lm") == "lm" else None, apply=False)

    def fields(recipe: str) -> dict[str, Any]:
        return {**cfg.train_fields(recipe), "width": max(cfg.proxy_widths), "depth": cfg.base_depth, "lr": 1e-3}

    try:  # the models do not depend on the recipe: built once
        tc = TrainConfig(**fields(cfg.candidates[0]))
        data = load_data(tc)
        with torch.random.fork_rng(devices=[]):  # the trials seed themselves; leave the caller's RNG alone
            target, base = build_models(tc, data, "meta")
    except Exception:  # noqa: BLE001 - not a multiplier's fault: the trials report it
        return {}
    out: dict[str, str] = {}
    for recipe in cfg.candidates:
        try:
            plan(TrainConfig(**fields(recipe)), target, base, data)
        except Exception:  # noqa: BLE001 - this recipe cannot plan the model at all: its trials report why
            continue
        for name in names:
            if name in out:
                continue
            try:
                one = TrainConfig(**apply_point(fields(recipe), {name: 2.0}))
            except ValueError:
                continue  # not a value this field takes: the trials will say so
            try:
                plan(one, target, base, data)
            except PlanError as exc:
                out[name] = " ".join(str(exc).split()) + (f", under recipe {recipe}" if len(cfg.candidates) > 1 else "")
    return out


class StageCosts:
    """Each stage's FLOPs, estimated before it runs (its trials not yet stored, each one's model counted on the meta
    device at its width, depth, steps and batch) and counted after (its trials' own FLOPs), both also as a fraction
    of one run of the target (``target:``; its tokens, else the proxies')."""

    def __init__(self, cfg: TuneConfig) -> None:
        self.cfg = cfg
        self._per_token: dict[tuple[int, int], float] = {}
        self._target: float | None = None

    def per_token(self, width: int, depth: int) -> float:
        if (width, depth) not in self._per_token:
            tc = TrainConfig(**self.cfg.train_fields(self.cfg.candidates[0]), width=width, depth=depth)
            self._per_token[(width, depth)] = run_flops(self.cfg, width, depth, None) / (tc.steps * tc.tokens_per_step())
        return self._per_token[(width, depth)]

    def target(self) -> float:
        """FLOPs of one target run (0 without a target, or when the model is a program's)."""
        t = self.cfg.target
        if self._target is None:
            self._target = (run_flops(self.cfg, t.width, t.depth or self.cfg.base_depth, t.tokens)
                            if t is not None and self.cfg.program is None else 0.0)
        return self._target

    def _words(self, flops: float) -> str:
        target = self.target()
        return f"{flops:.3g} FLOPs" + (f", {100 * flops / target:.3g}% of one target run" if target else "")

    def before(self, sweep: Sweep) -> str:
        """``"; about ... FLOPs (...)"``: the estimate for the sweep's trials not stored yet ('' where it cannot be
        counted: a program's model); a sampled sweep's trials at its own shape."""
        n_sampled = getattr(sweep.cfg.strategy, "n_trials", None)
        if self.cfg.program is not None or (sweep.cfg.points is None and not n_sampled):
            return ""
        stored = stored_points(sweep)
        try:
            base = TrainConfig(**{**self.cfg.train_fields(self.cfg.candidates[0]), **dict(sweep.cfg.train)})
            flops, reused = 0.0, 0
            # a sampled sweep (TPE): its trials at the sweep's own shape, the ones stored not counted
            points = sweep.cfg.points or [{}] * max(0, n_sampled - len(stored))
            if sweep.cfg.points is None:
                reused = min(len(stored), n_sampled)
            for pt in points:
                if _point_key(pt) in stored:
                    reused += 1
                    continue
                get = lambda k: pt.get(k, getattr(base, k))  # noqa: E731
                tokens = get("steps") * get("batch_size") * get("seq_len")
                flops += self.per_token(int(get("width")), int(get("depth"))) * tokens
        except Exception:  # noqa: BLE001 -- an estimate must never stop a stage
            return ""
        if reused and not flops:
            return f"; all {reused} trials stored: nothing to train"
        early = getattr(sweep.cfg.strategy, "kind", "") in ("halving", "hyperband", "tpe-halving")
        return (f"; {'at most' if early else 'about'} {self._words(flops)}"
                + (" (trials stopped early cost less)" if early else "")
                + (f" ({reused} stored trials reused)" if reused else ""))

    def after(self, records: list[dict[str, Any]]) -> str:
        """The FLOPs of the stage's finished trials, in words."""
        flops = sum(float(r.get("flops") or 0.0) for r in records if r.get("status") in (*_DONE, "pruned"))
        return f"{self._words(flops)} spent"


def widest_settled(optima: list[Optimum], below: list[int], big: int, centre: float, span: float,
                   confidence: float | None = None, probe: Optimum | None = None) -> str | None:
    """Why the widths ``below`` leave no doubt about where the optimum is at width ``big``, or None.

    No doubt when at least 3 of them have an inner optimum (not on an edge of its LR scan), their transfer
    verdict is PASS, and the least-squares line of their optima (log2 lr against log2 width, refitted on draws
    of each optimum within its interval) puts the optimum at ``big`` inside ``centre +- span / 2`` at
    ``confidence`` (default: the verdicts' 90%): at least half a step inside the edges of the LR scan ``big``
    would train (``centre +- span``). That scan could then only confirm it, and the recipe's verdict and the
    target's LR rest on the narrower widths either way. The half step is there because a 3-point scan's optimum
    interval can be too narrow: in B1 (2026-12-07) a line inside the scan itself (-5.12 .. -4.26 against
    -5.19 .. -4.19) met a width-256 optimum at -4.14 in that row's full LR sweep.

    ``probe``: the loss at ``big`` at the centre, when trained. Doubt again if it is not finite, or above the
    best loss of the next narrower width beyond the seed noise (z x the standard error of the gap): wider
    should not be worse, and a width that behaves unlike the narrower ones is what the scan is for."""
    conf = THRESHOLDS.confidence if confidence is None else confidence
    rows = [o for o in optima if o.group.get("width") in below and math.isfinite(o.value) and not o.edge]
    if len(rows) < 3:
        return None
    verdict = transfer_verdict(rows, "width")
    if not verdict.passed:
        return None
    if probe is not None:
        prev = _at(optima, "width", max(below))
        if not math.isfinite(probe.loss) or prev is None:
            return None
        gap, se = loss_gap(probe, prev)
        if not math.isfinite(se) or gap > NormalDist().inv_cdf(0.5 + conf / 2) * se:
            return None
    x = np.log2([float(o.group["width"]) for o in rows])
    rng = np.random.default_rng(0)
    draws = np.stack([optimum_draws(o, 2000, rng)[0] for o in rows], axis=1)
    at = draws.mean(axis=1) + lsq_slope(x, draws) * (math.log2(big) - float(x.mean()))
    lo, hi = (float(q) for q in np.percentile(at, [50 * (1 - conf), 100 - 50 * (1 - conf)]))
    if lo < centre - span / 2 - 1e-9 or hi > centre + span / 2 + 1e-9:
        return None
    sizes = ", ".join(str(o.group["width"]) for o in rows)
    return (f"the widths {sizes} PASS ({verdict.drift_per_doubling:+.2f} octaves per doubling, "
            f"{100 * conf:.0f}% {verdict.drift_interval[0]:+.2f} .. {verdict.drift_interval[1]:+.2f}) and their line "
            f"puts the optimum at width {big} at log2 lr {lo:.2f} .. {hi:.2f} ({100 * conf:.0f}%), at least half a "
            f"step inside the scan {centre - span:.2f} .. {centre + span:.2f} it would train there")


def race_margin(optima: list[Optimum], confidence: float | None = None) -> tuple[float, float]:
    """(margin, per-run noise): how far above the leader's a single seed's loss must be before more seeds could
    not make it lead, at ``confidence`` (default: the thresholds'). The per-run noise of one loss pools, over
    ``optima`` (the race's recipes at one width, at least 2 seeds each), the residual noise of each fit and the
    spread of its seed offsets (std = level_se x sqrt(seeds)); two recipes' losses on one seed are taken as
    independent, so their difference has sqrt(2) times that noise. nan when no optimum has both measured."""
    conf = THRESHOLDS.confidence if confidence is None else confidence
    var = [o.noise ** 2 + o.level_se ** 2 * o.n_seeds for o in optima
           if o.n_seeds > 1 and math.isfinite(o.noise) and math.isfinite(o.level_se)]
    if not var:
        return math.nan, math.nan
    noise = math.sqrt(sum(var) / len(var))
    z = NormalDist().inv_cdf(0.5 + conf / 2)
    return z * math.sqrt(2) * noise, noise


def stored_points(sweep: Sweep) -> set[tuple]:
    """The keys of the points ``sweep`` has finished (complete, diverged or pruned); empty before it exists."""
    try:
        return {_point_key(r) for r in sweep.records() if r.get("status") in (*_DONE, "pruned")}
    except SweepConfigError:  # not created yet: nothing stored
        return set()


def _one_trial_inline(sweep: Sweep) -> tuple[Sweep, int | None]:
    """The sweep to run a stage with, and the thread count to train at (None: the sweep's own executor).

    A stage with one trial left to train (a race probe, a point's second seed) trains it in this process:
    starting the worker processes costs more than such a trial at a small proxy (each imports torch and
    proxytune, 4 to 5 s a stage on 2 CPU cores, against 2 to 7 s for a trial of the quick demo), and one trial
    keeps one worker busy anyway. It trains at the workers' thread count, so its numbers are the ones a worker
    gets. Not for Ray, for an inline executor already, or for a program (its trials run in their own processes)."""
    cfg = sweep.cfg
    if cfg.executor.kind != "local" or cfg.program is not None or not cfg.points:
        return sweep, None
    if len({_point_key(p) for p in cfg.points} - stored_points(sweep)) != 1:
        return sweep, None
    inline = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": "inline", "batch": 1})})
    return Sweep(inline), cfg.executor.threads


class SeedTrial:
    """The one-seed rule for the points of an LR scan (issue 30): a point on trial trains the first verification
    seed only. Then it trains the other seeds unless its loss on that seed is above the best loss on that seed at
    the same size by more than :func:`race_margin` (z x sqrt(2) x the per-run noise measured at that size, else
    ``fallback``, the margin measured at the next smaller size): at that confidence the other seeds could not make
    it the optimum of its scan (nor move the scan's edge), so they would not change a decision. A point that
    diverged on its first seed is behind. With one verification seed, or no noise to judge by, every seed trains.

    With ``verify.one_seed_points`` (off by default), on trial: the points a scan gains on an edge and the
    neighbours of the probe at the largest width. One object per recipe, kept across its scans, so a point
    judged behind stays at one seed when the scan is asked for again."""

    def __init__(self, n_seeds: int, fallback: float = math.nan) -> None:
        self.n_seeds = n_seeds
        self.fallback = fallback
        self.pending: set[tuple[int, float]] = set()
        self.behind: dict[tuple[int, float], str] = {}
        self.shown: dict[tuple[int, float], float] = {}

    @classmethod
    def for_config(cls, v: Any) -> SeedTrial:
        """The trial of one recipe's scans under ``verify`` settings ``v``: inert unless ``one_seed_points``."""
        return cls(v.seeds if v.one_seed_points else 1)

    def add(self, size: int, x: float) -> None:
        self.shown[(size, round(x, 6))] = x  # the value as the scan logs it
        if self.n_seeds > 1 and (size, round(x, 6)) not in self.behind:
            self.pending.add((size, round(x, 6)))

    def seeds(self, size: int, x: float, seeds: list[int]) -> list[int]:
        key = (size, round(x, 6))
        return seeds[:1] if key in self.pending or key in self.behind else seeds

    def judge(self, recs: list[dict[str, Any]], optima: list[Optimum], axis: str, log: LogFn) -> bool:
        """Decide the points on trial from their first seed; True when some must train their other seeds now."""
        if not self.pending:
            return False
        first: dict[tuple[int, float], float] = {}
        for r in recs:
            if r.get("seed") == 0 and r.get(LR_AXIS) is not None and r.get("status") in _DONE:
                loss = r.get("val_loss")
                bad = r.get("status") == "diverged" or loss is None or not math.isfinite(float(loss))
                first[(r[axis], round(float(r[LR_AXIS]), 6))] = math.inf if bad else float(loss)
        more = False
        for key in sorted(self.pending):
            size, x = key
            self.pending.discard(key)
            margin = race_margin([o for o in optima if o.group.get(axis) == size])[0]
            margin = margin if math.isfinite(margin) else self.fallback
            best = min((v for (s, _), v in first.items() if s == size), default=math.nan)
            gap = first.get(key, math.nan) - best
            if math.isfinite(margin) and (gap > margin or (math.isinf(gap) and math.isfinite(best))):
                self.behind[key] = (f"{axis} {size}, log2 lr {self.shown.get(key, x):g}: on seed 0 its loss is "
                                    + ("diverged" if math.isinf(gap) else f"{gap:.4f} above the scan's best there")
                                    + f", beyond the margin {margin:.4f}: more seeds could not make it the optimum")
                log(f"  one seed only at {self.behind[key]}")
            else:
                more = True
        return more


def asked(sweep: Sweep, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the points ``sweep`` asks for now (all of a sampled sweep's): a stage's cost counts what this
    run's decisions used, not the other trials an earlier run left in the same folder."""
    if sweep.cfg.points is None:
        return records
    keys = {_point_key(pt) for pt in sweep.cfg.points}
    out: dict[tuple, dict[str, Any]] = {}
    for r in records:  # one record per point: a finished one over a failed or waiting one
        k = _point_key(r)
        if k in keys and (k not in out or (r.get("status") in _DONE and out[k].get("status") not in _DONE)):
            out[k] = r
    return list(out.values())


def _point_key(point: dict[str, Any]) -> tuple:
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in point.items()
                        if k not in RECORD_META))


def run_flops(cfg: TuneConfig, width: int, depth: int, tokens: float | None) -> float:
    """FLOPs of one training run of the ``width`` x ``depth`` model on ``tokens`` tokens (the proxies' token
    budget when None), counted by torch on the meta device for one step of the proxies' batch."""
    tc = TrainConfig(**cfg.train_fields(cfg.candidates[0]), width=width, depth=depth)
    data = load_data(tc)
    if getattr(data, "task", "lm") != "lm":
        return 0.0
    builder = load_builder(tc.model)
    model = build_model(builder, width, depth, "meta", _builder_options(tc, data, builder))
    x = torch.zeros(tc.batch_size, tc.seq_len, dtype=torch.long, device="meta")
    per_step = flops_per_step(model, loss_function("lm"), x, x)
    steps = tc.steps if tokens is None else tokens / tc.tokens_per_step()
    return float(per_step) * steps


# ------------------------------------------------------------------ helpers
def _at(optima: list[Optimum], axis: str, size: int) -> Optimum | None:
    return next((o for o in optima if o.group.get(axis) == size), None)


def optimizer_settings(tc: TrainConfig, searched: list[str], lr: float,
                       interval: tuple[float, float] | None) -> tuple[TargetSetting, ...]:
    """The target run's settings from the optimizer constants stage 1 searched (``searched``), as the verified
    proxies ``tc`` trained with them: Muon's matrix LR (``lr`` x ``muon_lr_ratio``, with the LR's ``interval``) and
    the base eps (x ``eps_mult``). Both are base values: the plan scales them per tensor as it scales the LR and
    eps, so they transfer unchanged."""
    out = []
    if "muon_lr_ratio" in searched:
        r = tc.muon_lr_ratio
        iv = None if interval is None else (interval[0] * r, interval[1] * r)
        out.append(TargetSetting("muon_lr", lr * r, iv, True,
                                 f"lr x muon_lr_ratio {r:g} tuned at the base (stage 1): plan.optimizer(muon_lr=...), "
                                 "scaled per Muon matrix by the plan as lr is"))
    if "eps_mult" in searched:
        damping = get_optimizer(tc.optimizer).eps_power == 2
        given = "train.eps" if tc.eps is not None else f"{tc.optimizer}'s default"
        base = tc.eps if tc.eps is not None else default_eps(tc.optimizer)
        out.append(TargetSetting("eps", base * tc.eps_mult, None, True,
                                 f"{'the damping matrix_eps: ' if damping else ''}{given} {base:g} x eps_mult "
                                 f"{tc.eps_mult:g} tuned at the base (stage 1): plan.optimizer(eps=...), scaled per "
                                 "tensor by the plan's eps column"
                                 + (" (gradient^2 x size)" if damping else "")))
    return tuple(out)


def _lr_of(choice: Candidate, winner: dict[str, float]) -> tuple[float, tuple[float, float], str]:
    """The recommended log2 LR without a target, its interval and source: the recipe's optima over the verified
    widths (a single-LR probe left out), carried by :func:`proxytune.analysis.carry.carry_lr` (their mean, or the
    largest proxy's optimum when the verdict resolved a drift), else stage 1's."""
    scanned = [o for o in choice.optima if math.isfinite(o.value) and o.group.get("width") != choice.probe_only]
    if not scanned:
        return float(winner[LR_AXIS]), (float(winner[LR_AXIS]),) * 2, "stage 1's optimum at the base"
    sizes = [math.log2(float(o.group.get("width", 1))) for o in scanned]
    carried = carry_lr(scanned, sizes, None, recipe=choice.recipe, size_name="width")
    return carried.value, carried.interval, carried.source


def _run_fields(settings: tuple[TargetSetting, ...], sweep: Sweep) -> dict[str, Any]:
    """TrainConfig fields of the target run from its settings: batch (whole sequences), steps, weight decay,
    beta2, warmup (as the proxies' fraction)."""
    first = base_config(sweep.cfg)
    per_seq = first.tokens_per_step() / first.batch_size
    by = {x.name: x.value for x in settings}
    return {"batch_size": max(1, round(by["batch_tokens"] / per_seq)), "steps": int(by["steps"]),
            "weight_decay": by["weight_decay"], "betas": (first.betas[0], by["beta2"]), "warmup": float(by["warmup"])}


def _describe(setting: dict[str, float]) -> str:
    parts = [f"lr 2^{setting[LR_AXIS]:g}"] + [f"{a} x{v:.3g}" for a, v in setting.items()
                                               if a != LR_AXIS and v != 1.0]
    return ", ".join(parts)


def _check_stored(cfg: TuneConfig) -> None:
    """Save the tune file in its run directory; refuse a changed one (its stored trials would not match)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / CONFIG_FILE
    if path.is_file():
        stored = TuneConfig.from_yaml(path)
        changes = _diff(stored.identity(), cfg.identity())
        if changes:
            raise TuneConfigError(f"tuning run {cfg.name!r} in {cfg.run_dir} was started with other settings: "
                                  f"{'; '.join(changes)}. Restore them, or give the run a new name.")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, Optimum):
        return o.to_dict()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)

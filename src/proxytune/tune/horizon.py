"""Stage 3 of ``tune``: the horizon and batch at the base width, and the target run's whole recipe.

At the base width (the cheapest proxy; under muP the width effect and the horizon effect on the optimal LR
separate, so the width proxies need not repeat this), the recommended recipe and constants get an LR scan at every
(horizon, batch) of ``horizon:`` (tokens and batch as multiples of the proxies'), centred on where the published
rules expect the optimum and grown at an edge. From those optima: LR*(D, B) and B_opt(D)
(:mod:`proxytune.analysis.horizon`). With ``horizon.weight_decay``, a weight-decay scan at the shortest and the
longest horizon gives the AdamW timescale and its check.

:func:`target_settings` then answers, for the run in ``target:``, the LR (width answer + horizon and batch shift),
the batch, the steps, the weight decay, the warmup and Adam's beta2, each a
:class:`~proxytune.analysis.horizon.TargetSetting` saying whether it was measured and where it came from.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..analysis.horizon import (
    Cell, HorizonStage, LRShift, NoiseScaleLaw, TargetSetting, WeightDecayCheck, batch_answer, batch_optima,
    check_timescale, lr_shift, noise_scale_law, prior_lr_shift, timescale_wd,
)
from ..analysis.optimum import optima_by_group
from ..analysis.rules_of_thumb import sqrt_rule_beta
from ..train.config import TrainConfig
from .config import TuneConfig, TuneConfigError
from .search import LR_AXIS

if TYPE_CHECKING:
    from .run import Tuner

WD_AXIS = "log2_weight_decay"


def proxy_train(cfg: TuneConfig) -> TrainConfig:
    """The proxies' TrainConfig at the base shape (its steps, batch, tokens per step, warmup, betas, wd)."""
    return TrainConfig(**cfg.train_fields(cfg.candidates[0]), width=cfg.base_width, depth=cfg.base_depth, lr=1e-3)


def wants_horizon(cfg: TuneConfig) -> bool:
    """Whether stage 3 runs: ``horizon.run``, or by default when the target's tokens or batch differ from the
    proxies' (a program's trials train how the program says: never)."""
    if cfg.program is not None or cfg.target is None or cfg.horizon.run is False:
        return False
    if cfg.horizon.run:
        return True
    tc = proxy_train(cfg)
    d, b = target_tokens_batch(cfg, tc)
    return not (math.isclose(d, tc.steps * tc.tokens_per_step()) and (b is None or math.isclose(b, tc.tokens_per_step())))


def target_tokens_batch(cfg: TuneConfig, tc: TrainConfig) -> tuple[float, float | None]:
    """The target's training tokens (the proxies' when not given) and tokens per step (None when not given)."""
    t = cfg.target
    per_seq = tc.tokens_per_step() / tc.batch_size
    tokens = t.tokens if t is not None and t.tokens else float(tc.steps * tc.tokens_per_step())
    batch = None
    if t is not None and t.batch_tokens:
        batch = float(t.batch_tokens)
    elif t is not None and t.batch:
        batch = float(t.batch * per_seq)
    return float(tokens), batch


def _cells_plan(cfg: TuneConfig, tc: TrainConfig, center: float) -> tuple[dict[tuple[int, int], list[float]], list[str]]:
    """{(steps, batch_size): LR scan} for every (horizon, batch) with enough steps, and notes on the ones left out.
    Each scan is centred on the base optimum moved by the published rules (so it starts near the optimum)."""
    h = cfg.horizon
    n = int(math.floor(h.span / h.step + 1e-9))
    scans: dict[tuple[int, int], list[float]] = {}
    notes = []
    for mult_d in h.horizons:
        for mult_b in h.batches:
            bs = max(1, round(tc.batch_size * mult_b))
            steps = round(tc.steps * mult_d * tc.batch_size / bs)
            if steps < h.min_steps:
                notes.append(f"horizon x{mult_d:g} at batch x{mult_b:g} left out: {steps} steps (< {h.min_steps})")
                continue
            ref = (1.0, float(tc.batch_size))  # the rules move the LR by ratios: tokens as multiples, batch in sequences
            mid = center + prior_lr_shift(ref, (mult_d, float(bs)), cfg.optimizer).shift
            mid = round(mid / h.step) * h.step
            scans[(steps, bs)] = [round(mid + k * h.step, 10) for k in range(-n, n + 1)]
    return scans, notes


def run_horizon_stage(tuner: Tuner, recipe: str, setting: dict[str, float], fixed: dict[str, Any],
                      center: float) -> HorizonStage:
    """Stage 3: the LR scans at every (horizon, batch) at the base width, each grown at an edge (``verify.max_extend``
    times at most), then the weight-decay scans when asked. ``fixed``: the recommended constants; ``center``: the
    base width's log2 LR optimum."""
    cfg = tuner.cfg
    tc = proxy_train(cfg)
    scans, notes = _cells_plan(cfg, tc, center)
    if len(scans) < 3:
        raise TuneConfigError(f"horizon: {len(scans)} (horizon, batch) cells have {cfg.horizon.min_steps} or more "
                              "steps, 3 or more are needed for a law: add horizons or batches, or lower "
                              "horizon.min_steps")
    seeds = list(range(cfg.horizon.seeds))
    for attempt in range(cfg.verify.max_extend + 1):
        points = [{"steps": st, "batch_size": bs, LR_AXIS: x, "seed": k}
                  for (st, bs), xs in scans.items() for x in xs for k in seeds]
        sweep = tuner._sweep("horizon", recipe, fixed=fixed, points=points)
        recs = tuner._run(sweep, f"stage 3 · {recipe}: LR scans at {len(scans)} horizons x batches, base width")
        optima = _cell_optima(recs, scans)
        edges = [(key, o.edge) for key, o in optima.items() if o.edge]
        if not edges or attempt == cfg.verify.max_extend:
            break
        for key, edge in edges:
            xs = scans[key]
            scans[key] = sorted([*xs, round(min(xs) - cfg.horizon.step, 10) if edge == "low"
                                 else round(max(xs) + cfg.horizon.step, 10)])
    per_seq = tc.tokens_per_step() / tc.batch_size
    cells = tuple(Cell(st * bs * per_seq, bs * per_seq, o) for (st, bs), o in sorted(optima.items()))
    reference = (float(tc.steps * tc.tokens_per_step()), float(tc.tokens_per_step()))
    noise = _noise_probe(tuner, recipe, fixed, cells, tc, notes) if cfg.horizon.noise_scale else None
    wd = _wd_check(tuner, recipe, fixed, cells, tc) if cfg.horizon.weight_decay is not None else None
    return HorizonStage(reference, cells, tuple(batch_optima(cells)), wd, tuple(notes), noise)


def _noise_probe(tuner: Tuner, recipe: str, fixed: dict[str, Any], cells: tuple[Cell, ...], tc: TrainConfig,
                 notes: list[str]) -> NoiseScaleLaw | None:
    """The gradient noise scale at every horizon: one run per seed at the cell nearest the proxies' batch (an even
    number of sequences), at its best measured LR (``TrainConfig.noise_scale``)."""
    per_seq = tc.tokens_per_step() / tc.batch_size
    ref_b = float(tc.tokens_per_step())
    probes = []
    for d in sorted({c.tokens for c in cells}):
        row = [c for c in cells if c.tokens == d and math.isfinite(c.optimum.best_grid_value)
               and round(c.batch_tokens / per_seq) % 2 == 0]
        if row:
            probes.append(min(row, key=lambda c: abs(math.log2(c.batch_tokens / ref_b))))
    if not probes:
        notes.append("noise scale not measured: no horizon has a cell with an even batch and a finite optimum")
        return None
    points = [{"steps": round(c.tokens / c.batch_tokens), "batch_size": round(c.batch_tokens / per_seq),
               LR_AXIS: c.optimum.best_grid_value, "noise_scale": True, "seed": k}
              for c in probes for k in range(tuner.cfg.horizon.seeds)]
    recs = tuner._run(tuner._sweep("horizon-noise", recipe, fixed=fixed, points=points),
                      f"stage 3 · {recipe}: gradient noise scale at {len(probes)} horizons, base width")
    measured = [(float(r["steps"]) * float(r["batch_size"]) * per_seq, r.get("noise_scale")) for r in recs
                if r.get("status") == "complete"]
    law = noise_scale_law([(d, b) for d, b in measured if b is not None])
    if law is None:
        notes.append("noise scale not measured: no probe run gave a value (noise dominated every estimate)")
    return law


def _cell_optima(recs: list[dict[str, Any]], scans: dict[tuple[int, int], list[float]]) -> dict[tuple[int, int], Any]:
    wanted = {(st, bs, round(x, 6)) for (st, bs), xs in scans.items() for x in xs}
    rows = [r for r in recs if r.get(LR_AXIS) is not None
            and (r.get("steps"), r.get("batch_size"), round(float(r[LR_AXIS]), 6)) in wanted]
    return {(o.group["steps"], o.group["batch_size"]): o
            for o in optima_by_group(rows, LR_AXIS, size_axes=["steps", "batch_size"])}


def _wd_check(tuner: Tuner, recipe: str, fixed: dict[str, Any], cells: tuple[Cell, ...],
              tc: TrainConfig) -> WeightDecayCheck | None:
    """The weight-decay scans at the shortest and the longest horizon at the proxies' batch, each at its cell's
    best measured LR; the timescale from the first, checked at the second."""
    ref_b = float(tc.tokens_per_step())
    row = sorted((c for c in cells if math.isclose(c.batch_tokens, ref_b) and math.isfinite(c.optimum.value)),
                 key=lambda c: c.tokens)
    if not row:
        return None
    ends = [row[0]] + ([row[-1]] if len(row) > 1 else [])
    per_seq = tc.tokens_per_step() / tc.batch_size
    grid = tuner.cfg.horizon.weight_decay.values()
    points = [{"steps": round(c.tokens / c.batch_tokens), "batch_size": round(c.batch_tokens / per_seq),
               LR_AXIS: c.optimum.best_grid_value, WD_AXIS: x, "seed": k}
              for c in ends for x in grid for k in range(tuner.cfg.horizon.seeds)]
    recs = tuner._run(tuner._sweep("horizon-wd", recipe, fixed=fixed, points=points),
                      f"stage 3 · {recipe}: weight-decay scans at {len(ends)} horizons, base width")
    optima = {o.group["steps"]: o for o in optima_by_group(recs, WD_AXIS, size_axes=["steps"])}
    first = optima.get(round(ends[0].tokens / ends[0].batch_tokens))
    if first is None or not math.isfinite(first.value):
        return None
    last = optima.get(round(ends[-1].tokens / ends[-1].batch_tokens)) if len(ends) > 1 else None
    return check_timescale(first, ends[0], 2.0 ** ends[0].optimum.best_grid_value, last,
                           ends[-1] if last is not None else None,
                           2.0 ** ends[-1].optimum.best_grid_value if last is not None else None)


def _combine(value: float, iv: tuple[float, float], shift: LRShift) -> tuple[float, tuple[float, float]]:
    """The width answer plus the horizon/batch shift, intervals added in quadrature on each side (independent
    sources: the width proxies and the base-width horizon scans)."""
    lo = math.hypot(value - iv[0], shift.shift - shift.interval[0])
    hi = math.hypot(iv[1] - value, shift.interval[1] - shift.shift)
    v = value + shift.shift
    return v, (v - lo, v + hi)


def _batch_setting(cfg: TuneConfig, tc: TrainConfig, stage: HorizonStage | None, tokens: float,
                   given: float | None) -> tuple[TargetSetting, list[str]]:
    per_seq = tc.tokens_per_step() / tc.batch_size
    ref_d, ref_b = float(tc.steps * tc.tokens_per_step()), float(tc.tokens_per_step())
    notes = []
    measured = batch_answer(stage.batch_optima, tokens, ref_d, ref_b) if stage is not None else None
    if given is not None:
        key = "target.batch_tokens" if cfg.target is not None and cfg.target.batch_tokens else "target.batch"
        s = TargetSetting("batch_tokens", given, None, False, f"given: yours, from the tune file ({key})", "tokens")
        if measured is not None:
            notes.append(f"batch: the target's batch is yours ({given:.3g} tokens per step); the optimal batch at "
                         f"{tokens:.3g} tokens would be {measured.value:.3g} tokens per step ({measured.source})")
    elif measured is not None:
        s = measured
    elif math.isclose(tokens, ref_d):
        s = TargetSetting("batch_tokens", ref_b, None, False, "the proxies' batch: the target trains on the proxies' "
                          "tokens and no batch was given", "tokens")
    else:
        s = batch_answer((), tokens, ref_d, ref_b)
    if stage is not None and stage.noise is not None:
        bn = stage.noise.at(tokens)
        where = "above" if s.value > bn * 1.05 else "below" if s.value < bn / 1.05 else "at"
        notes.append(f"batch: the critical batch (the gradient noise scale measured at the base width, "
                     f"{stage.noise.law()}) is about {bn:.3g} tokens at the target's {tokens:.3g} "
                     f"tokens; the batch ({s.value:.3g}) is {where} it. Past it a larger batch saves few steps for "
                     "its tokens (McCandlish et al. 2018)")
    seqs = max(1, round(s.value / per_seq))
    if not math.isclose(seqs * per_seq, s.value):
        s = TargetSetting(s.name, seqs * per_seq, s.interval, s.measured,
                          s.source + f"; rounded to {seqs} whole sequences", s.unit)
    return s, notes


def _lr_setting(cfg: TuneConfig, stage: HorizonStage | None, reference: tuple[float, float],
                target: tuple[float, float], width_lr: tuple[float, tuple[float, float], str]) -> TargetSetting:
    value, iv, width_source = width_lr
    measured = stage is not None
    if stage is not None:
        try:
            shift = lr_shift(stage.cells, reference, target, noise=stage.noise, optimizer=cfg.optimizer)
        except ValueError as exc:  # too few optima inside their scans: the trials stay stored, the rules answer
            shift = prior_lr_shift(reference, target, cfg.optimizer)
            shift = replace(shift, source=f"{shift.source}; stage 3 gave no law ({exc})")
            measured = False
    elif math.isclose(target[0], reference[0]) and math.isclose(target[1], reference[1]):
        return TargetSetting("lr", 2.0 ** value, (2.0 ** iv[0], 2.0 ** iv[1]), True,
                             f"width: {width_source}; tokens and batch: the proxies'", "")
    else:
        shift = prior_lr_shift(reference, target, cfg.optimizer)
    v, (lo, hi) = _combine(value, iv, shift)
    far = target[0] / max(c.tokens for c in stage.cells) if measured else 1.0
    extra = (f"; the target's tokens are {far:.3g}x the longest horizon measured: the law is extrapolated that far"
             if far > 1.0 + 1e-9 else "")
    return TargetSetting("lr", 2.0 ** v, (2.0 ** lo, 2.0 ** hi), measured,
                         f"width: {width_source}; tokens and batch ({shift.shift:+.2f} octaves): {shift.source}{extra}")


def _wd_setting(tc: TrainConfig, stage: HorizonStage | None, lr0: float, lr: float, batch: float,
                tokens: float) -> TargetSetting:
    """The target's weight decay: the timescale measured in stage 3 carried; else the proxies' weight decay with its
    timescale at ``lr0`` (the proxies' LR) carried, not tuned."""
    wd = stage.weight_decay if stage is not None else None
    if wd is not None:
        value = timescale_wd(wd.tau, lr, batch, tokens)
        lo, hi = (value + (x - wd.log2_wd) for x in wd.log2_wd_interval)
        check = (f"; checked at {wd.check_at:.3g} tokens: {wd.verdict}" if wd.check_at
                 else "; not checked at a second horizon")
        if wd.tuned_edge:
            check += (f"; the tuned weight decay is the {wd.tuned_edge} end of horizon.weight_decay's grid, so a "
                      "bound: extend the grid that way")
        return TargetSetting("weight_decay", 2.0 ** value, (2.0 ** lo, 2.0 ** hi), True,
                             f"measured: tuned at {wd.tuned_at:.3g} tokens (log2 {wd.log2_wd:.2f}), its AdamW "
                             f"timescale tau = B / (lr wd D) = {wd.tau:.3g} of training kept (Wang & Aitchison 2024; "
                             f"Bergsma et al. 2025){check}")
    if tc.weight_decay <= 0:
        return TargetSetting("weight_decay", 0.0, None, False, "the proxies trained without weight decay: none was "
                             "tuned (set horizon.weight_decay to tune it)")
    ref_b, ref_d = float(tc.tokens_per_step()), float(tc.steps * tc.tokens_per_step())
    tau = ref_b / (lr0 * tc.weight_decay * ref_d)
    value = 2.0 ** timescale_wd(tau, lr, batch, tokens)
    return TargetSetting("weight_decay", value, None, False,
                         f"not measured: the proxies' weight decay {tc.weight_decay:g}, not tuned, with its AdamW "
                         f"timescale ({tau:.3g} of training at the proxies' LR) kept (Wang & Aitchison 2024); set "
                         "horizon.weight_decay to tune it")


def target_settings(cfg: TuneConfig, stage: HorizonStage | None,
                    width_lr: tuple[float, tuple[float, float], str]) -> tuple[tuple[TargetSetting, ...], list[str]]:
    """The target run's settings (lr, batch_tokens, steps, weight_decay, warmup, beta2) and notes, from the width
    answer ``width_lr`` (log2 value, interval, source) and stage 3 (None: the published rules, named)."""
    tc = proxy_train(cfg)
    tokens, given = target_tokens_batch(cfg, tc)
    reference = (float(tc.steps * tc.tokens_per_step()), float(tc.tokens_per_step()))
    batch, notes = _batch_setting(cfg, tc, stage, tokens, given)
    lr = _lr_setting(cfg, stage, reference, (tokens, batch.value), width_lr)
    steps = max(1, round(tokens / batch.value))
    k = batch.value / reference[1]
    beta2 = tc.betas[1]
    b2 = TargetSetting("beta2", beta2, None, False, "the proxies' beta2: the batch does not change")
    if not math.isclose(k, 1.0):
        b2 = TargetSetting("beta2", beta2 ** k, None, False,
                           f"not measured: the proxies' beta2 {beta2:g} with its half-life in tokens kept (beta2^k "
                           f"for a batch k = {k:.3g}x the proxies'; Busbridge et al. 2023's EMA rule, as in Marek et "
                           f"al. 2025 on small batches); the square-root rule of Malladi et al. 2022 would give "
                           f"{max(0.0, sqrt_rule_beta(beta2, k)):.4g}")
    warm = tc.warmup_steps / tc.steps
    settings = (
        lr, batch,
        TargetSetting("steps", float(steps), None, False, f"the target's tokens {tokens:.4g} / its batch", ""),
        _wd_setting(tc, stage, 2.0 ** width_lr[0], lr.value, batch.value, tokens),
        TargetSetting("warmup", warm, None, False, f"not measured: the proxies' warmup, {warm:.3g} of the steps, kept "
                      f"as a fraction ({round(warm * steps)} steps of the target)", "fraction of steps"),
        b2,
    )
    return settings, notes

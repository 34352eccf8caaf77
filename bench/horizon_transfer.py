"""B7: horizon and batch transfer. Does tune's LR for a run 16x longer than its longest proxy, at an 8x larger
batch and a wider width, land on the optimum measured there?

1. Width proxies (muP, default constants) at the base tokens and batch: LR scans at widths 32 and 64, 2 seeds;
   the width answer at the target width (analysis.carry: pooled unless the verdict resolved a drift).
2. Stage 3 of ``tune`` at the base width 32: LR scans at horizons 1x, 2x, 4x the base tokens (H = the longest)
   and batches 1x, 2x the base batch (B = the largest), 2 seeds; a weight-decay scan at the shortest and longest
   horizon; the gradient noise scale at every horizon (the critical batch); the law LR*(D, B) (steps plus the
   critical-batch factor), B_opt(D) and the AdamW timescale (tune.horizon).
3. The target: width 128 (2 doublings past the widest proxy), tokens 16 H, batch 8 B. An LR grid there at half
   octaves, 4 seeds, grown until its best seed-mean point is inside; then each method's LR trained there, 4 seeds
   (the seed spread there is about the goal's 1%: 2 seeds could not resolve it):
   - proxytune: the width answer moved by the measured law;
   - the proxy's LR unchanged (the width answer at the proxies' tokens and batch);
   - Bjorck et al. 2024's horizon rule (lr ∝ D^-0.32 from the proxies' tokens; batch not moved);
   - Step Law (Li et al. 2025): lr = 1.79 N^-0.713 D^0.307, N non-embedding parameters, used as the base LR.
   Regret: the method's seed-mean loss over the best measured seed-mean grid point, in percent.
4. Weight decay at the target: the proxies' tuned wd carried by the AdamW timescale against the same wd carried
   unchanged, each at proxytune's LR, 4 seeds.

    python bench/horizon_transfer.py            # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit, provenance

from proxytune.analysis.carry import carry_lr
from proxytune.analysis.optimum import find_optimum
from proxytune.analysis.predict import count_params
from proxytune.analysis.rules_of_thumb import steplaw_lr, token_horizon_lr
from proxytune.tune import Tuner
from proxytune.tune.config import TuneConfig
from proxytune.tune.horizon import run_horizon_stage, target_settings
from proxytune.tune.search import LR_AXIS

BASE_W, WIDTHS, TARGET_W, DEPTH = 32, (32, 64), 128, 2
STEPS, BATCH, SEQ = 64, 8, 32
HORIZONS, BATCHES = (1.0, 2.0, 4.0), (1.0, 2.0)
WD_GRID = {"start": -10, "stop": 2, "step": 1}
SEEDS = (0, 1)  # the proxies' (tune's default horizon.seeds)
# the target's: its seed spread (about 1% of the loss) is the goal's size, so 2 seeds could not resolve it
TARGET_SEEDS = (0, 1, 2, 3)


def config(runs: str) -> TuneConfig:
    h, b = max(HORIZONS), max(BATCHES)
    return TuneConfig.from_dict({
        "name": "b7", "model": "gpt", "model_options": {"head_dim": 16}, "recipes": ["mup"],
        "base": {"width": BASE_W, "depth": DEPTH}, "widths": [w for w in WIDTHS if w > BASE_W] + [2 * WIDTHS[-1]],
        "target": {"width": TARGET_W, "depth": DEPTH, "tokens": 16 * h * STEPS * BATCH * SEQ,
                   "batch": int(8 * b * BATCH)},
        "horizon": {"horizons": list(HORIZONS), "batches": list(BATCHES), "weight_decay": WD_GRID, "span": 1.5},
        "train": {"steps": STEPS, "batch_size": BATCH, "seq_len": SEQ, "eval_every": STEPS, "eval_batches": 8,
                  "weight_decay": 2.0 ** -6},
        "verify": {"seeds": len(SEEDS), "span": 1.5, "step": 0.5},
        "executor": {"workers": 2, "threads": 1, "batch": 8}, "runs_dir": runs})


def width_answer(tuner: Tuner) -> tuple[float, tuple[float, float], str, Any]:
    """LR scans at the width proxies (base tokens and batch), carried to the target width."""
    optima, _ = tuner._verify("mup", {LR_AXIS: -7.0}, list(WIDTHS), [x / 2 for x in range(-20, -7)])
    ok = [o for o in optima if math.isfinite(o.value)]
    c = carry_lr(ok, [math.log2(o.group["width"]) for o in ok], math.log2(TARGET_W), target_size=TARGET_W,
                 recipe="mup", size_name="width")
    return c.value, c.interval, c.source, c.verdict


def target_points(fields: dict[str, Any], lrs: list[float], extra: dict[str, Any] | None = None) -> list[dict]:
    return [{"width": TARGET_W, **fields, LR_AXIS: round(x, 6), "seed": s, **(extra or {})}
            for x in lrs for s in TARGET_SEEDS]


def measure_grid(tuner: Tuner, fields: dict[str, Any], center: float, span: float) -> Any:
    """The target's LR grid (half octaves around ``center``), grown until its best point is inside."""
    lrs = [center + k * 0.5 for k in range(-int(2 * span), int(2 * span) + 1)]
    for _ in range(6):
        recs = tuner._run(tuner._sweep("target", "mup", fixed=fields, points=target_points(fields, lrs)),
                          "B7 target: LR grid")
        rows = [r for r in recs if r.get("width") == TARGET_W and "log2_weight_decay" not in r
                and round(float(r[LR_AXIS]), 6) in {round(x, 6) for x in lrs}]
        o = find_optimum(rows, LR_AXIS)
        if o.edge is None:
            return o, recs
        lrs += [min(lrs) - 0.5, min(lrs) - 1.0] if o.edge == "low" else [max(lrs) + 0.5, max(lrs) + 1.0]
    return o, recs


def seed_mean(recs: list[dict], lr: float, wd: float | None = None) -> float:
    vals = [r["val_loss"] for r in recs if r.get("width") == TARGET_W and abs(float(r[LR_AXIS]) - lr) < 1e-6
            and (wd is None or abs(float(r.get("log2_weight_decay", math.nan)) - wd) < 1e-6)
            and r.get("val_loss") is not None]
    return statistics.fmean(vals) if len(vals) == len(TARGET_SEEDS) else math.nan


def seed_se(recs: list[dict], lr: float) -> float:
    """The standard error of the seed mean at ``lr`` (the seeds' standard deviation / sqrt(seeds))."""
    vals = [r["val_loss"] for r in recs if r.get("width") == TARGET_W and abs(float(r[LR_AXIS]) - lr) < 1e-6
            and "log2_weight_decay" not in r and r.get("val_loss") is not None]
    return statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-horizon"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg = config(args.runs)
    tuner = Tuner(cfg, log=lambda m: print(m, flush=True))
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    w_value, w_iv, w_source, verdict = width_answer(tuner)
    stage = run_horizon_stage(tuner, "mup", {LR_AXIS: w_value}, {}, center=w_value)
    settings, notes = target_settings(cfg, stage, (w_value, w_iv, w_source))
    by = {s.name: s for s in settings}
    tokens, batch_tokens = by["steps"].value * by["batch_tokens"].value, by["batch_tokens"].value
    fields = {"steps": int(by["steps"].value), "batch_size": int(batch_tokens / SEQ), "weight_decay": 2.0 ** -6}
    d0 = STEPS * BATCH * SEQ
    n_target = count_params("gpt", TARGET_W, DEPTH, {"head_dim": 16, "seq_len": SEQ})
    n_embed = 2 * 256 * TARGET_W  # the byte embedding and readout of the reference GPT
    methods = {
        "proxytune": math.log2(by["lr"].value),
        "proxy LR unchanged": w_value,
        "Bjorck et al. horizon rule": math.log2(token_horizon_lr(2.0 ** w_value, d0, tokens)),
        "Step Law": math.log2(steplaw_lr(n_target - n_embed, tokens)),
    }
    lo, hi = min(methods.values()), max(methods.values())
    best, recs = measure_grid(tuner, fields, round((lo + hi) / 2 * 2) / 2, max(1.5, (hi - lo) / 2 + 0.5))
    recs = tuner._run(tuner._sweep("target", "mup", fixed=fields, points=[
        *target_points(fields, best.grid), *target_points(fields, list(methods.values()))]), "B7 target: methods")
    grid_best = min((seed_mean(recs, x), x) for x in best.grid if math.isfinite(seed_mean(recs, x)))
    rows = {m: seed_mean(recs, x) for m, x in methods.items()}
    ses = {m: seed_se(recs, x) for m, x in methods.items()} | {"grid best": seed_se(recs, grid_best[1])}
    wd = _wd_check(tuner, fields, by, stage, methods["proxytune"])
    lines = _lines(cfg, stage, verdict, by, methods, rows, ses, grid_best, best, wd, tokens, batch_tokens, t0)
    emit(lines, "B7. Horizon and batch transfer (CPU)", not args.no_write)


def _wd_check(tuner: Tuner, fields: dict[str, Any], by: dict[str, Any], stage: Any, lr: float) -> dict[str, Any]:
    """At the target, proxytune's LR: the wd carried by the timescale against the tuned wd unchanged."""
    wd = stage.weight_decay
    if wd is None:
        return {}
    carried, unchanged = math.log2(by["weight_decay"].value), wd.log2_wd
    pts = [p for x in (carried, unchanged) for p in target_points(
        {k: v for k, v in fields.items() if k != "weight_decay"}, [lr], {"log2_weight_decay": round(x, 6)})]
    recs = tuner._run(tuner._sweep("target-wd", "mup", points=pts), "B7 target: weight decay")
    return {"carried": (carried, seed_mean(recs, lr, round(carried, 6))),
            "unchanged": (unchanged, seed_mean(recs, lr, round(unchanged, 6))), "check": wd.verdict, "tau": wd.tau}


def _lines(cfg: TuneConfig, stage: Any, verdict: Any, by: dict[str, Any], methods: dict[str, float],
           rows: dict[str, float], ses: dict[str, float], grid_best: tuple[float, float], best: Any,
           wd: dict[str, Any], tokens: float,
           batch_tokens: float, t0: float) -> list[str]:
    """Many parameters because: the figures of one benchmark, gathered for its section."""
    g_loss, g_lr = grid_best
    h = max(c.tokens for c in stage.cells)
    bmax = max(c.batch_tokens for c in stage.cells)
    out = [
        provenance("horizon_transfer.py", "cpu", 1),
        f"Reference GPT depth {DEPTH}, head dim 16, muP with default constants, AdamW (0.9, 0.95), warmup 10% + "
        f"cosine, seq {SEQ}. Width proxies {', '.join(map(str, WIDTHS))} at {STEPS} steps x batch {BATCH}; stage 3 "
        f"at width {BASE_W}: horizons {', '.join(f'{x:g}x' for x in HORIZONS)} ({STEPS * BATCH * SEQ:,} .. "
        f"{h:,.0f} tokens, H = {h:,.0f}) x batches {', '.join(f'{x:g}x' for x in BATCHES)} (up to B = "
        f"{bmax:,.0f} tokens per step), LR scans of 1.5 octaves either side at half octaves, grown at an edge, "
        f"{len(SEEDS)} seeds. Target: width {TARGET_W}, {tokens:,.0f} tokens ({tokens / h:.0f} H), batch "
        f"{batch_tokens:,.0f} tokens ({batch_tokens / bmax:.0f} B), {int(by['steps'].value)} steps; measured with "
        f"an LR grid at half octaves ({len(best.grid)} points, best inside) and at each method's LR, {len(TARGET_SEEDS)} "
        f"seeds. Wall time {(time.perf_counter() - t0) / 60:.0f} min.",
        "",
        f"Width transfer of the proxies: {verdict.line if verdict else 'one width'}.",
        f"Stage 3's law: {by['lr'].source.split('tokens and batch')[1]}",
        "",
        "| method | log2 lr at the target | seed-mean loss there (standard error) | regret vs best measured |",
        "|---|---|---|---|",
    ]
    for m, x in methods.items():
        loss = rows[m]
        out.append(f"| {m} | {x:.2f} | {loss:.4f} ({ses[m]:.4f}) | {100 * (loss - g_loss) / g_loss:+.2f}% |")
    out += ["", f"Best measured grid point at the target: log2 lr {g_lr:g}, seed-mean loss {g_loss:.4f} (fitted "
                f"optimum {best.value:.2f}, 90% {best.interval[0]:.2f} .. {best.interval[1]:.2f}; fitted loss "
                f"{best.loss:.4f}); standard error of the seed mean there: {ses['grid best']:.4f}."]
    regret = 100 * (rows["proxytune"] - g_loss) / g_loss
    beats = all(rows["proxytune"] <= v for m, v in rows.items() if m != "proxytune")
    out.append(f"Goal: regret at most 1% ({regret:+.2f}%: {'met' if regret <= 1 else 'not met'}) and lower than every "
               f"baseline ({'met' if beats else 'not met'}).")
    rival = min((v, m) for m, v in rows.items() if m != "proxytune")
    gap = rows["proxytune"] - rival[0]
    se = math.hypot(ses["proxytune"], ses[rival[1]])
    out.append(f"Against the best baseline ({rival[1]}): {gap:+.4f} nats, standard error {se:.4f} "
               f"({'within' if abs(gap) < 2 * se else 'outside'} 2 standard errors).")
    if wd:
        (cw, cl), (uw, ul) = wd["carried"], wd["unchanged"]
        out.append(f"Weight decay at the target, proxytune's LR: carried by the AdamW timescale (tau {wd['tau']:.3g}) "
                   f"log2 wd {cw:.2f}: loss {cl:.4f}; the tuned wd unchanged, log2 {uw:.2f}: loss {ul:.4f}. "
                   f"At stage 3's second horizon: {wd['check']}.")
    return out


if __name__ == "__main__":
    main()

"""u-muP benchmarks: its B1 rows, the HP-interdependence measurement, and simulated fp8.

B1 rows (same model, data, steps, widths and seeds as ``bench/transfer.py``; u-muP's LR is absolute and its
optimum sits near 1, so its grid is the same 9 octaves moved to -5 .. +3):

- ``u-mup``: every named HP at 1 (u-muP's claim: the defaults are near-optimal);
- ``u-mup-tuned``: its named HPs (attn_mult, act_mult, residual_mult, residual_attn_ratio, and
  loss_softmax_mult = output_mult) tuned at width 32 by stage 1 of ``proxytune tune`` (TPE), then
  transferred.

Interdependence (u-muP's argument for one-at-a-time sweeps): at width 64 (base 32), the optimal log2 LR with
``attn_mult`` and with ``residual_mult`` at 0.25, 1 and 4, for u-muP and for muP; how far the LR optimum
moves when another HP changes.

fp8: the loss after 100 and 300 steps at each recipe's best B1 LR, fp32 vs ``precision="fp8-sim"``.

    python bench/umup.py --runs DIR             # everything (about 1.5 h on 2 CPU cores)
    python bench/umup.py --runs DIR --part hp   # one part: b1, hp or fp8
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit, optima_cell, provenance, run_sweep
from b1_rows import PRESETS, row_sweep, train_fields

from proxytune.analysis.optimum import optima_by_group
from proxytune.analysis.verdict import transfer_verdict
from proxytune.tune import TuneConfig, Tuner

UMUP_LR = {"start": -5, "stop": 3, "step": 1}
NAMED = ["attn_mult", "act_mult", "residual_mult", "residual_attn_ratio", "output_mult"]
# the other B1 rows, from the 2026-12-03 run in BENCHMARKS.md (same model, data, steps, widths, seeds)
B1_BEST_AT_256 = 2.0628  # best loss at 256 of any row swept there (SP per-layer + tuned constants)
B1_MUP_DEFAULT_AT_256 = 2.3335  # muP, one global LR, transferred
B1_SP_AT_256 = 2.3044  # SP swept at 256


def stage1_constants(runs: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 1 of ``tune`` for u-muP's named HPs at the B1 base; returns (constants, stage-1 summary)."""
    from proxytune.tune.run import constants_of

    p = PRESETS["cpu"]
    train = {k: v for k, v in train_fields("cpu").items() if k != "depth"}
    cfg = TuneConfig.from_dict({
        "name": "b1-cpu-umup-tune", "model": "gpt", "data": "stdlib", "optimizer": "adamw",
        "base": {"width": p["widths"][0], "depth": p["depth"]}, "widths": p["widths"][1:], "recipes": ["u-mup"],
        "train": train, "search": {"lr": UMUP_LR, "multipliers": NAMED},
        "executor": {"workers": p["workers"], "threads": p["threads"], "batch": 1}, "runs_dir": runs,
    })
    t = time.perf_counter()
    s1 = Tuner(cfg).stage1()
    print(f"u-mup stage 1: {time.perf_counter() - t:.0f} s", flush=True)
    return constants_of(s1.winner.setting), s1


def part_b1(runs: str, write: bool) -> None:
    p = PRESETS["cpu"]
    large, small = p["widths"][-1], p["widths"][0]
    t0 = time.perf_counter()
    rows = {"u-mup": run_sweep(row_sweep("cpu", "u-mup", "u-mup", runs, lr=UMUP_LR))}
    constants, s1 = stage1_constants(runs)
    rows["u-mup-tuned"] = run_sweep(row_sweep("cpu", "u-mup-tuned", "u-mup", runs, constants=constants, lr=UMUP_LR))
    labels = {"u-mup": "u-muP, every named HP at 1", "u-mup-tuned": "u-muP, named HPs tuned at 32, transferred"}
    lines = [provenance("umup.py", "cpu", p["threads"]),
             f"Same model, data, steps, widths and seeds as B1 above (reference GPT depth {p['depth']}, widths "
             f"{p['widths']}, 300 steps, batch 16 x 64, AdamW, 2 seeds); u-muP's LR is absolute (optimal near 1), "
             f"so its grid is log2 lr {UMUP_LR['start']} .. {UMUP_LR['stop']}, refined by half octaves. "
             f"Took {(time.perf_counter() - t0) / 60:.0f} min.",
             "",
             f"Tuned named HPs (stage 1 of `tune` at width {small}, TPE, {s1.trials} trials): "
             + (", ".join(f"`{k}: {v:.3g}`" for k, v in constants.items()) or "none differ from 1")
             + f"; fresh-seed loss at {small}: {s1.winner.mean:.4f} vs defaults {s1.control.mean:.4f}.",
             "",
             f"| row | log2 lr* per width (90% interval) | drift per doubling (90%) | loss at {large}, transferred | "
             f"regret vs best of B1 at {large} ({B1_BEST_AT_256}) | wider is better | verdict |",
             "|---|---|---|---|---|---|---|"]
    loss_at = {}
    for row, recs in rows.items():
        ops = optima_by_group(recs, "log2_lr", size_axes=["width"])
        v = transfer_verdict(ops, "width")
        at = {o.group["width"]: o for o in ops}
        tl = at[large].loss_at(at[small].value)
        loss_at[row] = tl
        lines.append(f"| {labels[row]} | {optima_cell(ops, 'width')} | {v.drift_per_doubling:+.2f} "
                     f"({v.drift_interval[0]:+.2f}...{v.drift_interval[1]:+.2f}) | {tl:.4f} | "
                     f"{(tl - B1_BEST_AT_256) / B1_BEST_AT_256:+.2%} | {v.wider_is_better} | {v.state} |")
    d, t = loss_at["u-mup"], loss_at["u-mup-tuned"]
    lines += ["",
              f"Defaults vs tuned at {large}: {d:.4f} vs {t:.4f} ({(d - t) / t:+.2%} for leaving every named HP "
              f"at 1). For scale: muP with default constants {B1_MUP_DEFAULT_AT_256} "
              f"({(d - B1_MUP_DEFAULT_AT_256) / B1_MUP_DEFAULT_AT_256:+.2%} for u-muP's defaults), SP swept at "
              f"{large} {B1_SP_AT_256}."]
    emit(lines, "B1c. u-muP width transfer (CPU)", write)


def part_hp(runs: str, write: bool) -> None:
    """The LR optimum with attn_mult / residual_mult at 0.25, 1, 4: u-muP vs muP, width 64, base 32."""
    p = PRESETS["cpu"]
    t0 = time.perf_counter()
    grids = {"u-mup": {"start": -4, "stop": 2, "step": 1}, "mup": {"start": -10, "stop": -4, "step": 1}}
    lines = [provenance("umup.py", "cpu", p["threads"]),
             "Reference GPT width 64 (base 32), depth 2, 300 steps, batch 16 x 64, AdamW, 2 seeds; each HP at 0.25, "
             "1 and 4 with the others at 1; a 7-octave LR grid refined by half octaves. Shift: the optimum's move "
             "from its value at 1, in octaves (90% interval of the difference from the two optima's intervals, "
             "combined in quadrature).",
             "",
             "| recipe | HP | log2 lr* at 0.25 | at 1 | at 4 | largest shift (octaves) | best loss at 0.25 / 1 / 4 |",
             "|---|---|---|---|---|---|---|"]
    for recipe, grid in grids.items():
        for hp in ("attn_mult", "residual_mult"):
            d = {"name": f"hp-{recipe}-{hp}", "model": "gpt", "data": "stdlib", "recipe": recipe,
                 "optimizer": "adamw", "base": {"width": 32, "depth": p["depth"]},
                 "axes": {hp: [0.25, 1.0, 4.0], "log2_lr": grid, "seed": [0, 1]},
                 "train": {**train_fields("cpu"), "width": 64},
                 "executor": {"workers": p["workers"], "threads": p["threads"], "batch": 8}, "runs_dir": runs}
            recs = run_sweep(d)
            ops = {o.group[hp]: o for o in optima_by_group(recs, "log2_lr", size_axes=[hp])}
            mid = ops[1.0]
            shifts = []
            for v in (0.25, 4.0):
                o = ops[v]
                half = math.hypot((o.interval[1] - o.interval[0]) / 2, (mid.interval[1] - mid.interval[0]) / 2)
                shifts.append((abs(o.value - mid.value), o.value - mid.value, half))
            big = max(shifts)
            cell = lambda o: f"{o.value:.2f} ({o.interval[0]:.2f}..{o.interval[1]:.2f})" + ("*" if o.edge else "")
            lines.append(f"| {recipe} | {hp} | {cell(ops[0.25])} | {cell(mid)} | {cell(ops[4.0])} | "
                         f"{big[1]:+.2f} (+-{big[2]:.2f}) | {ops[0.25].loss:.4f} / {mid.loss:.4f} / "
                         f"{ops[4.0].loss:.4f} |")
    lines += ["", f"Took {(time.perf_counter() - t0) / 60:.0f} min. `*`: optimum on the grid edge."]
    emit(lines, "B1d. HP interdependence: u-muP vs muP (CPU)", write)


def part_fp8(runs: str, write: bool) -> None:
    """Loss after 100 and 300 steps, fp32 vs simulated fp8, at each recipe's best LR on B1's width 64."""
    from proxytune.train import TrainConfig, train

    t0 = time.perf_counter()
    lrs = {"sp": -9.0, "mup": -8.0, "u-mup": 0.0}  # near each recipe's B1 optimum at width 64
    lines = [provenance("umup.py", "cpu", 1),
             "Reference GPT width 64 (base 32), depth 2, batch 16 x 64, AdamW, warmup 10% + cosine; each recipe at "
             "its B1 optimum at width 64, rounded to an octave (log2 lr: SP -9, muP -8, u-muP 0); seeds 0 and 1, mean loss (difference of the "
             "means; seed-to-seed spread beside it). fp8-sim: every linear layer's input and weight cast to "
             "float8_e4m3fn and back, gradients to float8_e5m2.",
             "",
             "| recipe | steps | fp32 loss | fp8-sim loss | change | seed spread (fp32, max - min) |",
             "|---|---|---|---|---|---|"]
    for recipe, lr in lrs.items():
        for steps in (100, 300):
            res = {}
            for prec in ("fp32", "fp8-sim"):
                vals = []
                for seed in (0, 1):
                    cfg = TrainConfig(recipe=recipe, width=64, depth=2, base_width=32, base_depth=2, steps=steps,
                                      batch_size=16, seq_len=64, lr=2.0 ** lr, eval_every=steps, eval_batches=8,
                                      precision=prec, seed=seed, threads=1, warmup=0.1, schedule="cosine",
                                      final_lr_frac=0.1)
                    vals.append(train(cfg).final_val_loss)
                res[prec] = vals
            a, b = sum(res["fp32"]) / 2, sum(res["fp8-sim"]) / 2
            lines.append(f"| {recipe} | {steps} | {a:.4f} | {b:.4f} | {(b - a) / a:+.2%} | "
                         f"{max(res['fp32']) - min(res['fp32']):.4f} |")
    lines += ["", f"Took {(time.perf_counter() - t0) / 60:.0f} min."]
    emit(lines, "B1e. Simulated fp8 (CPU)", write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-umup"))
    ap.add_argument("--part", choices=["all", "b1", "hp", "fp8"], default="all")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    for name, fn in (("fp8", part_fp8), ("hp", part_hp), ("b1", part_b1)):
        if args.part in ("all", name):
            fn(args.runs, not args.no_write)


if __name__ == "__main__":
    main()

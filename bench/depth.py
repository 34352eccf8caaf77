"""B2: depth transfer. Does the optimal LR found on a shallow proxy stay put as blocks are added?

The reference GPT at a fixed width, a grid sweep of the log2 LR at every depth (refined by half octaves near
each optimum), 2 seeds, one row per parameterization:

- ``mup``: muP in width only (no depth rule): residual branches unscaled, LRs independent of depth;
- ``depth-mup``: branches x ``L^-1/2`` (Bordelon et al. 2023; Yang et al. 2023), Adam LR x ``L^-1/2``
  in blocks;
- ``completep``: branches x ``L^-1`` (CompleteP, Dey et al. 2025), Adam LR unchanged in blocks;
- ``completep-muon``: CompleteP with Muon on the hidden matrices (AdamW on the rest). The depth rule for
  Muon is the one for any update whose size does not depend on the gradient's scale: each block's update must
  move the residual stream by O(1/L), and a branch multiplier ``L^-alpha`` already scales it, so the block
  LR goes as ``L^(alpha - 1)``: unchanged under CompleteP (alpha 1), ``L^-1/2`` under depth-muP.

Per row: the optimum per depth (90% interval), the drift of the optimum (total over the depth range and per
doubling), the loss at the deepest model with the LR of the shallowest, its regret against that row's own
optimum at the deepest and against the best of any row there, and whether deeper is better at the transferred
LR.

    python bench/depth.py                  # CPU preset: width 64, depths 2..16, 200 steps, 2 seeds
    python bench/depth.py --preset gpu     # width 256, depths 4..48 on a CUDA machine
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from _common import ROOT, close_section, optima_cell, provenance

from proxytune.analysis.optimum import optima_by_group
from proxytune.analysis.verdict import transfer_verdict
from proxytune.sweep import Sweep, SweepConfig

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"width": 64, "depths": [2, 4, 8, 16], "lr": {"start": -11, "stop": -3, "step": 1}, "seeds": 2,
            "workers": 2, "threads": 1,
            "train": {"steps": 200, "batch_size": 16, "seq_len": 64, "eval_every": 200, "eval_batches": 8}},
    "gpu": {"width": 256, "depths": [4, 8, 16, 32, 48], "lr": {"start": -13, "stop": -3, "step": 1}, "seeds": 2,
            "workers": 1, "threads": 4,
            "train": {"steps": 2000, "batch_size": 32, "seq_len": 256, "eval_every": 500, "eval_batches": 16,
                      "device": "cuda", "precision": "bf16"}},
}
ROWS = {"mup": ("mup", "adamw", "muP (no depth rule), AdamW"),
        "depth-mup": ("depth-mup", "adamw", "depth-muP (branch x L^-1/2), AdamW"),
        "completep": ("completep", "adamw", "CompleteP (branch x L^-1), AdamW"),
        "completep-muon": ("completep", "muon", "CompleteP, Muon on hidden matrices")}


def preset_with(preset: str, steps: int | None = None, depths: list[int] | None = None,
                lr: list[float] | None = None, batch_size: int | None = None, qk_norm: bool = False,
                mode: str | None = None, residual: float | None = None) -> dict[str, Any]:
    """The preset, with its step count, depths, LR range or batch replaced (a horizon check runs the same rows
    longer; the base depth is the smallest depth), QK-norm in the model, the plan's mode, or the named
    residual multiplier (every branch's forward multiplier at the base)."""
    p = {**PRESETS[preset], "train": dict(PRESETS[preset]["train"]), "model_options": {}}
    if steps:
        p["train"].update(steps=steps, eval_every=steps)
    if depths:
        p["depths"] = sorted(depths)
    if lr:
        p["lr"] = {"start": lr[0], "stop": lr[1], "step": 1}
    if batch_size:
        p["train"]["batch_size"] = batch_size
    if qk_norm:
        p["model_options"]["qk_norm"] = True
    if mode:
        p["train"]["mode"] = mode
    if residual:
        p["train"]["residual_mult"] = residual
    return p


def variant_name(preset: str, steps: int | None = None, depths: list[int] | None = None,
                 lr: list[float] | None = None, batch_size: int | None = None, qk_norm: bool = False,
                 mode: str | None = None, residual: float | None = None) -> str:
    """The suffix that keeps each variant's stored sweeps apart (empty for the preset itself)."""
    p = preset_with(preset, steps, depths)
    return ((f"-s{steps}" if steps else "") + ("-d" + "-".join(map(str, p["depths"])) if depths else "")
            + (f"-lr{lr[0]:g}_{lr[1]:g}" if lr else "") + (f"-b{batch_size}" if batch_size else "")
            + ("-qkn" if qk_norm else "") + (f"-{mode}" if mode else "") + (f"-r{residual:g}" if residual else ""))


def row_sweep(preset: str, row: str, runs_dir: str, steps: int | None = None,
              depths: list[int] | None = None, lr: list[float] | None = None, batch_size: int | None = None,
              qk_norm: bool = False, mode: str | None = None, residual: float | None = None) -> dict[str, Any]:
    p = preset_with(preset, steps, depths, lr, batch_size, qk_norm, mode, residual)
    recipe, optimizer, _ = ROWS[row]
    gpu = p["train"].get("device") == "cuda"
    variant = variant_name(preset, steps, depths, lr, batch_size, qk_norm, mode, residual)
    return {
        "name": f"b2-{preset}-{row}{variant}", "model": "gpt", "data": "stdlib", "recipe": recipe, "optimizer": optimizer,
        "model_options": p["model_options"],
        "base": {"width": p["width"], "depth": p["depths"][0]},
        "axes": {"depth": p["depths"], "log2_lr": dict(p["lr"]), "seed": list(range(p["seeds"]))},
        "train": {"width": p["width"], "warmup": 0.1, "schedule": "cosine", "final_lr_frac": 0.1,
                  "betas": [0.9, 0.95], "weight_decay": 0.0, **p["train"]},
        "executor": {"workers": p["workers"], "threads": p["threads"], "batch": 8 if gpu else 1},
        "runs_dir": runs_dir,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-depth"))
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps", type=int, help="train this many steps instead of the preset's (horizon check)")
    ap.add_argument("--depths", type=int, nargs="*", help="these depths instead of the preset's (the smallest is "
                    "the base)")
    ap.add_argument("--lr", type=float, nargs=2, metavar=("START", "STOP"), help="log2 LR grid range (1 octave)")
    ap.add_argument("--batch-size", type=int, help="sequences per step instead of the preset's")
    ap.add_argument("--qk-norm", action="store_true", help="QK-norm in every attention")
    ap.add_argument("--mode", choices=["folded", "explicit"], help="the plan's mode (default: folded)")
    ap.add_argument("--residual", type=float, help="named residual multiplier (branch outputs x this at the base)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    var = dict(steps=args.steps, depths=args.depths, lr=args.lr, batch_size=args.batch_size, qk_norm=args.qk_norm,
               mode=args.mode, residual=args.residual)
    p = preset_with(args.preset, **var)
    shallow, deep = p["depths"][0], p["depths"][-1]
    t0 = time.perf_counter()
    records = {}
    for row in args.rows:
        t = time.perf_counter()
        sweep = Sweep(SweepConfig.from_dict(row_sweep(args.preset, row, args.runs, **var)))
        sweep.run()
        records[row] = sweep.records()
        print(f"{row}: {time.perf_counter() - t:.0f} s", flush=True)
    optima = {row: optima_by_group(recs, "log2_lr", size_axes=["depth"]) for row, recs in records.items()}
    verdicts = {row: transfer_verdict(ops, "depth") for row, ops in optima.items()}
    at = {row: {o.group["depth"]: o for o in ops} for row, ops in optima.items()}
    best_any = min(o.loss for ops in at.values() for d, o in ops.items() if d == deep and math.isfinite(o.loss))
    lines = [
        provenance("depth.py", "cuda" if args.preset == "gpu" else "cpu", p["threads"]),
        f"Reference GPT width {p['width']} (head dim 16{', QK-norm' if args.qk_norm else ''}), depths {p['depths']} (base depth {shallow}), "
        f"{p['train']['steps']} steps, batch {p['train']['batch_size']} x seq {p['train']['seq_len']}, warmup 10% + "
        f"cosine to 10%, betas (0.9, 0.95), no weight decay"
        f"{'; residual multiplier ' + format(args.residual, 'g') + ' at the base' if args.residual else ''}; log2 lr {p['lr']['start']} .. {p['lr']['stop']} "
        f"(1 octave, refined by half octaves near each optimum), {p['seeds']} seeds per point; plan mode "
        f"{p['train'].get('mode', 'folded')}, gradient clipping at 1.0 in explicit units. Everything took "
        f"{(time.perf_counter() - t0) / 60:.0f} min (stored sweeps are reused when the script is run again).",
        "",
        f"| row | log2 lr* per depth (90% interval) | drift over {shallow}->{deep} (octaves) | drift per doubling "
        f"(90%) | loss at depth {deep}, LR from depth {shallow} | regret vs own optimum (90%) | regret vs best "
        f"of any row | deeper is better | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, v in verdicts.items():
        tl = at[row][deep].loss_at(at[row][shallow].value)  # the shallowest's optimum used at the deepest
        lines.append(f"| {ROWS[row][2]} | {optima_cell(optima[row], 'depth')} | {v.drift:+.2f} | {v.drift_per_doubling:+.2f} "
                     f"({v.drift_interval[0]:+.2f}..{v.drift_interval[1]:+.2f}) | {tl:.4f} | "
                     f"{v.relative_regret:+.2%} ({v.regret_interval[0]:+.2%}..{v.regret_interval[1]:+.2%}) | "
                     f"{(tl - best_any) / best_any:+.2%} | {v.wider_is_better} | {v.state} |")
    lines += ["", f"Best loss at depth {deep} of any row: {best_any:.4f}. `*`: optimum on the grid edge. "
              "Drift is the least-squares slope of the optimum over log2 depth, times the number of doublings. "
              "Seed-to-seed spread: the 90% intervals come from resampling the two seeds' curves."]
    if "completep" in verdicts:
        c = verdicts["completep"]
        lines += ["", f"Goal (CompleteP, AdamW): drift at most 0.25 octave per doubling and deeper is better: "
                  f"{c.drift_per_doubling:+.2f} per doubling, deeper is better: {c.wider_is_better} -> "
                  f"{'met' if abs(c.drift_per_doubling) <= 0.25 and c.wider_is_better == 'yes' else 'not met'}."]
    if "completep" in verdicts and "mup" in verdicts:
        c, m = verdicts["completep"], verdicts["mup"]
        lines += ["", f"Goal (CompleteP): drift across depth at most 0.5 octave: {c.drift:+.2f} -> "
                  f"{'met' if abs(c.drift) <= 0.5 else 'not met'}; clearly larger for muP: {m.drift:+.2f} -> "
                  f"{'met' if abs(m.drift) > abs(c.drift) + 0.5 else 'not met'}."]
    variant = variant_name(args.preset, **var)
    title = "B2. Depth transfer" + (f", {p['train']['steps']} steps" if args.steps or args.depths else "")
    if args.depths or args.qk_norm or args.batch_size or args.mode or args.residual:
        title += (f", base depth {shallow}" + (", QK-norm" if args.qk_norm else "")
                  + (f", batch {args.batch_size}" if args.batch_size else "")
                  + (f", residual {args.residual:g}" if args.residual else "") + (f", {args.mode}" if args.mode else ""))
    close_section(lines, optima, {r: ROWS[r][2] for r in ROWS}, "depth", "depth" + variant.replace("-", "_"),
                  "B2 loss vs log2 lr per depth", title, args.preset, not args.no_write)


if __name__ == "__main__":
    main()

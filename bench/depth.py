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


def preset_with(preset: str, steps: int | None = None, depths: list[int] | None = None) -> dict[str, Any]:
    """The preset, with its step count or depths replaced (a horizon check runs the same rows longer)."""
    p = {**PRESETS[preset], "train": dict(PRESETS[preset]["train"])}
    if steps:
        p["train"].update(steps=steps, eval_every=steps)
    if depths:
        p["depths"] = sorted(depths)
    return p


def row_sweep(preset: str, row: str, runs_dir: str, steps: int | None = None,
              depths: list[int] | None = None) -> dict[str, Any]:
    p = preset_with(preset, steps, depths)
    recipe, optimizer, _ = ROWS[row]
    gpu = p["train"].get("device") == "cuda"
    variant = (f"-s{steps}" if steps else "") + ("-d" + "-".join(map(str, p["depths"])) if depths else "")
    return {
        "name": f"b2-{preset}-{row}{variant}", "model": "gpt", "data": "stdlib", "recipe": recipe, "optimizer": optimizer,
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
    ap.add_argument("--depths", type=int, nargs="*", help="these depths instead of the preset's")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    p = preset_with(args.preset, args.steps, args.depths)
    shallow, deep = p["depths"][0], p["depths"][-1]
    t0 = time.perf_counter()
    records = {}
    for row in args.rows:
        t = time.perf_counter()
        sweep = Sweep(SweepConfig.from_dict(row_sweep(args.preset, row, args.runs, args.steps, args.depths)))
        sweep.run()
        records[row] = sweep.records()
        print(f"{row}: {time.perf_counter() - t:.0f} s", flush=True)
    optima = {row: optima_by_group(recs, "log2_lr", size_axes=["depth"]) for row, recs in records.items()}
    verdicts = {row: transfer_verdict(ops, "depth") for row, ops in optima.items()}
    at = {row: {o.group["depth"]: o for o in ops} for row, ops in optima.items()}
    best_any = min(o.loss for ops in at.values() for d, o in ops.items() if d == deep and math.isfinite(o.loss))
    lines = [
        provenance("depth.py", "cuda" if args.preset == "gpu" else "cpu", p["threads"]),
        f"Reference GPT width {p['width']} (head dim 16), depths {p['depths']} (base depth {shallow}), "
        f"{p['train']['steps']} steps, batch {p['train']['batch_size']} x seq {p['train']['seq_len']}, warmup 10% + "
        f"cosine to 10%, betas (0.9, 0.95), no weight decay; log2 lr {p['lr']['start']} .. {p['lr']['stop']} "
        f"(1 octave, refined by half octaves near each optimum), {p['seeds']} seeds per point. Everything took "
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
    if "completep" in verdicts and "mup" in verdicts:
        c, m = verdicts["completep"], verdicts["mup"]
        lines += ["", f"Goal (CompleteP): drift across depth at most 0.5 octave: {c.drift:+.2f} -> "
                  f"{'met' if abs(c.drift) <= 0.5 else 'not met'}; clearly larger for muP: {m.drift:+.2f} -> "
                  f"{'met' if abs(m.drift) > abs(c.drift) + 0.5 else 'not met'}."]
    variant = f"_s{p['train']['steps']}" if args.steps or args.depths else ""
    close_section(lines, optima, {r: ROWS[r][2] for r in ROWS}, "depth", "depth" + variant, "B2 loss vs log2 lr per depth",
                  "B2. Depth transfer" + (f", {p['train']['steps']} steps" if args.steps or args.depths else ""),
                  args.preset, not args.no_write)


if __name__ == "__main__":
    main()

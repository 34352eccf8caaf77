"""B1: width transfer of the optimal learning rate, SP vs muP vs SP with per-layer exponents.

Grid sweeps (the same trainer, data, steps and grid for every recipe) of the
reference GPT over widths 8x apart and log2 learning rates; per recipe: the
optimum per width (local quadratic, 90% bootstrap interval), the drift of
the optimum, the regret at the largest width with the LR transferred from the
smallest, and the regret against the best loss any recipe reached there.

    python bench/transfer.py                # CPU preset (~10 min on 2 cores)
    python bench/transfer.py --preset gpu
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from _common import ROOT, provenance, write_section

from proxytune.analysis.optimum import optima_by_group
from proxytune.analysis.report import lr_curves_figure
from proxytune.analysis.verdict import transfer_verdict
from proxytune.sweep import Sweep, SweepConfig

PRESETS = {
    "cpu": {"widths": [32, 64, 128, 256], "lr": {"start": -10, "stop": -4, "step": 1}, "depth": 2, "workers": 2,
            "train": {"steps": 150, "batch_size": 16, "seq_len": 64, "eval_every": 150, "eval_batches": 8}},
    "gpu": {"widths": [128, 256, 512, 1024, 2048], "lr": {"start": -14, "stop": -5, "step": 1}, "depth": 4,
            "workers": 1, "train": {"steps": 2000, "batch_size": 32, "seq_len": 256, "eval_every": 500,
                                    "eval_batches": 16, "device": "cuda", "precision": "bf16"}},
}
RECIPES = {"sp": "SP, one global LR", "mup": "muP", "sp-perlayer": "SP, per-layer LR exponents (Everett)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-transfer"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    gpu = args.preset == "gpu"
    panels, verdicts = {}, {}
    t0 = time.perf_counter()
    for recipe, label in RECIPES.items():
        cfg = SweepConfig.from_dict({
            "name": f"transfer-{args.preset}-{recipe}", "model": "gpt", "recipe": recipe, "optimizer": "adamw",
            "base": {"width": p["widths"][0], "depth": p["depth"]},
            "axes": {"width": p["widths"], "log2_lr": p["lr"]},
            "train": {"depth": p["depth"], "warmup": 0.1, "schedule": "cosine", "betas": [0.9, 0.95], **p["train"]},
            "executor": {"workers": p["workers"], "threads": 1 if p["workers"] > 1 else 2, "batch": 8 if gpu else 1},
            "runs_dir": args.runs,
        })
        sweep = Sweep(cfg)
        sweep.run()
        panels[label] = optima_by_group(sweep.records(), "log2_lr", size_axes=["width"])
        verdicts[label] = transfer_verdict(panels[label], "width")
        print(f"{label}: {verdicts[label].line}", flush=True)
    elapsed = time.perf_counter() - t0
    largest = max(p["widths"])
    best_any = min(o.best_grid_loss for ops in panels.values() for o in ops if o.group["width"] == largest)
    fig = Path(ROOT / "bench" / f"transfer_{args.preset}.png")
    lr_curves_figure(panels, fig)
    lines = [
        provenance("transfer.py", "cuda" if gpu else "cpu", 1 if p["workers"] > 1 else 2),
        f"Reference GPT depth {p['depth']}, head dim 16, widths {p['widths']}, {p['train']['steps']} steps, batch "
        f"{p['train']['batch_size']} x seq {p['train']['seq_len']}, AdamW (0.9, 0.95), warmup 10% + cosine to 10%, "
        f"no weight decay, base width {p['widths'][0]}; log2 lr {p['lr']['start']} .. {p['lr']['stop']} "
        f"(1 octave), 1 seed; {p['workers']} workers. Sweeps took {elapsed / 60:.1f} min in all.",
        "",
        "| recipe | log2 lr* per width (90% interval) | drift (octaves) | per doubling | regret at largest "
        "(transferred from smallest) | regret vs best of any recipe | wider is better | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, ops in panels.items():
        v = verdicts[label]
        big = [o for o in ops if o.group["width"] == largest][0]
        transferred = big.loss_at(min(ops, key=lambda o: o.group["width"]).value)
        vs_any = (transferred - best_any) / best_any if math.isfinite(transferred) else math.inf
        per_width = ", ".join(f"{o.group['width']}: {o.value:.2f} ({o.interval[0]:.2f}..{o.interval[1]:.2f})"
                              + ("*" if o.notes else "") for o in ops)
        lines.append(f"| {label} | {per_width} | {v.drift:+.2f} | {v.drift_per_doubling:+.2f} | "
                     f"{v.regret:.4f} ({v.relative_regret:.2%}) | {vs_any:.2%} | {'yes' if v.wider_is_better else 'no'} "
                     f"| {'pass' if v.passed else 'fail'} |")
    notes = [f"{label} width {o.group['width']}: {n}" for label, ops in panels.items() for o in ops for n in o.notes]
    mup_drift = abs(verdicts["muP"].drift)
    sp_drift = abs(verdicts["SP, one global LR"].drift)
    lines += [
        "",
        f"Best loss at width {largest} over all recipes: {best_any:.4f}. `*`: see notes.",
        f"Goal (muP drift <= 0.5 octave and clearly smaller than SP's): muP {mup_drift:.2f}, SP {sp_drift:.2f} -> "
        f"{'met' if mup_drift <= 0.5 and mup_drift < sp_drift - 0.5 else 'not met'}.",
        "",
        f"![B1 loss vs log2 lr](bench/{fig.name})",
    ] + ([""] + [f"- {n}" for n in notes] if notes else [])
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", "B1. Width transfer" + (" (GPU)" if gpu else " (CPU)"), text)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

"""B1b: which stage-1 search finds better constants for its budget: one-at-a-time scans, TPE, or TPE with
successive halving?

Stage 1 of ``proxytune tune`` at the B1 base (width 32, 300 steps), with the same LR grid, multipliers and
finalist rule, once per strategy and search seed: ``oat`` (rounds of one-at-a-time scans around the current
best, as Everett et al. 2024 and u-muP suggest) and ``tpe`` (Optuna's TPE over every multiplier at once) with
the same number of trials, and ``halving`` (TPE's points under successive halving on the learning curves:
twice the trials, each cut at steps/9 and steps/3 unless in the best third there). Each run's finalists are re-run
on fresh seeds; the figures of merit are the mean fresh-seed loss of its chosen setting, against the defaults
(every multiplier 1) as control, and the stage's FLOPs (a cut trial's FLOPs count as far as it ran).

    python bench/tune_search.py                          # ~1 h on 2 cores
    python bench/tune_search.py --strategies tpe halving halving-1x
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import ROOT, provenance, write_section
from transfer import tune_config

from proxytune.tune import Tuner

SEARCH_SEEDS = (0, 10, 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-transfer"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--strategies", nargs="+", default=["oat", "tpe", "halving", "halving-1x"],
                    choices=["oat", "tpe", "halving", "halving-1x"],
                    help="halving-1x: successive halving that starts as many trials as tpe trains (not twice)")
    args = ap.parse_args()
    base = tune_config("cpu", args.runs)
    rows = []
    for strategy in args.strategies:
        for seed in SEARCH_SEEDS:
            # the default strategy's run with search seed 0 is the stage 1 of B1's tune run: same stored trials
            name = base.name if (strategy, seed) == (base.search.strategy, 0) else f"{base.name}-{strategy}-s{seed}"
            search = {"strategy": strategy, "seed": seed}
            if strategy == "halving":  # measured when twice the tpe budget was halving's default
                search = {**search, "n_trials": 2 * Tuner(base).oat_budget()}
            if strategy == "halving-1x":  # halving's default since
                search = {**search, "strategy": "halving", "n_trials": Tuner(base).oat_budget()}
            cfg = base.model_copy(update={"name": name, "search": base.search.model_copy(update=search)})
            t = time.perf_counter()
            tuner = Tuner(cfg, log=lambda m: print(m, flush=True))
            s1 = tuner.stage1()
            flops = sum(float(r.get("flops") or 0) for sw in tuner.sweeps.values() for r in sw.records()
                        if r.get("status") in ("complete", "diverged", "pruned"))
            rows.append({"strategy": strategy, "seed": seed, "trials": s1.trials, "flops": flops,
                         "winner": s1.winner.to_dict(), "control": s1.control.to_dict(),
                         "minutes": (time.perf_counter() - t) / 60})
            print(rows[-1], flush=True)
    lines = [
        provenance("tune_search.py", "cpu", 1),
        "Stage 1 of `proxytune tune` at the B1 base: reference GPT width 32, depth 2, 300 steps, batch 16 x 64, "
        f"AdamW; LR grid log2 -12..-4, multipliers {', '.join(base.search.multipliers)}; oat: "
        f"{base.search.rounds} rounds (scans over 2^-2..2^2, LR +-2 octaves) and a final LR scan; tpe: Optuna TPE "
        "over log2 lr (+-3 octaves around the grid's best) and every multiplier in 2^-3..2^3, the same number of "
        f"trials; halving: TPE's points, twice the trials, each cut at steps/9 and steps/3 unless in the best "
        "third of those that reached the cut; halving-1x: the same with as many trials started as tpe trains. "
        f"{base.search.finalists} finalists + the defaults re-run on "
        f"{base.search.seeds} fresh seeds.",
        "",
        "| strategy | search seed | trials | FLOPs | chosen setting | its loss, fresh seeds (std error) | "
        "defaults, same seeds | gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, c = r["winner"], r["control"]
        setting = ", ".join(f"{k} {v:.3g}" for k, v in w["setting"].items() if v != 1.0)
        lines.append(f"| {r['strategy']} | {r['seed']} | {r['trials']} | {r['flops']:.3g} | {setting} | "
                     f"{w['mean']:.4f} ({w['se']:.4f}) | {c['mean']:.4f} | {c['mean'] - w['mean']:+.4f} |")
    for strategy in args.strategies:
        gains = [r["control"]["mean"] - r["winner"]["mean"] for r in rows if r["strategy"] == strategy]
        losses = [r["winner"]["mean"] for r in rows if r["strategy"] == strategy]
        lines.append("")
        flops = [r["flops"] for r in rows if r["strategy"] == strategy]
        lines.append(f"- {strategy}: mean chosen loss {statistics.mean(losses):.4f}, mean gain over the defaults "
                     f"{statistics.mean(gains):+.4f} over {len(gains)} search seeds, mean FLOPs "
                     f"{statistics.mean(flops):.3g}")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", "B1b. Stage-1 search: one-at-a-time scans vs TPE (CPU)", text)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

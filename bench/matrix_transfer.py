"""B1m: width transfer of the matrix optimizers (Muon, Dion, SOAP, Shampoo) under proxytune's muP.

One row per optimizer: the reference GPT under ``recipe: mup`` with that optimizer, every named multiplier and
optimizer constant at 1 (Muon's and Dion's matrices at the AdamW LR, Shampoo's damping at its default), a grid
sweep of the log2 LR at every width, 2 seeds per point: B1's model, data, steps, batch and schedule
(``b1_rows.py``), on B1's narrower widths (the 2-core budget). Per row: the optimal log2 LR per width (90%
interval), its drift per doubling and the verdict (goal: at most 0.25 octave per doubling under muP), and the
loss at the widest width with the LR transferred from the narrowest, next to B1's AdamW rows at that width: muP
with default constants and the constants ``proxytune tune`` found (read from B1's run folder, ``--b1-runs``,
the same widths, tokens and seeds). That is the "does it beat a well-tuned AdamW here" answer at this size.

    python bench/matrix_transfer.py --b1-runs /work/b1run/runs     # widths 32..128 (~40 min on 2 cores)
    python bench/matrix_transfer.py --smoke                        # tiny sizes, seconds: the code path only
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import ROOT, emit, optima_cell, provenance, run_sweep
from b1_rows import PRESETS, row_sweep

from proxytune.analysis.optimum import Optimum, optima_by_group
from proxytune.analysis.verdict import transfer_verdict

OPTIMIZERS = ("muon", "dion", "soap", "shampoo")
#: B1's AdamW rows compared with (their sweep names in B1's run folder)
ADAMW_ROWS = {"mup": "AdamW, muP, default constants (B1)",
              "sp-perlayer-tuned": "AdamW, SP per-layer + tuned constants (B1's `tune` pick)"}
WIDTHS = [32, 64, 128]
# Muon's and Dion's optima sit higher than Adam's (the update is orthonormalized, not normalized per entry), so
# the grid reaches 2 octaves above B1's; the refinement pass adds half octaves around each optimum.
LR = {"start": -11, "stop": -2, "step": 1}
# Shampoo (pytorch-optimizer's, no grafting) steps by L^-1/4 G R^-1/4, whose size is not Adam's: at width 32 its
# optimum sat near log2 lr -1 (probe of 2026-12-06, 1 seed: -6: 4.36, -4: 2.78, -2: 2.32, -1: 2.30, 0: 2.33,
# +2: 3.16), above the common grid's top, so its grid is its own.
OWN_LR = {"shampoo": {"start": -5, "stop": 1, "step": 1}}


def sweep_dict(optimizer: str, runs: Path, smoke: bool) -> dict[str, Any]:
    d = row_sweep("cpu", f"m-{optimizer}", "mup", runs, lr=OWN_LR.get(optimizer, LR))
    d["optimizer"] = optimizer
    d["axes"]["width"] = WIDTHS
    if smoke:
        d["axes"] = {"width": [16, 32], "log2_lr": {"start": -8, "stop": -6, "step": 1}, "seed": [0]}
        d["base"]["width"] = 16
        d["train"].update(steps=4, batch_size=4, seq_len=16, eval_every=4, eval_batches=1)
        d["executor"] = {"kind": "inline", "batch": 1}
    return d


def transferred(ops: list[Optimum]) -> tuple[float, float, Optimum]:
    """Loss at the widest width at the narrowest width's optimum, its best measured loss there, and its optimum."""
    by = {o.group["width"]: o for o in ops}
    small, large = by[min(by)], by[max(by)]
    return large.loss_at(small.value), large.best_grid_loss, large


def adamw_reference(b1_runs: Path, width: int) -> dict[str, Optimum]:
    """B1's AdamW rows at ``width`` (the optimum of each, from B1's stored trials)."""
    from proxytune.sweep import Sweep

    out = {}
    for row in ADAMW_ROWS:
        folder = b1_runs / f"b1-cpu-{row}"
        if not folder.exists():
            print(f"B1 row {row} not found in {b1_runs}: left out", flush=True)
            continue
        recs = [r for r in Sweep.open(str(folder)).records() if r.get("width") == width]
        ops = optima_by_group(recs, "log2_lr", size_axes=["width"])
        if ops:
            out[row] = ops[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-matrix"))
    ap.add_argument("--b1-runs", default=str(ROOT / "runs" / "bench-transfer"),
                    help="B1's run folder (bench/transfer.py --runs), for the AdamW rows")
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one seed, 4 steps: checks the code path")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    runs = Path(args.runs)
    rows: dict[str, list[Optimum]] = {}
    minutes: dict[str, float] = {}
    for opt in args.optimizers:
        recs = run_sweep(sweep_dict(opt, runs, args.smoke))
        # trial-minutes from the store: the same figure when the table is rewritten from stored trials
        minutes[opt] = sum(float(r.get("wall_time") or 0) for r in recs) / 60
        rows[opt] = optima_by_group(recs, "log2_lr", size_axes=["width"])
    large = max(o.group["width"] for ops in rows.values() for o in ops)
    ref = {} if args.smoke else adamw_reference(Path(args.b1_runs), large)
    p, d = PRESETS["cpu"], sweep_dict(args.optimizers[0], runs, args.smoke)
    tr, ax = d["train"], d["axes"]
    lines = [provenance("matrix_transfer.py", "cpu", p["threads"]),
             f"Reference GPT depth {p['depth']}, head dim 16, widths {ax['width']}, {tr['steps']} steps, batch "
             f"{tr['batch_size']} x seq {tr['seq_len']} (B1's), recipe mup, every multiplier and optimizer constant "
             f"at 1; log2 lr {ax['log2_lr']['start']}..{ax['log2_lr']['stop']}"
             + "".join(f" ({o}: {g['start']}..{g['stop']})" for o, g in OWN_LR.items()
                       if o in args.optimizers and not args.smoke)
             + " (1 octave, refined by half octaves), "
             f"{len(ax['seed'])} seeds per point; {p['workers']} workers x {p['threads']} thread. Trial-minutes "
             f"(every trial's wall time summed; {p['workers']} ran at a time): " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()) + ".", "",
             f"| optimizer | log2 lr* per width (90% interval) | drift per doubling (90%) | verdict | loss at {large}, "
             f"LR transferred from {ax['width'][0]} | best measured at {large} | vs AdamW muP at {large} | vs tuned AdamW "
             f"at {large} |", "|---|---|---|---|---|---|---|---|"]
    for opt, ops in rows.items():
        if len({o.group["width"] for o in ops}) < 2:
            lines.append(f"| {opt} | {optima_cell(ops, 'width')} | | too few widths | | | | |")
            continue
        v = transfer_verdict(ops, "width")
        moved, best, _ = transferred(ops)
        cells = []
        for row in ADAMW_ROWS:
            o = ref.get(row)
            cells.append("n/a" if o is None else f"{moved - o.best_grid_loss:+.4f} ({o.best_grid_loss:.4f})")
        lines.append(f"| {opt} | {optima_cell(ops, 'width')} | {v.drift_per_doubling:+.2f} ({v.drift_interval[0]:+.2f}"
                     f"..{v.drift_interval[1]:+.2f}) | {v.state} | {moved:.4f} | {best:.4f} | {cells[0]} | {cells[1]} |")
    lines += ["", "`*`: optimum on the grid edge. The last two columns: the transferred loss minus the AdamW row's "
              "best measured seed-mean loss at the same width (negative: the matrix optimizer is lower), the AdamW "
              "loss in brackets."]
    emit(lines, "B1m. Matrix optimizers: width transfer under muP (CPU)", write=not (args.no_write or args.smoke))


if __name__ == "__main__":
    main()

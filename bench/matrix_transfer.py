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
    python bench/matrix_transfer.py --largest 256 --adamw-loss sp-perlayer-tuned=2.0260   # and width 256

``--largest W`` adds width W (B1's widest) with a short scan: the LR transferred from the narrowest width
(its optimum, rounded to half an octave) +-1 octave in half-octave steps, 2 seeds, grown by half an octave
where the optimum sits on an edge (twice at most): the full grid at 256 costs more than the 2-core budget,
and the drift and the transferred loss need the neighbourhood of the transferred LR only. ``--adamw-loss
ROW=LOSS`` gives an AdamW row's best measured seed-mean loss at the widest width when B1's run folder is not
at hand (B1's table states it; its trials are deterministic, so the same code measures the same value).
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


def largest_points(optimizer: str, runs: Path, width: int, center: float, lrs: list[float]) -> dict[str, Any]:
    """The sweep dict of the short scan at ``width`` (every seed of the row at each of ``lrs``)."""
    d = sweep_dict(optimizer, runs, smoke=False)
    seeds = list(d["axes"]["seed"])
    d["name"] = f"{d['name']}-w{width}"
    d["axes"] = {}
    d["points"] = [{"width": width, "log2_lr": x, "seed": k} for x in lrs for k in seeds]
    d["strategy"] = {"kind": "list", "refine": False}
    return d


def run_largest(optimizer: str, runs: Path, width: int, base: Optimum) -> list[dict[str, Any]]:
    """The short scan at ``width`` around ``base``'s optimum; grows by half an octave on an edge, twice at most."""
    c = round(base.value * 2) / 2
    lrs = [c + k / 2 for k in range(-2, 3)]
    for _ in range(3):
        recs = [r for r in run_sweep(largest_points(optimizer, runs, width, c, lrs)) if r.get("width") == width]
        ops = optima_by_group(recs, "log2_lr", size_axes=["width"])
        edge = ops[0].edge if ops else None
        if edge is None:
            break
        lrs = sorted([*lrs, min(lrs) - 0.5] if edge == "low" else [*lrs, max(lrs) + 0.5])
    return recs


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
    ap.add_argument("--largest", type=int, default=None, help="add this width with a short scan around the "
                                                                   "transferred LR (B1's widest: 256)")
    ap.add_argument("--adamw-loss", nargs="*", default=[], metavar="ROW=LOSS",
                    help=f"an AdamW row's best measured loss at the widest width ({', '.join(ADAMW_ROWS)}), used "
                         "when B1's run folder does not hold the row")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    runs = Path(args.runs)
    rows: dict[str, list[Optimum]] = {}
    minutes: dict[str, float] = {}
    for opt in args.optimizers:
        recs = run_sweep(sweep_dict(opt, runs, args.smoke))
        if args.largest and not args.smoke:
            base = [o for o in optima_by_group(recs, "log2_lr", size_axes=["width"]) if o.group["width"] == WIDTHS[0]]
            recs = recs + run_largest(opt, runs, args.largest, base[0])
        # trial-minutes from the store: the same figure when the table is rewritten from stored trials
        minutes[opt] = sum(float(r.get("wall_time") or 0) for r in recs) / 60
        rows[opt] = optima_by_group(recs, "log2_lr", size_axes=["width"])
    large = max(o.group["width"] for ops in rows.values() for o in ops)
    ref: dict[str, Any] = {} if args.smoke else adamw_reference(Path(args.b1_runs), large)
    given = dict(kv.split("=", 1) for kv in args.adamw_loss)
    unknown = sorted(set(given) - set(ADAMW_ROWS))
    if unknown:
        raise SystemExit(f"--adamw-loss: unknown row {unknown[0]!r}; the rows are {', '.join(ADAMW_ROWS)}")
    for row, loss in given.items():
        ref.setdefault(row, float(loss))
    p, d = PRESETS["cpu"], sweep_dict(args.optimizers[0], runs, args.smoke)
    tr, ax = d["train"], d["axes"]
    lines = [provenance("matrix_transfer.py", "cpu", p["threads"]),
             f"Reference GPT depth {p['depth']}, head dim 16, widths {ax['width']}, {tr['steps']} steps, batch "
             f"{tr['batch_size']} x seq {tr['seq_len']} (B1's)"
             + (f", and width {args.largest} on a short scan around the LR transferred from {ax['width'][0]} (+-1 "
                "octave in half octaves, grown on an edge)" if args.largest and not args.smoke else "")
             + f", recipe mup, every multiplier and optimizer constant "
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
            level = o if o is None or isinstance(o, float) else o.best_grid_loss
            cells.append("n/a" if level is None else f"{moved - level:+.4f} ({level:.4f})")
        lines.append(f"| {opt} | {optima_cell(ops, 'width')} | {v.drift_per_doubling:+.2f} ({v.drift_interval[0]:+.2f}"
                     f"..{v.drift_interval[1]:+.2f}) | {v.state} | {moved:.4f} | {best:.4f} | {cells[0]} | {cells[1]} |")
    lines += ["", "`*`: optimum on the grid edge. The last two columns: the transferred loss minus the AdamW row's "
              "best measured seed-mean loss at the same width (negative: the matrix optimizer is lower), the AdamW "
              "loss in brackets."]
    # the run to a wider width is its own section: the narrower table (with Shampoo) stays beside it
    title = f"B1m{f', to width {args.largest}' if args.largest and not args.smoke else ''}. Matrix optimizers: width " \
            "transfer under muP (CPU)"
    emit(lines, title, write=not (args.no_write or args.smoke))


if __name__ == "__main__":
    main()

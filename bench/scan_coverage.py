"""B5c: how far to trust the short LR scans of ``tune``'s verification (stage 2).

``tune`` verifies a recipe with a 3-point LR scan per width (the transferred LR and a step on each side, on
``verify.seeds`` seeds), grown by a step on a side where the best point sits on the edge. Its transfer verdict and
the widest-scan rule rest on the 90% intervals of those optima, and on the drift line through them. B5 measured
the interval's coverage on full grid sweeps; this measures it on the scans ``tune`` trains.

Truths: B1's grid sweeps of the tuned rows, stored by ``bench/transfer.py`` (about 2 h on 2 cores). At each width the estimator's curve over the full grid is the true loss curve, its optimum the true
optimum, and its residual noise and seed offsets the noise levels. Synthetic scans then follow ``Tuner._verify``'s
rule (the scan settings are ``VerifyConfig``'s defaults): centred at the true optimum plus an offset (0, 0.25
and 0.5 octave, each sign half the time), and "as run": centred where ``tune`` centred them, the base's LR.

Reported per case: coverage of the 90% interval and its median width, with each scan's own residual noise and with
the noise pooled over the widths (``optima_by_group(pool_noise=True)``, what ``tune`` uses); and per row, with
every width scanned from the base's LR, the coverage of the drift's 90% interval (``transfer_verdict``) of the
true optima's least-squares slope, and how often each verdict came out.

    python bench/scan_coverage.py --runs /work/b6/runs --centre -4.69    # about 10 min on 1 core with B1 stored
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from typing import Any

import numpy as np
from _common import ROOT, emit, provenance
from b1_rows import PRESETS

from proxytune.analysis.optimum import Optimum, find_optimum, optima_by_group
from proxytune.analysis.verdict import transfer_verdict
from proxytune.sweep import Sweep, SweepConfigError
from proxytune.tune.config import VerifyConfig

ROWS = ("mup-tuned", "sp-perlayer-tuned")


def truths(preset: str, runs: str) -> dict[str, list[Optimum]]:
    """The full-grid optimum of every width of B1's tuned rows, read from their stored sweeps."""
    out = {}
    for row in ROWS:
        path = f"{runs}/b1-{preset}-{row}"
        try:
            recs = Sweep.open(path).records()
        except SweepConfigError:
            raise SystemExit(f"B1's row {row} is not stored in {runs}: run bench/transfer.py --runs {runs} first")
        recs = [r for r in recs if r.get("status") in ("complete", "diverged")]
        out[row] = [o for o in optima_by_group(recs, "log2_lr", size_axes=["width"]) if o.fit is not None]
    return out


def simulate_scan(truth: Optimum, centre: float, v: VerifyConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The records of one synthetic verification scan of ``truth``'s curve, grown on an edge as
    ``Tuner._verify`` grows it (whether the best point sits on an edge does not depend on the interval)."""
    fit = truth.fit
    n = int(math.floor(v.span / v.step + 1e-9))
    xs = [round(centre + k * v.step, 10) for k in range(-n, n + 1)]
    offsets = rng.normal(0.0, truth.level_se * math.sqrt(truth.n_seeds), v.seeds)
    rows: list[dict[str, Any]] = []

    def measure(x: float) -> None:
        rows.extend({**truth.group, "status": "complete", "log2_lr": x, "seed": s, "val_loss": fit(x) + offsets[s]
                     + rng.normal(0.0, truth.noise)} for s in range(v.seeds))

    for x in xs:
        measure(x)
    for grown in range(v.max_extend + 1):
        o = find_optimum(rows, "log2_lr", n_boot=0)
        if not o.edge or grown == v.max_extend:
            return rows
        x = round(min(xs) - v.step, 10) if o.edge == "low" else round(max(xs) + v.step, 10)
        xs.append(x)
        measure(x)
    raise AssertionError("unreachable")


def scan_set(optima: list[Optimum], centre: Any, v: VerifyConfig, rng: np.random.Generator, n_boot: int,
             ) -> dict[str, list[Optimum]]:
    """One scan per width (``centre``: a float, or a function of the true optimum), estimated on each scan's own
    noise and on the noise pooled over the widths (``optima_by_group(pool_noise=True)``, as ``tune`` does)."""
    recs = [r for t in optima for r in simulate_scan(t, centre(t) if callable(centre) else centre, v, rng)]
    return {pooled: optima_by_group(recs, "log2_lr", size_axes=["width"], n_boot=n_boot, pool_noise=pooled == "pooled")
            for pooled in ("own", "pooled")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-transfer"))
    ap.add_argument("--centre", type=float, required=True,
                    help="log2 lr tune centred its scans at (the base's optimum, from its tune.json or B6b)")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    v = VerifyConfig()
    rng = np.random.default_rng(0)
    rows = truths(args.preset, args.runs)
    lines = [provenance("scan_coverage.py", "cpu", 1),
             f"Scans: {2 * int(v.span / v.step) + 1} points {v.step} octave apart, {v.seeds} seeds, grown on an edge "
             f"up to {v.max_extend} times (`VerifyConfig`'s defaults); {args.reps} synthetic sets of scans (one per "
             f"width) per row and centre, {args.n_boot} bootstrap draws each. Truths: B1's grid sweeps of the tuned "
             f"rows in `{args.runs}`. Each interval on the scan's own residual noise (2 degrees of freedom for 3 "
             "points on 2 seeds) and on the noise pooled over the row's widths (`pool_noise`, what `tune` uses).", "",
             "| row | width | true log2 lr* (full grid) | noise (nats) | scan centre | coverage, own noise | median "
             "width (oct) | coverage, pooled noise | median width (oct) |", "|---|---|---|---|---|---|---|---|---|"]
    pooled: dict[str, list[bool]] = {"own": [], "pooled": []}
    drift: dict[str, dict[str, Any]] = {}
    centres = (("truth", lambda t: t.value), ("truth +-0.25", 0.25), ("truth +-0.5", 0.5),
               (f"{args.centre:.2f}", args.centre))
    for row, optima in rows.items():
        x = np.log2([o.group["width"] for o in optima])
        true_slope = float(np.polyfit(x, [o.value for o in optima], 1)[0])
        for label, centre in centres:
            cover = {k: {o.group["width"]: [] for o in optima} for k in pooled}
            width = {k: {o.group["width"]: [] for o in optima} for k in pooled}
            for i in range(args.reps):
                if isinstance(centre, float) and label.startswith("truth"):
                    sign = 1 if i % 2 else -1
                    got = scan_set(optima, lambda t, d=centre * sign: t.value + d, v, rng, args.n_boot)
                else:
                    got = scan_set(optima, centre, v, rng, args.n_boot)
                for k, ops in got.items():
                    for t, o in zip(optima, ops):
                        cover[k][t.group["width"]].append(o.interval[0] - 1e-9 <= t.value <= o.interval[1] + 1e-9)
                        width[k][t.group["width"]].append(o.width)
                    if label == f"{args.centre:.2f}":  # the drift as tune's scans from the base's LR see it
                        verdict = transfer_verdict(ops, "width")
                        d = drift.setdefault(row, {"truth": true_slope}).setdefault(
                            k, {"cover": [], "width": [], "states": Counter()})
                        lo, hi = verdict.drift_interval
                        d["cover"].append(lo <= true_slope <= hi)
                        d["width"].append(hi - lo)
                        d["states"][verdict.state] += 1
            for t in optima:
                w = t.group["width"]
                for k in pooled:
                    pooled[k] += cover[k][w]
                lines.append(f"| {row} | {w} | {t.value:.2f} | {t.noise:.4f} | {label} | "
                             f"{np.mean(cover['own'][w]):.3f} | {np.median(width['own'][w]):.2f} | "
                             f"{np.mean(cover['pooled'][w]):.3f} | {np.median(width['pooled'][w]):.2f} |")
                print(lines[-1], flush=True)
    lines += ["", f"Pooled over {len(pooled['own'])} scans: coverage **{np.mean(pooled['own']):.3f}** on each scan's "
                  f"own noise, **{np.mean(pooled['pooled']):.3f}** on the noise pooled over widths (nominal 0.90; "
                  f"one case's binomial std at {args.reps} scans is {math.sqrt(0.09 / args.reps):.3f}).", "",
              f"Drift over every width, each scanned from {args.centre:.2f} (truth: the least-squares slope of the "
              "full-grid optima against log2 width):", ""]
    for row, d in drift.items():
        for k in ("own", "pooled"):
            e = d[k]
            lines.append(f"- {row}, {k} noise: true drift {d['truth']:+.3f} octaves per doubling; the 90% interval "
                         f"covers it in **{np.mean(e['cover']):.3f}** of the sets (median width "
                         f"{np.median(e['width']):.2f}); verdicts "
                         + ", ".join(f"{s} {n}" for s, n in e["states"].most_common()) + ".")
            print(lines[-1], flush=True)
    emit(lines, "B5c. Coverage of the verification's short LR scans (CPU)", write=not args.no_write)


if __name__ == "__main__":
    main()

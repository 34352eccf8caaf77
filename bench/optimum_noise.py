"""Noise of the optimum estimator on real sweeps, and the coverage of its interval.

Part 1 (real sweeps). 4-seed grid sweeps of the reference GPT (depth 2, AdamW
(0.9, 0.95), warmup 10% + cosine) per preset x recipe x width:

- the seed-to-seed spread of the optimum: std (octaves) of the 4 single-seed
  optima, and of the 2-seed optima over the 6 seed pairs;
- from the 4-seed fit: the residual noise ``Optimum.noise`` (nats) and the
  spread of the per-seed intercepts (nats, the seeds' shift of the whole curve);
- the 4-seed optimum and its 90% interval.

Part 2 (coverage). Per case, a "true" curve (a smoothing spline of the 4-seed
mean loss vs log2 lr; its argmin is the true optimum), synthetic 2-seed sweeps
on the same grid (true curve + per-seed offset + per-point noise, both at the
measured levels), and ``find_optimum`` on each: how often the 90% interval
holds the true optimum, and its median width; once on the grid alone, and once
after one refinement pass (the ``Optimum.refine`` points, run with the same seed
offsets and fresh noise, then re-estimated).

    python bench/optimum_noise.py --runs-dir /work/noise-runs --reuse-only   # analyse stored sweeps only
    python bench/optimum_noise.py            # runs missing sweeps first (~1 h on 2 cores for all presets)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ROOT, provenance, write_section
from scipy.interpolate import UnivariateSpline

from proxytune.analysis.optimum import Optimum, find_optimum
from proxytune.sweep import Sweep, SweepConfig

# Same settings as the stored noise-* sweeps, so a clean checkout reproduces them (eval settings included:
# they change which batches the val loss is averaged over).
PRESETS = {
    "cpu": {"widths": [32, 64, 128], "lr": {"start": -9, "stop": -3, "step": 1},
            "train": {"steps": 200, "batch_size": 16, "seq_len": 64, "eval_every": 100, "eval_batches": 8}},
    "quick": {"widths": [32, 64, 128], "lr": {"start": -10, "stop": -3, "step": 1},
              "train": {"steps": 60, "batch_size": 8, "seq_len": 64, "eval_every": 60, "eval_batches": 4}},
    "quick2": {"widths": [64, 128, 256], "lr": {"start": -10, "stop": -3, "step": 1},
               "train": {"steps": 60, "batch_size": 8, "seq_len": 64, "eval_every": 60, "eval_batches": 4}},
}
RECIPES = ("mup", "sp")
SEEDS = (0, 1, 2, 3)
DONE = ("complete", "diverged")


def sweep_dict(preset: str, recipe: str, runs_dir: Path) -> dict[str, Any]:
    p = PRESETS[preset]
    return {
        "name": f"noise-{preset}-{recipe}", "model": "gpt", "data": "stdlib", "recipe": recipe, "optimizer": "adamw",
        "base": {"width": p["widths"][0], "depth": 2},
        "axes": {"width": p["widths"], "log2_lr": p["lr"], "seed": list(SEEDS)},
        "train": {"depth": 2, "warmup": 0.1, "schedule": "cosine", "betas": [0.9, 0.95], **p["train"]},
        "executor": {"workers": 2, "threads": 1, "batch": 1},
        "runs_dir": str(runs_dir),
    }


def expected_trials(preset: str) -> int:
    p = PRESETS[preset]
    n_lr = int(round((p["lr"]["stop"] - p["lr"]["start"]) / p["lr"]["step"])) + 1
    return len(p["widths"]) * n_lr * len(SEEDS)


def load_sweep(preset: str, recipe: str, runs_dir: Path, reuse_only: bool) -> list[dict[str, Any]] | None:
    """Finished trials of one sweep, running what is missing unless ``reuse_only``; None when there is none."""
    run_dir = runs_dir / f"noise-{preset}-{recipe}"
    exists = (run_dir / "sweep.yaml").is_file()
    if not exists and reuse_only:
        return None
    # an existing sweep resumes with its own saved config, so a rerun never clashes with what is stored
    sweep = Sweep.open(run_dir) if exists else Sweep(SweepConfig.from_dict(sweep_dict(preset, recipe, runs_dir)))
    done = [r for r in sweep.records() if r["status"] in DONE] if exists else []
    if len(done) < expected_trials(preset) and not reuse_only:
        print(f"running {run_dir.name}: {len(done)} of {expected_trials(preset)} trials stored", flush=True)
        sweep.run()
        done = [r for r in sweep.records() if r["status"] in DONE]
    return done or None


def loss_table(rows: list[dict[str, Any]]) -> tuple[list[float], np.ndarray]:
    """Grid and (points, seeds) loss table; inf for a diverged trial, nan for a missing one."""
    grid = sorted({float(r["log2_lr"]) for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    table = np.full((len(grid), len(seeds)), math.nan)
    for r in rows:
        v = r["val_loss"]
        table[grid.index(float(r["log2_lr"])), seeds.index(r["seed"])] = \
            math.inf if v is None or not math.isfinite(v) else v
    return grid, table


def seed_offset_std(opt: Optimum) -> float:
    """Std of the per-seed intercepts of the fit (``level_se`` is that std over sqrt(seeds))."""
    return opt.level_se * math.sqrt(opt.n_seeds) if opt.fit is not None else math.nan


def real_case(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Part 1 for one width: single-seed, 2-seed and 4-seed optima and the 4-seed noise levels."""
    seeds = sorted({r["seed"] for r in rows})
    # the bootstrap does not move the point estimate, so the 1- and 2-seed fits need only a few draws
    single = [find_optimum([r for r in rows if r["seed"] == s], n_boot=20).value for s in seeds]
    pairs = [find_optimum([r for r in rows if r["seed"] in p], n_boot=20).value
             for p in itertools.combinations(seeds, 2)]
    full = find_optimum(rows, n_boot=400)
    return {
        "trials": len(rows), "seeds": len(seeds),
        "single_seed_optima": single, "single_seed_std": float(np.std(single, ddof=1)),
        "pair_optima": pairs, "pair_std": float(np.std(pairs, ddof=1)),
        "noise": full.noise, "noise_df": full.noise_df, "seed_offset_std": seed_offset_std(full),
        "optimum": full.value, "interval": list(full.interval), "edge": full.edge, "refine": full.refine,
        # half the fitted curve's second derivative at the optimum, nats per octave^2 (with the cubic term the
        # curve's quadratic coefficient depends on where it is taken; the optimum is where the control needs it)
        "curvature": full.fit.curvature(full.value) if full.fit is not None else math.nan,
        "grid": full.grid, "mean_losses": full.mean_losses,
    }


def true_curve(grid: list[float], means: list[float], noise: float, n_seeds: int, smooth: float = 1.0):
    """Smoothing spline of the seed-mean losses, and its argmin over the grid's range.

    Weights are 1 / (std of a seed mean) and ``s`` the number of points (times ``smooth``): the expected
    chi-square of the residuals, so the spline smooths away what the noise explains and keeps the curve's
    asymmetry, which a parabola (the estimator's own model) would not.
    """
    xs, ys = np.asarray(grid), np.asarray(means)
    ok = np.isfinite(ys)
    spline = UnivariateSpline(xs[ok], ys[ok], w=np.full(int(ok.sum()), math.sqrt(n_seeds) / noise), k=3,
                              s=smooth * float(ok.sum()))
    fine = np.linspace(xs[ok][0], xs[ok][-1], 4001)
    return spline, float(fine[int(np.argmin(spline(fine)))]), xs[ok]


def synthetic_rows(f, xs, offsets: np.ndarray, noise: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    return [{"log2_lr": float(x), "seed": s, "val_loss": float(f(x)) + offsets[s] + rng.normal(0.0, noise),
             "status": "complete"} for x in xs for s in range(len(offsets))]


def coverage(f, truth: float, xs, noise: float, offset_std: float, reps: int, n_boot: int, n_seeds: int,
             rng: np.random.Generator) -> dict[str, Any]:
    """Part 2 for one case: 2-seed synthetic sweeps, estimated without and with one refinement pass."""
    hit, hit_ref, widths, widths_ref, errs, errs_ref = [], [], [], [], [], []
    refined = edges = 0
    in_bracket = 0
    for rep in range(reps):
        offsets = rng.normal(0.0, offset_std, size=n_seeds)
        rows = synthetic_rows(f, xs, offsets, noise, rng)
        o = find_optimum(rows, n_boot=n_boot, seed=rep)
        hit.append(o.interval[0] <= truth <= o.interval[1])
        widths.append(o.width)
        errs.append(o.value - truth)
        edges += o.edge is not None
        in_bracket += o.bracket[0] - 1e-9 <= o.value <= o.bracket[1] + 1e-9
        if o.refine:
            refined += 1
            # the refinement runs the same seeds (same offsets) at new points, so only the noise is fresh
            rows += synthetic_rows(f, o.refine, offsets, noise, rng)
            o = find_optimum(rows, n_boot=n_boot, seed=rep)
        hit_ref.append(o.interval[0] <= truth <= o.interval[1])
        widths_ref.append(o.width)
        errs_ref.append(o.value - truth)
    return {
        "reps": reps, "coverage": float(np.mean(hit)), "median_width": float(np.median(widths)),
        "coverage_refined": float(np.mean(hit_ref)), "median_width_refined": float(np.median(widths_ref)),
        "refined_fraction": refined / reps, "edge_fraction": edges / reps, "in_bracket_fraction": in_bracket / reps,
        "bias": float(np.median(errs)), "rmse": float(np.sqrt(np.mean(np.square(errs)))),
        "bias_refined": float(np.median(errs_ref)), "rmse_refined": float(np.sqrt(np.mean(np.square(errs_ref)))),
    }


def fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=str(ROOT / "bench-runs" / "optimum-noise"),
                    help="folder holding (or to hold) the noise-<preset>-<recipe> sweeps")
    ap.add_argument("--reuse-only", action="store_true", help="analyse stored sweeps; run nothing")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--reps", type=int, default=200, help="synthetic sweeps per case")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap draws per synthetic estimate")
    ap.add_argument("--synthetic-seeds", type=int, default=2, help="seeds per synthetic sweep")
    ap.add_argument("--smooth", type=float, default=1.0,
                    help="spline smoothing, in units of the number of points (lower: closer to the means)")
    ap.add_argument("--no-control", action="store_true", help="skip the parabola control (halves the time)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "optimum_noise.json"))
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    runs_dir = Path(args.runs_dir).resolve()
    t0 = time.perf_counter()

    cases: list[dict[str, Any]] = []
    missing: list[str] = []
    for preset in args.presets.split(","):
        for recipe in RECIPES:
            done = load_sweep(preset, recipe, runs_dir, args.reuse_only)
            if done is None:
                missing.append(f"noise-{preset}-{recipe}")
                continue
            print(f"noise-{preset}-{recipe}: {len(done)} of {expected_trials(preset)} trials finished", flush=True)
            for width in sorted({r["width"] for r in done}):
                rows = [r for r in done if r["width"] == width]
                cases.append({"preset": preset, "recipe": recipe, "width": width, **real_case(rows),
                              "_table": loss_table(rows)})

    # at the base width muP and SP are the same model, so both sweeps hold the same trials: analyse them once
    for c in cases:
        twin = next((d for d in cases if d is not c and d["preset"] == c["preset"] and d["width"] == c["width"]
                     and d["_table"][0] == c["_table"][0] and np.array_equal(d["_table"][1], c["_table"][1])
                     and cases.index(d) < cases.index(c)), None)
        c["same_trials_as"] = None if twin is None else twin["recipe"]

    # the median curvature stands in for a case without a convex fit of its own (parabola control only)
    curv = statistics.median(c["curvature"] for c in cases if math.isfinite(c["curvature"]))

    # a fit-less case (best point on the edge, no convex parabola) has no noise of its own: borrow its preset's
    # median, so the hard cases stay in the coverage study instead of silently dropping out
    for c in cases:
        c["noise_used"], c["offset_std_used"], c["noise_borrowed"] = c["noise"], c["seed_offset_std"], False
        if not math.isfinite(c["noise"]):
            same = [d for d in cases if d["preset"] == c["preset"] and math.isfinite(d["noise"])]
            c["noise_used"] = statistics.median(d["noise"] for d in same)
            c["offset_std_used"] = statistics.median(d["seed_offset_std"] for d in same)
            c["noise_borrowed"] = True

    for k, c in enumerate(cases):
        c["coverage"] = c["control"] = None
        if c["same_trials_as"] is not None:
            continue
        f, truth, xs = true_curve(c["grid"], c["mean_losses"], c["noise_used"], c["seeds"], args.smooth)
        c["true_optimum"] = truth
        c["true_curve"] = [float(f(x)) for x in xs]
        if truth <= xs[0] + 1e-3 or truth >= xs[-1] - 1e-3:  # no interior optimum: nothing to cover
            c["skip"] = "true optimum on the grid edge"
            continue
        # the estimator on the noise-free true curve: its error here is the bias of the parabola's misfit alone
        c["noise_free_error"] = find_optimum(synthetic_rows(f, xs, np.zeros(2), 0.0, np.random.default_rng(0)),
                                             n_boot=20).value - truth
        rng = np.random.default_rng([args.seed, k])
        c["coverage"] = coverage(f, truth, xs, c["noise_used"], c["offset_std_used"], args.reps, args.n_boot,
                                 args.synthetic_seeds, rng)
        if not args.no_control:
            # control: a parabola with the case's curvature and the same optimum and noise, i.e. the estimator's
            # own model; what it covers there vs on the spline separates noise calibration from shape misfit
            a = c["curvature"] if math.isfinite(c["curvature"]) else curv
            c["control_curvature"] = a
            c["control"] = coverage(lambda x, a=a, t=truth: a * (x - t) ** 2, truth, xs, c["noise_used"],
                                    c["offset_std_used"], args.reps, args.n_boot, args.synthetic_seeds,
                                    np.random.default_rng([args.seed, k, 1]))
        cv, ct = c["coverage"], c["control"]
        print(f"{c['preset']} {c['recipe']} {c['width']}: coverage {cv['coverage']:.3f} -> "
              f"{cv['coverage_refined']:.3f} (refined {cv['refined_fraction']:.0%})"
              + (f"; parabola control {ct['coverage']:.3f} -> {ct['coverage_refined']:.3f}" if ct else ""),
              flush=True)
    elapsed = time.perf_counter() - t0

    # noise levels for tests/test_optimum.py: medians over the distinct cases with a fit of their own
    own = [c for c in cases if c["same_trials_as"] is None and math.isfinite(c["noise"])]
    summary = {
        "median_noise": statistics.median(c["noise"] for c in own),
        "median_seed_offset_std": statistics.median(c["seed_offset_std"] for c in own),
        "median_curvature": statistics.median(c["curvature"] for c in own),
        "median_single_seed_std": statistics.median(c["single_seed_std"] for c in own),
        "median_pair_std": statistics.median(c["pair_std"] for c in own),
    }
    studied = [c["coverage"] for c in cases if c["coverage"] is not None]
    controls = [c["control"] for c in cases if c["control"] is not None]
    n_rep = sum(cv["reps"] for cv in studied)
    for name, group in (("", studied), ("control_", controls)):
        n = sum(cv["reps"] for cv in group)
        for key in ("coverage", "coverage_refined"):
            summary[f"pooled_{name}{key}"] = sum(cv[key] * cv["reps"] for cv in group) / n if n else math.nan
    summary["cases_studied"] = len(studied)
    summary["synthetic_sweeps"] = n_rep

    lines = [
        provenance("optimum_noise.py", "cpu", 2),
        "Sweeps: reference GPT depth 2, head dim 16, AdamW (0.9, 0.95), warmup 10% + cosine, stdlib text, 4 seeds; "
        + "; ".join(f"{name}: widths {p['widths']}, {p['train']['steps']} steps, batch {p['train']['batch_size']} x "
                    f"seq {p['train']['seq_len']}, log2 lr {p['lr']['start']} .. {p['lr']['stop']}"
                    for name, p in PRESETS.items() if name in args.presets.split(","))
        + f". Analysis took {elapsed / 60:.1f} min.",
        "",
        "Real sweeps (`Optimum.noise`: residual std of the 4-seed fit, its degrees of freedom in brackets; seed "
        "offset: std of the fit's per-seed intercepts):",
        "",
        "| preset | recipe | width | trials | 1-seed optima std (oct) | 2-seed optima std, 6 pairs (oct) | "
        "residual noise (nats) | seed-offset std (nats) | curvature (nats/oct^2) | 4-seed log2 lr* (90% interval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        twin = f" (= {c['same_trials_as']})" if c["same_trials_as"] else ""
        lines.append(
            f"| {c['preset']} | {c['recipe']}{twin} | {c['width']} | {c['trials']} | {c['single_seed_std']:.2f} | "
            f"{c['pair_std']:.2f} | {fmt(c['noise'], '.4f')} ({c['noise_df']}) | {fmt(c['seed_offset_std'], '.4f')} | "
            f"{fmt(c['curvature'], '.3f')} | {c['optimum']:.2f} ({c['interval'][0]:.2f} .. {c['interval'][1]:.2f})"
            + (f", {c['edge']} edge" if c["edge"] else "") + " |")
    lines += [
        "",
        f"Coverage of the 90% interval on synthetic {args.synthetic_seeds}-seed sweeps ({args.reps} per case, "
        f"n_boot {args.n_boot}): true curve = smoothing spline of the 4-seed means (s = {args.smooth:g} x points), "
        "noise and seed offsets at the measured levels (`~`: a case without its own fit borrows its preset's "
        "median). Bias: median of estimate - truth; noise-free: the estimate on the true curve itself. Control: the "
        "same study on a parabola with the case's curvature, optimum and noise (the estimator's own model).",
        "",
        "| preset | recipe | width | true log2 lr* | noise / offset (nats) | noise-free error (oct) | coverage | "
        "median width (oct) | bias (oct) | refined | coverage after refinement | median width (oct) | bias (oct) | "
        "control: coverage / after refinement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        if c["same_trials_as"]:
            continue
        head = f"| {c['preset']} | {c['recipe']} | {c['width']} | {fmt(c.get('true_optimum', math.nan), '.2f')} | " \
               f"{'~' if c['noise_borrowed'] else ''}{c['noise_used']:.4f} / {c['offset_std_used']:.4f} | "
        cv = c["coverage"]
        if cv is None:
            lines.append(head + f"{c.get('skip', 'n/a')} | | | | | | | | |")
            continue
        ct = c["control"]
        lines.append(head + f"{c['noise_free_error']:+.2f} | {cv['coverage']:.3f} | {cv['median_width']:.2f} | "
                            f"{cv['bias']:+.2f} | {cv['refined_fraction']:.0%} | {cv['coverage_refined']:.3f} | "
                            f"{cv['median_width_refined']:.2f} | {cv['bias_refined']:+.2f} | "
                            + (f"{ct['coverage']:.3f} / {ct['coverage_refined']:.3f} |" if ct else "n/a |"))
    lines += [
        "",
        f"Pooled over {summary['cases_studied']} cases ({n_rep} synthetic sweeps): coverage "
        f"{summary['pooled_coverage']:.3f}, after refinement {summary['pooled_coverage_refined']:.3f}; parabola "
        f"control {fmt(summary['pooled_control_coverage'])}, after refinement "
        f"{fmt(summary['pooled_control_coverage_refined'])} (nominal 0.90; one case's binomial std at {args.reps} "
        f"reps is {math.sqrt(0.09 / args.reps):.3f}).",
        f"Medians over the distinct cases with a fit: residual noise {summary['median_noise']:.4f} nats, seed offset "
        f"{summary['median_seed_offset_std']:.4f} nats, curvature {summary['median_curvature']:.3f} nats/oct^2, "
        f"1-seed optimum std {summary['median_single_seed_std']:.2f} oct, 2-seed {summary['median_pair_std']:.2f} oct.",
    ]
    if missing:
        lines.append(f"Not found in {runs_dir} (run without --reuse-only to create): {', '.join(missing)}.")
    text = "\n".join(lines)
    print(text)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python bench/optimum_noise.py " + " ".join(sys.argv[1:]), "runs_dir": str(runs_dir),
            "date": datetime.date.today().isoformat(), "reps": args.reps, "n_boot": args.n_boot,
            "synthetic_seeds": args.synthetic_seeds, "smooth": args.smooth, "seconds": elapsed, "missing": missing}
    # json cannot hold inf/nan: write them as null
    clean = [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases]
    out.write_text(json.dumps(_finite({"meta": meta, "summary": summary, "cases": clean}), indent=1) + "\n")
    print(f"wrote {out}")
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", "B5. Optimum estimator: noise and interval coverage (CPU)", text)


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _finite(x.item())
    return x


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

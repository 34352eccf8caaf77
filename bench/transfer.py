"""B1: width transfer, and whether settings found on proxies beat a full sweep at the target.

Rows, all with the same model, data, steps, LR grid and seeds (``b1_rows.py``; SP's grid may reach lower), each
a grid sweep of the log2 LR at every width (so the optimum, drift and regret of every row are measured, not
assumed):

- ``sp``: SP with one global LR, swept at every width: what a user does without proxytune;
- ``mup``: proxytune muP, every named multiplier at 1;
- ``mup-package``: Microsoft's ``mup`` (MuReadout + MuAdamW), as a peer (``pip install --no-deps mup``);
- ``mup-tuned`` / ``sp-perlayer-tuned``: the constants ``proxytune tune`` found at the base width,
  transferred unchanged;
- ``tune``: the recommendation of ``proxytune tune`` (recipe, constants and base LR), transferred.

Per row: the optimal log2 LR per width (90% interval), the drift, the loss at the largest width with the
settings transferred from the smallest, its regret against the best loss of any row swept at the largest
width (the seed mean at its best measured grid LR; against the best fitted minimum beside it),
wider-is-better and the tuning cost (FLOPs). A reference whose optimum is on its grid's edge is called so, and
the goal that compares with it is not judged. Then B5 on the ``tune`` row (the loss law fitted on the
smaller widths predicts the largest) and B6 (the FLOPs of every ``tune`` trial against one training run of
the largest proxy and of a 4096-wide target).

    python bench/transfer.py                 # CPU preset: widths 32..256, 300 steps, 2 seeds (~2 h on 2 cores)
    python bench/transfer.py --preset gpu    # widths 128..2048 on a CUDA machine
    python bench/transfer.py --tune-only --reference-sp 2.3136 --reference-best 2.0260   # B6 alone (~15 min)
    python bench/transfer.py --tune-only --hold-out-largest --reference-sp 2.3136 --reference-best 2.0266

``--hold-out-largest`` tunes on the widths below the largest, with the largest as ``tune``'s target, so ``tune``
never trains the width its pick is judged at: the loss there is read from B1's grid sweep of the recommended recipe
with the constants found (trained if not stored), at the LR ``tune`` predicts for that width. Give it a runs folder
of its own (the tuning run keeps B1's name); a copy of B1's ``tune`` stage-1 sweeps in it makes it reuse B1's
constants, and a copy of B1's tuned rows, their measured curves.

``--tune-only`` runs ``tune`` alone (B6: its cost, split by stage and by width) and compares the loss its own
verification measured at the largest width, at the transferred LR, with the references given: SP's and the best
row's best measured seed-mean loss at that width from B1's table (its trials are deterministic, so the same code
measures the same values without training them again).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, close_section, emit, optima_cell, provenance, run_sweep
from b1_rows import PRESETS, row_lr, row_sweep, train_fields

from proxytune.analysis.laws import fit_saturating_power_law
from proxytune.analysis.optimum import Optimum, optima_by_group
from proxytune.analysis.predict import count_params
from proxytune.analysis.verdict import transfer_verdict
from proxytune.sweep import Sweep
from proxytune.tune import TuneConfig, Tuner
from proxytune.tune.run import run_flops

LABELS = {"sp": "SP, one global LR (swept at every width)", "mup": "muP, one global LR (proxytune)",
          "mup-package": "muP, `mup` package (MuReadout + MuAdamW)",
          "mup-tuned": "muP + constants tuned at the base, transferred",
          "sp-perlayer-tuned": "SP per-layer + constants tuned at the base, transferred",
          "tune": "`proxytune tune` recommendation, transferred"}
TARGET_WIDTH = 4096


def tune_config(preset: str, runs: str) -> TuneConfig:
    p = PRESETS[preset]
    train = {k: v for k, v in train_fields(preset).items() if k != "depth"}
    return TuneConfig.from_dict({
        "name": f"b1-{preset}-tune", "model": "gpt", "data": "stdlib", "optimizer": "adamw",
        "base": {"width": p["widths"][0], "depth": p["depth"]}, "widths": p["widths"][1:],
        "recipes": ["mup", "sp-perlayer"], "target": {"width": TARGET_WIDTH, "depth": p["depth"]}, "train": train,
        "executor": {"workers": p["workers"], "threads": p["threads"], "batch": 8},
        "runs_dir": runs,
    })


def held_out(tcfg: TuneConfig, preset: str) -> TuneConfig:
    """``tcfg`` on the widths below the preset's largest, with the largest as its target: ``tune`` never trains
    the width its pick is judged at, and its LR there is the one it predicts for it."""
    p = PRESETS[preset]
    return TuneConfig.from_dict({**tcfg.model_dump(mode="json"), "widths": p["widths"][1:-1],
                                 "target": {"width": p["widths"][-1], "depth": p["depth"]}})


def flops_of(records: list[dict[str, Any]], width: int | None = None) -> float:
    return sum(float(r.get("flops") or 0) for r in records
               if r.get("status") in ("complete", "diverged") and (width is None or r.get("width") == width))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-transfer"))
    ap.add_argument("--no-package", action="store_true", help="skip the mup package row")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--tune-only", action="store_true", help="run tune alone: B6 and its loss at the largest width")
    ap.add_argument("--recipes", nargs="+", help="--tune-only: the candidate recipes (default: the preset's)")
    ap.add_argument("--hold-out-largest", action="store_true",
                    help="tune on the widths below the largest, with the largest as its target, and measure its "
                         "pick there on B1's grid sweep of that recipe with the constants found")
    ap.add_argument("--reference-sp", type=float, default=math.nan, help="--tune-only: SP's best measured loss at "
                                                                         "the largest width (B1's table)")
    ap.add_argument("--reference-best", type=float, default=math.nan, help="--tune-only: the best row's best "
                                                                           "measured loss there (B1's table)")
    args = ap.parse_args()
    if args.tune_only:
        tune_only(args)
        return
    p = PRESETS[args.preset]
    widths, small, large = p["widths"], p["widths"][0], p["widths"][-1]
    t0 = time.perf_counter()
    records: dict[str, list[dict[str, Any]]] = {}
    cost: dict[str, float] = {}
    records["sp"] = run_sweep(row_sweep(args.preset, "sp", "sp", args.runs))
    records["mup"] = run_sweep(row_sweep(args.preset, "mup", "mup", args.runs))
    tcfg = tune_config(args.preset, args.runs)
    if args.hold_out_largest:
        tcfg = held_out(tcfg, args.preset)
    t_tune = time.perf_counter()
    result = Tuner(tcfg).run()
    tune_minutes = (time.perf_counter() - t_tune) / 60
    print(f"tune: {result.recipe}, log2 lr {result.log2_lr:.2f}, constants {result.constants}", flush=True)
    constants = result.constants
    stage1_flops = sum(v for k, v in result.cost.per_stage.items() if k.startswith("s1-"))
    for recipe in ("mup", "sp-perlayer"):
        records[f"{recipe}-tuned"] = run_sweep(row_sweep(args.preset, f"{recipe}-tuned", recipe, args.runs,
                                                         constants=constants))
    records["tune"] = records[f"{result.recipe}-tuned"]
    # the peer row last: the rows of the goal come first when time is short
    if not args.no_package and importlib.util.find_spec("mup") is None:
        print("the mup package row is skipped: pip install --no-deps mup to include it", flush=True)
    elif not args.no_package:
        from mup_peer import run_row

        fields = {**train_fields(args.preset), "model": "gpt", "data": "stdlib", "recipe": "sp", "optimizer": "adamw",
                  "base_width": small, "base_depth": p["depth"], "threads": p["threads"]}
        lr = p["lr"]
        grid = [lr["start"] + k * lr["step"] for k in range(int((lr["stop"] - lr["start"]) / lr["step"]) + 1)]
        records["mup-package"] = run_row(fields, widths, grid, list(range(p["seeds"])),
                                         Path(args.runs) / f"b1-{args.preset}-mup-package", workers=p["workers"])

    records = {row: records[row] for row in LABELS if row in records}  # the table's order
    optima = {row: optima_by_group(recs, "log2_lr", size_axes=["width"]) for row, recs in records.items()}
    verdicts = {row: transfer_verdict(ops, "width") for row, ops in optima.items()}
    at = {row: {o.group["width"]: o for o in ops} for row, ops in optima.items()}
    ref = comparators(at, large)
    cost = {"sp": flops_of(records["sp"], large), "mup": flops_of(records["mup"], small),
            "mup-tuned": stage1_flops + flops_of(records["mup-tuned"], small),
            "sp-perlayer-tuned": stage1_flops + flops_of(records["sp-perlayer-tuned"], small),
            "tune": result.cost.flops}
    if "mup-package" in records:
        cost["mup-package"] = flops_of(records["mup-package"], small)
    lr_sweep_large = cost["sp"]

    def transferred(row: str) -> float:
        """Loss at the largest width with the settings of the smallest: its LR optimum (tune: its own LR)."""
        big = at[row][large]
        x = result.log2_lr if row == "tune" else at[row][small].value
        return big.loss_at(x)

    lines = [
        provenance("transfer.py", "cuda" if args.preset == "gpu" else "cpu", p["threads"]),
        f"Reference GPT depth {p['depth']}, head dim 16, widths {widths}, {p['train']['steps']} steps, batch "
        f"{p['train']['batch_size']} x seq {p['train']['seq_len']}, AdamW (0.9, 0.95), warmup 10% + cosine to 10%, "
        f"no weight decay, base width {small}; log2 lr {p['lr']['start']} .. {p['lr']['stop']}"
        + (f" (SP's row from {row_lr(args.preset, 'sp')['start']})" if row_lr(args.preset, "sp") != p["lr"] else "")
        + f" (1 octave, refined by half octaves near each optimum), {p['seeds']} seeds per point; "
        f"{p['workers']} workers. "
        f"Everything took {(time.perf_counter() - t0) / 60:.0f} min ({tune_minutes:.0f} min in `tune`, when it ran).",
        "",
        f"Constants found by `proxytune tune` at width {small} (stage 1, then verified on widths "
        f"{', '.join(map(str, tcfg.widths))}"
        + (f"; width {large} held out: `tune` never trains it, and the `tune` row's loss there is at the LR "
           f"`tune` predicts for width {large}" if args.hold_out_largest else "") + "): " + (", ".join(f"`{k}: {v}`" for k, v in constants.items()) or "none")
        + f"; recommended recipe `{result.recipe}`, base log2 lr {result.log2_lr:.2f}.",
        "",
        f"| row | log2 lr* per width (90% interval) | drift per doubling (90%) | loss at {large}, transferred | "
        f"regret vs best swept at {large} | wider is better | verdict | tuning cost (FLOPs; x LR sweep at {large}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, ops in optima.items():
        v = verdicts[row]
        per = optima_cell(ops, "width")
        tl = transferred(row)
        lines.append(f"| {LABELS[row]} | {per} | {v.drift_per_doubling:+.2f} ({v.drift_interval[0]:+.2f}..."
                     f"{v.drift_interval[1]:+.2f}) | {tl:.4f} | {regret_cell(tl, ref)} | "
                     f"{v.wider_is_better} | {v.state} | {cost[row]:.3g} ({cost[row] / lr_sweep_large:.2f}x) |")
    lines += [
        "",
        f"{reference_line(ref, large)} `*`: optimum on the grid edge. SP's tuning cost is its LR sweep at width "
        f"{large} ({lr_sweep_large:.3g} FLOPs); muP's, its LR sweep at width {small}; a tuned row's, stage 1 of "
        f"`tune` plus its LR sweep at {small}; the `tune` row's, every trial of `tune` (stage 1 and the "
        "verification at every width, both recipes).",
        "",
        goal_line(ref, transferred("tune"), large, verdicts["tune"].wider_is_better, cost["tune"] / lr_sweep_large),
    ]
    lines += b5_b6(args.preset, optima["tune"], records["tune"], result, tcfg, large)
    close_section(lines, optima, LABELS, "width", "transfer", "B1 loss vs log2 lr", "B1. Width transfer", args.preset,
                  not args.no_write)


def tune_only(args: argparse.Namespace) -> None:
    """B6 for ``tune`` alone: its FLOPs by stage and by width against one run of the target, and its pick's
    measured loss at the largest width at the transferred LR against the references given."""
    p = PRESETS[args.preset]
    large = p["widths"][-1]
    tcfg = tune_config(args.preset, args.runs)
    if args.recipes:
        tcfg = tcfg.model_copy(update={"recipes": list(args.recipes), "name": f"{tcfg.name}-{'-'.join(args.recipes)}"})
    if args.hold_out_largest:
        tcfg = held_out(tcfg, args.preset)
    t0 = time.perf_counter()
    result = Tuner(tcfg).run()
    minutes = (time.perf_counter() - t0) / 60
    target = run_flops(tcfg, TARGET_WIDTH, p["depth"], None)
    held = ""
    if args.hold_out_largest:
        x = result.log2_lr  # tune's LR for the largest width, its target here
        row = run_sweep(row_sweep(args.preset, f"{result.recipe}-tuned", result.recipe, args.runs,
                                  constants=result.constants))
        big = next(o for o in optima_by_group(row, "log2_lr", size_axes=["width"]) if o.group["width"] == large)
        measured = big.loss_at(x)
        held = (f" (measured on B1's grid sweep of {result.recipe} with these constants at width {large}: the "
                f"fitted seed-mean curve at tune's log2 lr {x:.2f}, 90% {result.prediction.log2_lr_interval[0]:.2f} "
                f".. {result.prediction.log2_lr_interval[1]:.2f}; that row's optimum there {big.value:.2f}, 90% "
                f"{big.interval[0]:.2f} .. {big.interval[1]:.2f}, its best measured point {big.best_grid_loss:.4f})")
    else:
        x = result.stage1.winner.setting["log2_lr"]  # the base's LR: what every recipe carries to any width
        recs = [r for r in Sweep.open(str(tcfg.run_dir / f"{tcfg.name}-verify-{result.recipe}")).records()
                if r.get("width") == large and r.get("status") == "complete" and abs(float(r["log2_lr"]) - x) < 1e-6]
        measured = sum(float(r["val_loss"]) for r in recs) / len(recs) if recs else math.nan
    verify = [r for name in result.cost.per_stage if name.startswith("verify-")
              for r in Sweep.open(str(tcfg.run_dir / f"{tcfg.name}-{name}")).records()]
    by_width = {w: flops_of(verify, w) for w in sorted({int(r["width"]) for r in verify if r.get("width")})}
    pct = lambda f: f"{100 * f / target:.2f}%"  # noqa: E731
    lines = [provenance("transfer.py", "cpu", p["threads"]),
             f"`proxytune tune` at B1's settings (widths {[tcfg.base_width, *tcfg.widths]}"
             + (f", width {large} held out as its target" if args.hold_out_largest else "")
             + f", {p['train']['steps']} steps, batch "
             f"{p['train']['batch_size']} x {p['train']['seq_len']}, recipes {' and '.join(tcfg.candidates)}, stage 1 "
             f"`{tcfg.search.strategy}`), {minutes:.0f} min. Recommended `{result.recipe}` at base log2 lr {x:.2f}, "
             "constants " + (", ".join(f"`{k}: {v}`" for k, v in result.constants.items()) or "all 1") + ".", "",
             f"- **Cost**: {result.cost.trials} trials, {result.cost.flops:.3g} FLOPs = **{pct(result.cost.flops)} of one "
             f"run of the {TARGET_WIDTH}-wide target** at the same depth and tokens ({target:.3g} FLOPs; goal at most "
             f"3.5%: {'met' if result.cost.flops / target <= 0.035 else 'not met'}).",
             "- By stage: " + ", ".join(f"{k} {pct(v)}" for k, v in result.cost.per_stage.items()) + ".",
             "- Stage 2 by width (every recipe): " + ", ".join(f"{w}: {pct(f)}" for w, f in sorted(by_width.items()))
             + ".",
             "- Points of the LR scans trained on one seed only (the rule of docs/tuning.md): "
             + ("; ".join(f"{c.recipe} at {w}" for c in result.candidates for w in c.one_seed_points) or "none") + ".",
             *([] if args.hold_out_largest else [
                 f"- Width {large} trained at the transferred LR only (`verify.widest_scan: auto`): "
                 + ("; ".join(f"{c.recipe}: {c.widest_settled}" for c in result.candidates if c.widest_settled)
                    or "no (the narrower widths left doubt, or the race scanned it for the leader)") + "."]),
             *([f"- Tune's verdicts and LR for width {large}: " + "; ".join(result.recommendation)
                + f" LR source: {result.prediction.lr_source}."] if args.hold_out_largest else []),
             (f"- **Loss at width {large}** of the pick at tune's LR for it{held}: {measured:.4f}."
              if args.hold_out_largest else
              f"- **Loss at width {large}** of the pick at the transferred LR (its own verification, seed mean of "
              f"{len(recs)}): {measured:.4f}.")]
    if math.isfinite(args.reference_sp):
        gain = (args.reference_sp - measured) / args.reference_sp
        lines.append(f"  Against SP swept at {large} (best measured {args.reference_sp:.4f}, B1's table): {gain:.2%} "
                     f"below (goal at least 8%: {'met' if gain >= 0.08 else 'not met'}).")
    if math.isfinite(args.reference_best):
        regret = (measured - args.reference_best) / args.reference_best
        lines.append(f"  Against the best row swept at {large} (best measured {args.reference_best:.4f}, B1's "
                     f"table): {regret:+.2%} (goal within 0.5%: {'met' if regret <= 0.005 else 'not met'}).")
    title = "B6c. `tune` with the largest width held out" if args.hold_out_largest else "B6b. `tune` alone"
    emit(lines, f"{title} at B1's settings: cost by stage (CPU)", write=not args.no_write)


def comparators(at: dict[str, dict[Any, Optimum]], large: int) -> dict[str, Any]:
    """What B1's regret and goals compare with at width ``large``: the best measured seed-mean grid loss of any
    row swept there (``best``, its row ``best_row``) and of SP (``sp``), the fitted minima beside them
    (``*_fitted``), and the rows whose optimum at ``large`` is on their grid's edge (``edge``: row -> Optimum):
    such a row's best loss may be lower than measured, so a comparison with it is not fair until its grid is
    extended."""
    swept = {row: ops[large] for row, ops in at.items() if large in ops and math.isfinite(ops[large].best_grid_loss)}
    if not swept:
        raise ValueError(f"no row has a finite loss at width {large}")
    best_row = min(swept, key=lambda r: swept[r].best_grid_loss)
    fitted = [o.loss for o in swept.values() if math.isfinite(o.loss)]
    sp = at.get("sp", {}).get(large)
    return {"best_row": best_row, "best": swept[best_row].best_grid_loss,
            "best_fitted": min(fitted) if fitted else math.nan,
            "sp": sp.best_grid_loss if sp else math.nan, "sp_fitted": sp.loss if sp else math.nan,
            "edge": {row: o for row, o in swept.items() if o.edge}}


def edge_text(row: str, o: Optimum, large: int) -> str:
    """Why a comparison with ``row`` at width ``large`` is not fair, and how far to extend its grid."""
    step = (o.grid[1] - o.grid[0]) if o.edge == "low" else (o.grid[-1] - o.grid[-2])
    to = o.grid[0] - 2 * step if o.edge == "low" else o.grid[-1] + 2 * step
    return (f"{row}'s best measured log2 lr at width {large}, {o.best_grid_value:g}, is the {o.edge} end of its "
            f"grid ({o.grid[0]:g} .. {o.grid[-1]:g}): its best loss may be lower, so a comparison with it is not "
            f"fair; extend its grid to log2 lr {to:g}")


def regret_cell(loss: float, ref: dict[str, Any]) -> str:
    """Regret of ``loss`` against the best measured loss swept at the largest width, the fitted one beside it."""
    best, fitted = ref["best"], ref["best_fitted"]
    return f"{(loss - best) / best:+.2%} (fitted {(loss - fitted) / fitted:+.2%})"


def reference_line(ref: dict[str, Any], large: int) -> str:
    """The best swept loss and SP's at ``large``, measured with the fitted beside, and any row on its grid edge."""
    edges = "".join(f" Not fair: {edge_text(row, o, large)}." for row, o in ref["edge"].items())
    return (f"Best loss at width {large} of any row swept there (the seed mean at its best grid LR): "
            f"{ref['best']:.4f} ({ref['best_row']}; fitted minimum of any row {ref['best_fitted']:.4f}); SP swept at "
            f"{large}: {ref['sp']:.4f} measured, {ref['sp_fitted']:.4f} fitted.{edges}")


def goal_line(ref: dict[str, Any], tune_loss: float, large: int, wider: str, cost_ratio: float) -> str:
    """B1's goals for the ``tune`` row, against the best measured losses swept at ``large`` (fitted beside); a goal
    whose reference sits on its grid's edge is not judged."""
    def judged(ok: bool, edge: list[str]) -> str:
        return (f"not judged ({', '.join(edge)} on the grid edge at {large}, see above)" if edge
                else ("met" if ok else "not met"))

    gain = (ref["sp"] - tune_loss) / ref["sp"]
    gain_fitted = (ref["sp_fitted"] - tune_loss) / ref["sp_fitted"]
    regret = (tune_loss - ref["best"]) / ref["best"]
    sp_edge = [r for r in ref["edge"] if r == "sp"]
    return (f"Goal (issue 30): the `tune` row's loss at {large} at least 8% below SP swept at {large}: {gain:+.2%} "
            f"(fitted {gain_fitted:+.2%}) -> {judged(gain >= 0.08, sp_edge)}; within 0.5% of the best swept "
            f"at {large}: {regret_cell(tune_loss, ref)} -> {judged(regret <= 0.005, list(ref['edge']))}; wider is "
            f"better: {wider} -> {'met' if wider == 'yes' else 'not met'}; cost below one LR sweep at {large}: "
            f"{cost_ratio:.2f}x -> {'met' if cost_ratio < 1 else 'not met'}.")


def b5_b6(preset: str, ops: list[Optimum], records: list[dict[str, Any]], result: Any, tcfg: TuneConfig,
          large: int) -> list[str]:
    """B5: the loss law of the tune row fitted on the smaller widths, predicting the largest. B6: the cost of
    every tune trial against one training run of the largest proxy and of a TARGET_WIDTH-wide target."""
    p = PRESETS[preset]
    rows = sorted((o for o in ops if math.isfinite(o.best_grid_loss)), key=lambda o: o.group["width"])
    n_of = {int(o.group["width"]): count_params("gpt", int(o.group["width"]), p["depth"],
                                                {"seq_len": p["train"]["seq_len"]}) for o in rows}
    # One point per seed at each smaller width's best grid LR: widths 32..128 are 3 sizes, and a 3-parameter
    # law through 3 means has no residual left to size its interval; the seeds' spread supplies it.
    fit_n, fit_l = [], []
    for o in rows[:-1]:
        for r in records:
            if (r.get("status") == "complete" and r.get("width") == o.group["width"]
                    and abs(float(r["log2_lr"]) - o.best_grid_value) < 1e-6 and math.isfinite(r["val_loss"])):
                fit_n.append(n_of[int(o.group["width"])])
                fit_l.append(float(r["val_loss"]))
    out = ["", "**B5 on the `tune` row** (loss law `L = a N^b + c`, N = parameters, fitted on each seed's loss at "
           "the best grid LR of every width below the largest):"]
    if len({*fit_n}) >= 3 and len(fit_n) >= 4 and rows and rows[-1].group["width"] == large:
        law = fit_saturating_power_law(fit_n, fit_l)
        n_big = n_of[large]
        pred = float(law.predict(n_big))
        lo, hi = law.interval(n_big)
        meas = rows[-1].best_grid_loss
        err = (pred - meas) / meas
        out.append(f"fitted on widths {', '.join(str(o.group['width']) for o in rows[:-1])} ({len(fit_n)} points), "
                   f"predicted {pred:.4f} (90% {lo:.4f} .. {hi:.4f}) at width {large}, measured {meas:.4f} (seed "
                   f"mean at its best grid LR): error {err:+.2%} (goal within 1%: "
                   f"{'met' if abs(err) <= 0.01 else 'not met'}).")
    else:
        out.append("not enough widths below the largest to fit the 3-parameter law.")
    flops = result.cost.flops
    one_large = run_flops(tcfg, large, p["depth"], None)
    one_target = run_flops(tcfg, TARGET_WIDTH, p["depth"], None)
    n_target = count_params("gpt", TARGET_WIDTH, p["depth"], {"seq_len": p["train"]["seq_len"]})
    optimal = run_flops(tcfg, TARGET_WIDTH, p["depth"], 20.0 * n_target)
    out += ["", f"**B6 for `tune`**: {result.cost.trials} trials, {flops:.3g} FLOPs = {flops / one_large:.2f} "
            f"training runs of the width-{large} model ({one_large:.3g} FLOPs each, same tokens); "
            f"{flops / one_target:.2%} of one run of a {TARGET_WIDTH}-wide target at the same depth and tokens "
            f"({one_target:.3g} FLOPs; goal at most 3.5%: {'met' if flops / one_target <= 0.035 else 'not met'}); "
            f"{flops / optimal:.4%} of that target trained on 20 tokens per parameter ({optimal:.3g} FLOPs)."]
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

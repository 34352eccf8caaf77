"""``proxytune demo``: SP vs muP width sweeps on the built-in corpus, then ``tune``, prediction and report.

Everything runs locally with no network: the reference GPT, the stdlib byte
corpus, two grid sweeps (SP with one global LR, and muP) over widths and
log2 learning rates, the optimum per width and the transfer verdict; then
``proxytune tune`` on the same proxies (constants tuned at the smallest width,
verified at the wider ones, a recipe recommended), what the tuned constants
buy at the largest proxy, a prediction for a 4x wider target, and a report
with figures in the output directory. Running it again continues the stored
sweeps instead of redoing them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .analysis.optimum import Optimum, optima_by_group
from .analysis.predict import count_params
from .analysis.report import loss_figure, lr_curves_figure, optima_table, optimum_figure
from .analysis.verdict import Verdict, transfer_verdict
from .sweep import Sweep, SweepConfig
from .sweep.config import Range
from .tune import TuneConfig, Tuner, TuneResult
from .tune.report import setting_lines

PLAN_FILE = "target-plan.json"
SNIPPET_FILE = "target_snippet.py"

# Each verdict-issuing preset runs 2 seeds per point: one seed cannot tell the optimum's noise from its drift.
# The grids reach low learning rates because SP's optimum falls with width (about -1.2 octaves per doubling).
# ``recipe_lr`` overrides ``lr`` for one recipe: the demo compares the tuned recipe with SP swept at the widest
# proxy, which is fair only when SP's optimum there is inside its grid (issue 29, item 7); on the cpu preset
# SP's best point at 128 was -10, inside its grid of -12 .. -5. The cpu preset (issue 30, item 4) trains
# widths 32..128 for 400 steps of 8 x 64 tokens: the same 204,800 tokens per trial as the 200 x 16 x 64 of the
# widths-32..256 preset before it, at a quarter of its FLOPs. Twice the optimizer steps take the proxies past the
# loss plateau near 2.5 nats/byte, where at 200 steps two seeds differed by up to 0.1 and muP came out
# UNRESOLVED (2026-12-06: -0.54 per doubling, 90% -0.63 .. +0.18); at 400 steps they differ by about 0.02 and
# muP is PASS (-0.17, 90% -0.49 .. +0.31). The quick preset keeps widths 64..256 at 60 steps: on widths 32..128
# at 51,200 tokens (100 x 8 or 200 x 4) SP came out UNRESOLVED or muP FAIL, inside the plateau's noise. The gpu
# preset is extrapolated (its widest proxy is 3 doublings above 128).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"widths": [64, 128, 256], "lr": {"start": -12, "stop": -4, "step": 1}, "depth": 2, "seeds": 2,
              "train": {"steps": 60, "batch_size": 8, "seq_len": 64, "eval_every": 60, "eval_batches": 4}},
    "cpu": {"widths": [32, 64, 128], "lr": {"start": -10, "stop": -4, "step": 1}, "depth": 2, "seeds": 2,
            "recipe_lr": {"sp": {"start": -12, "stop": -5}},
            "train": {"steps": 400, "batch_size": 8, "seq_len": 64, "eval_every": 200, "eval_batches": 16}},
    "gpu": {"widths": [128, 256, 512, 1024], "lr": {"start": -13, "stop": -5, "step": 1}, "depth": 4, "seeds": 2,
            "recipe_lr": {"sp": {"start": -15}},
            "train": {"steps": 1000, "batch_size": 32, "seq_len": 256, "eval_every": 250, "eval_batches": 16,
                      "device": "cuda", "precision": "bf16"}},
}
# The tune step's stage-1 search per preset (proxytune.tune.SearchConfig fields; the rest are its defaults).
# The demo searches one-at-a-time: each round trains as one batch, so it is the faster of the two on the
# demo's small budget; `proxytune tune` defaults to TPE, which found better constants in B1b. One round on the
# cpu preset and narrower scans on the quick one keep the demo inside its time (15 and 4 min, issue 30).
TUNE_SEARCH: dict[str, dict[str, Any]] = {
    "quick": {"strategy": "oat", "rounds": 1, "finalists": 1, "span": 1, "lr_span": 1},
    "cpu": {"strategy": "oat", "rounds": 1},
    "gpu": {"strategy": "oat", "rounds": 2},
}
RECIPES = {"sp": "SP, one global LR", "mup": "muP"}

# One plain sentence per figure of merit, printed the first time it appears.
EXPLAIN = {
    "octave": "An octave is a factor 2 in learning rate: the sweep steps log2(lr) by 1, so -7 means lr = 2^-7.",
    "drift": "Drift per doubling: how many octaves the best learning rate moves each time the width doubles; "
             "0 means the LR tuned on the small model is right for the big one.",
    "regret": "Regret: how much higher the widest proxy's loss is when trained with the narrowest proxy's best "
              "LR instead of its own.",
    "wider": "Wider is better: whether the loss at the best LR keeps falling as the model widens, as it should "
             "when the HPs transfer.",
    "interval": "A 90% interval is the range that holds the true value 9 times in 10, given the seed-to-seed "
                "noise measured in the sweep.",
}


def demo_executor(workers: int, gpu: bool, batch: int) -> dict[str, Any]:
    """``workers`` processes (one on a GPU) with one thread each when there are several; 0: in this process."""
    if workers == 0:
        return {"kind": "inline", "batch": batch}
    return {"workers": 1 if gpu else workers, "threads": 1 if workers > 1 and not gpu else 2, "batch": batch}


def recipe_lr(preset: str, recipe: str) -> dict[str, float]:
    """The log2 LR grid (``{start, stop, step}``) of ``recipe``'s sweep in ``preset``: the preset's ``lr`` with
    the recipe's own ``recipe_lr`` fields over it."""
    p = PRESETS[preset]
    return {**p["lr"], **p.get("recipe_lr", {}).get(recipe, {})}


def preset_trials(preset: str, recipe: str | None = None) -> int:
    """Trials of the grid of ``recipe``'s sweep in ``preset`` (the refinement pass may add a few); None: the
    grid of a recipe without a grid of its own (a progress bar that counts on it grows when SP's sweep starts)."""
    p = PRESETS[preset]
    grid = recipe_lr(preset, recipe) if recipe is not None else p["lr"]
    return len(p["widths"]) * len(Range(**grid).values()) * p["seeds"]


def demo_sweeps(out: Path, preset: str, workers: int) -> dict[str, SweepConfig]:
    p = PRESETS[preset]
    train = {"depth": p["depth"], "warmup": 0.1, "schedule": "cosine", "betas": [0.9, 0.95], **p["train"]}
    gpu = p["train"].get("device") == "cuda"
    return {recipe: SweepConfig.from_dict({
        "name": f"demo-{preset}-{recipe}", "model": "gpt", "data": "stdlib", "recipe": recipe,
        "optimizer": "adamw", "base": {"width": p["widths"][0], "depth": p["depth"]},
        "axes": {"width": p["widths"], "log2_lr": recipe_lr(preset, recipe), "seed": list(range(p["seeds"]))},
        "train": train,
        "executor": demo_executor(workers, gpu, batch=8 if gpu else 1),
        "runs_dir": str(out / "runs"),
    }) for recipe in RECIPES}


def demo_tune_config(out: Path, preset: str, workers: int) -> TuneConfig:
    """The ``tune`` run of the demo: the same proxies, data and training settings as its sweeps."""
    p = PRESETS[preset]
    gpu = p["train"].get("device") == "cuda"
    grid = Range(**p["lr"]).values()
    search = {"lr": {"start": grid[0], "stop": grid[-1], "step": p["lr"]["step"]},
              **TUNE_SEARCH.get(preset, {"strategy": "oat", "rounds": 1, "finalists": 1, "span": 1, "lr_span": 1})}
    return TuneConfig.from_dict({
        "name": f"demo-{preset}-tune", "model": "gpt", "data": "stdlib", "optimizer": "adamw",
        "base": {"width": p["widths"][0], "depth": p["depth"]}, "widths": p["widths"][1:],
        "recipes": ["mup", "sp-perlayer"], "target": {"width": 4 * p["widths"][-1], "depth": p["depth"]},
        "train": {"warmup": 0.1, "schedule": "cosine", "betas": [0.9, 0.95], **p["train"]}, "search": search,
        "executor": demo_executor(workers, gpu, batch=8),
        "runs_dir": str(out / "runs"),
    })


def tune_trials(cfg: TuneConfig) -> int:
    """About how many trials the demo's tune run trains (for the progress bar; the race and edges move it)."""
    s, v = cfg.search, cfg.verify
    finals = (s.finalists + 1) * s.seeds
    scan = int(2 * v.span / v.step) + 1
    return (len(s.lr.values()) + Tuner(cfg).oat_budget() + finals
            + len(cfg.candidates) * scan * v.seeds * (1 + len(cfg.proxy_widths)))


# What the demo's losses at the widest proxy are, for the gain figures (issue 29, items 5 and 7).
MEASURE = ("the seed-mean validation loss at each recipe's best measured grid LR at the widest proxy; the fitted "
           "curve's minimum is reported beside it")


def measured_se(o: Optimum) -> float:
    """Standard error of the seed-mean loss at ``o``'s best grid point: the seed-to-seed spread of the loss
    level and the residual noise of one point's mean over the seeds (nan with one seed)."""
    if not math.isfinite(o.level_se):
        return math.nan
    point = o.noise / math.sqrt(o.n_seeds) if math.isfinite(o.noise) and o.n_seeds > 0 else 0.0
    return math.hypot(o.level_se, point)


def grid_extension(o: Optimum) -> float | None:
    """Where ``o``'s grid should reach for its optimum to be inside: 2 grid steps past the edge its best point
    is on (the estimator's own advice); None when the best point is inside the grid."""
    if o.edge is None or len(o.grid) < 2:
        return None
    if o.edge == "low":
        return o.grid[0] - 2 * (o.grid[1] - o.grid[0])
    return o.grid[-1] + 2 * (o.grid[-1] - o.grid[-2])


def comparison(o: Optimum, tuned: Optimum) -> dict[str, Any]:
    """A comparator ``o`` swept at the same size against the tuned recipe's optimum ``tuned``: the gap of the
    best measured seed-mean grid losses (positive: tuned is better) with its standard error, the fitted gap
    beside it, and whether the comparison is fair (the comparator's best point inside its grid; on the edge
    its best loss may be lower, and ``extend_to`` says how far its grid should reach)."""
    loss, fitted = o.best_grid_loss, o.loss
    gain = loss - tuned.best_grid_loss
    gain_fitted = fitted - tuned.loss
    return {"loss": loss, "gain": gain, "relative": gain / loss if math.isfinite(loss) and loss else math.nan,
            "se": math.hypot(measured_se(o), measured_se(tuned)), "log2_lr": o.best_grid_value,
            "loss_fitted": fitted, "gain_fitted": gain_fitted,
            "relative_fitted": gain_fitted / fitted if math.isfinite(fitted) and fitted else math.nan,
            "log2_lr_fitted": o.value, "grid": [o.grid[0], o.grid[-1]] if o.grid else [],
            "edge": o.edge, "extend_to": grid_extension(o), "fair": o.edge is None and math.isfinite(gain)}


def tuned_gain(result: TuneResult, panels: dict[str, list[Optimum]]) -> dict[str, Any]:
    """The recommended setting at the largest proxy against muP with every multiplier 1 and SP, each at its own
    best LR there: best measured seed-mean grid losses on both sides (``loss``, ``gain``, ``relative``, ``se``),
    the fitted ones beside them (``*_fitted``), and whether each comparator's optimum is inside its grid."""
    largest = max(o.group["width"] for ops in panels.values() for o in ops)
    tuned = next(c for c in result.candidates if c.recipe == result.recipe)
    opt = next((o for o in tuned.optima if o.group.get("width") == largest), None)
    out: dict[str, Any] = {"width": largest, "recipe": result.recipe, "measure": MEASURE,
                           "loss": opt.best_grid_loss if opt else math.nan,
                           "loss_se": measured_se(opt) if opt else math.nan,
                           "log2_lr": opt.best_grid_value if opt else math.nan,
                           "loss_fitted": opt.loss if opt else math.nan,
                           "log2_lr_fitted": opt.value if opt else math.nan,
                           "edge": opt.edge if opt else None}
    for key, ops in panels.items():
        o = next((o for o in ops if o.group["width"] == largest), None)
        if o is not None and opt is not None:
            out[key] = comparison(o, opt)
    return out


def story(verdicts: dict[str, Verdict], preset: str = "cpu") -> list[str]:
    """What the two sweeps show, in plain words, never claiming more than the verdicts resolved."""
    sp, mup = verdicts["sp"], verdicts["mup"]
    lines = []
    if sp.failed:
        lines.append(f"SP: the best learning rate moves {sp.drift_per_doubling:+.2f} octaves per doubling of width, "
                     "so an LR tuned on a small model is wrong for a big one.")
    elif sp.passed:
        lines.append("SP: the best learning rate did not move measurably over these widths (unexpected: SP's "
                     "optimum usually falls with width; try wider proxies).")
    else:
        lines.append("SP: this preset is too small to resolve SP's drift (" + "; ".join(sp.advice) + ").")
    if mup.passed:
        lines.append(f"muP: the best learning rate stays put ({mup.drift_per_doubling:+.2f} octaves per doubling, "
                     f"within +-{mup.thresholds['max_drift_per_doubling']:g}): tune on the small model, train the "
                     "big one once.")
    elif mup.failed:
        lines.append(f"muP: the best learning rate moves {mup.drift_per_doubling:+.2f} octaves per doubling: "
                     "muP did not transfer here; see the report's notes.")
    else:
        more = (" The full preset (proxytune demo) has more steps and a wider range." if preset == "quick" else
                "")
        lines.append("muP: this preset is too small to resolve whether the optimum stays put ("
                     + "; ".join(mup.advice) + ")." + more)
    if mup.wider_is_better == "yes":
        lines.append("muP: wider is better: each wider model reaches a lower loss at its best LR.")
    elif mup.wider_is_better == "no":
        lines.append("muP: wider is NOT better here: a wider model reached a higher loss at its best LR.")
    else:
        lines.append("muP: the loss gain from width is within the seed-to-seed noise at this preset.")
    return lines


def run_demo(out: str | Path = "proxytune-demo", preset: str = "cpu", workers: int = 2,
             log: Callable[[str], None] = print,
             on_poll: Callable[[str, dict[str, int]], None] | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``out/summary.json``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; valid: {', '.join(PRESETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = demo_sweeps(out, preset, workers)
    p = PRESETS[preset]
    panels: dict[str, list[Optimum]] = {}
    verdicts: dict[str, Verdict] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    for recipe, cfg in configs.items():
        log(f"sweep {cfg.name} ({RECIPES[recipe]}): widths {p['widths']}, "
            f"{len(cfg.axes['log2_lr'].values())} learning rates, {p['seeds']} seeds -> {cfg.run_dir}")
        sweep = Sweep(cfg)
        sweep.run(on_poll=(lambda counts, store, r=recipe: on_poll(r, counts)) if on_poll else None)
        records[recipe] = sweep.records()
        panels[recipe] = optima_by_group(records[recipe], "log2_lr", size_axes=["width"])
        verdicts[recipe] = transfer_verdict(panels[recipe], "width")
    tcfg = demo_tune_config(out, preset, workers)
    log(f"tune {tcfg.name}: constants and LR at width {tcfg.base_width}, verified at widths "
        f"{', '.join(map(str, tcfg.proxy_widths))} for {', '.join(tcfg.candidates)} -> {tcfg.run_dir}")
    tuned = Tuner(tcfg, log=lambda m: log(f"  {m}"),
                  on_poll=(lambda stage, counts: on_poll(f"tune:{stage}", counts)) if on_poll else None).run()
    gain = tuned_gain(tuned, panels)
    pred = tuned.prediction
    if pred is None or pred.plan is None or pred.snippet is None:
        raise RuntimeError("the demo's tuning run has a target: it must predict for it")  # its config sets one
    shutil.copyfile(pred.plan, out / PLAN_FILE)
    shutil.copyfile(pred.snippet, out / SNIPPET_FILE)
    loss = pred.to_dict()["loss"]
    prediction = {"recipe": _tuned_label(tuned), "sweep": tuned.run_dir,
                  "target_width": pred.width, "target_depth": pred.depth, "target_params": pred.params,
                  "tokens": pred.tokens, "lr": pred.lr, "lr_interval": list(pred.lr_interval),
                  "log2_lr": pred.log2_lr, "log2_lr_interval": list(pred.log2_lr_interval), "loss": loss,
                  "warnings": list(pred.warnings), "notes": list(pred.notes),
                  "lr_source": pred.lr_source, "settings": [x.to_dict() for x in pred.settings],
                  "setting_lines": setting_lines(pred),
                  "plan": str(out / PLAN_FILE), "snippet": str(out / SNIPPET_FILE)}
    summary = {
        "preset": preset,
        "seeds": p["seeds"],
        "tokens_per_trial": p["train"]["steps"] * p["train"]["batch_size"] * p["train"]["seq_len"],
        "runs": {**{r: str(c.run_dir) for r, c in configs.items()}, "tune": str(tcfg.run_dir)},
        "verdicts": {r: v.line for r, v in verdicts.items()},
        "states": {r: v.state for r, v in verdicts.items()},
        "advice": {r: v.advice for r, v in verdicts.items()},
        "drift_per_doubling": {r: v.drift_per_doubling for r, v in verdicts.items()},
        "drift_interval": {r: list(v.drift_interval) for r, v in verdicts.items()},
        "regret": {r: v.relative_regret for r, v in verdicts.items()},
        "wider_is_better": {r: v.wider_is_better for r, v in verdicts.items()},
        "story": story(verdicts, preset) + tune_story(tuned, gain),
        "optima": {r: [o.to_dict() for o in ops] for r, ops in panels.items()},
        "tune": {"recipe": tuned.recipe, "log2_lr": tuned.log2_lr, "lr": tuned.lr, "constants": tuned.constants,
                 "recommendation": list(tuned.recommendation), "gain": gain, "cost": tuned.cost.to_dict(),
                 "report": tuned.report,
                 "config": str(tcfg.run_dir / "tune.yaml")},
        "prediction": prediction,
        "next": next_steps(out, configs, tcfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_report(out, panels, verdicts, records, tuned, depth=p["depth"], seq_len=p["train"]["seq_len"],
                 summary=summary)
    return summary


def _tuned_label(tuned: TuneResult) -> str:
    return f"{tuned.recipe} + tuned constants"


COMPARATORS = {"mup": "muP with default constants", "sp": "SP with its LR tuned at width {w}"}


def _pair(measured: float, fitted: float) -> str:
    return f"{measured:.3f} measured, {fitted:.3f} fitted"


def _against(label: str, g: dict[str, Any]) -> str:
    """One comparison of the gain line: the measured gap with its noise when the comparator's optimum is inside
    its grid; else that the comparison is not fair, why, and how far to extend the comparator's grid."""
    head = f"against {label} ({_pair(g['loss'], g['loss_fitted'])})"
    noise = f" ± {g['se']:.3f}" if math.isfinite(g["se"]) else ""
    gap = f"{g['gain']:+.3f}{noise} nats/byte ({g['relative']:+.1%}; fitted {g['gain_fitted']:+.3f})"
    if g.get("fair", True):
        return f"{head}: {gap}"
    if g.get("edge") is None:  # no finite measured loss on one side
        return f"{head}: no measured gap"
    side = "lowest" if g["edge"] == "low" else "highest"
    lo, hi = g["grid"]
    return (f"{head}: NOT a fair comparison, its best measured log2 lr {g['log2_lr']:g} is the {side} of its "
            f"grid ({lo:g} .. {hi:g}), so its best loss may be lower; extend its grid to log2 lr "
            f"{g['extend_to']:g} (2 more points) before quoting the gap, {gap} as measured, which may shrink")


def gain_line(tuned: TuneResult, gain: dict[str, Any]) -> str:
    """What the tuned constants buy at the largest proxy: best measured seed-mean losses on both sides of each
    comparison, the fitted ones beside them, and a comparator whose optimum is on its grid's edge called so."""
    w = gain["width"]
    consts = ", ".join(f"{k} {v}" for k, v in tuned.constants.items()) or "every multiplier at 1 (none beat them)"
    parts = [_against(label.format(w=w), gain[key]) for key, label in COMPARATORS.items() if gain.get(key)]
    own = (f"; its own best LR is on the {gain['edge']} edge of its scan, so its best loss may be lower and the gaps "
           "larger" if gain.get("edge") else "")
    return (f"Tuned constants ({consts}) at width {w}: loss {_pair(gain['loss'], gain['loss_fitted'])} with "
            f"{tuned.recipe}{own}; " + "; ".join(parts)
            + " (positive = tuned is better; measured: the seed mean at each recipe's best grid LR there).")


def tune_story(tuned: TuneResult, gain: dict[str, Any]) -> list[str]:
    """What the tuned constants buy at the largest proxy, in plain words, and the recommendation."""
    lines = [gain_line(tuned, gain)]
    lines.append("Recommendation: train the big model with " + tuned.recommendation[0].split(": ", 1)[-1]
                 + " and these constants; " + _run_advice(tuned) + ".")
    return lines


def _run_advice(tuned: TuneResult) -> str:
    """The target run the settings are for, with its tokens and batch, and what to do for another run."""
    p = tuned.prediction
    if p is None or not p.settings:
        return "the settings are for the proxies' tokens and batch"
    batch, steps = p.setting("batch_tokens"), p.setting("steps")
    return (f"the settings below (lr, batch, steps, weight decay, warmup, beta2) are for a run of width {p.width} on "
            f"{p.tokens:,.0f} tokens at {batch.value:,.0f} tokens per step ({steps.value:,.0f} steps), the proxies' "
            "tokens and batch; for your run, put its tokens and batch in the tune file (target: {tokens, batch}): "
            "tune then measures how the LR moves with them at the base width and answers for that run")


def next_steps(out: Path, configs: dict[str, SweepConfig], tune: TuneConfig) -> list[str]:
    """The commands a user runs next, on this demo's runs and on their own model."""
    mup = configs["mup"].run_dir
    return [f"proxytune analyze {mup}    # the optima and the verdict of the muP sweep",
            f"proxytune tune {tune.run_dir / 'tune.yaml'}    # the tuning run: copy its file, point it at your model",
            f"proxytune predict {mup} --width 1024 --depth 2    # settings and expected loss for your target",
            "proxytune check --model mypkg.models:build --data corpus.txt --recipe mup    # your own model",
            "proxytune explain --model gpt --width 1024 --depth 24 --base-width 256 --base-depth 4 --check"]


def write_report(out: Path, panels: dict[str, list[Optimum]], verdicts: dict[str, Verdict],
                 records: dict[str, list[dict[str, Any]]], tuned: TuneResult, depth: int = 2,
                 seq_len: int = 64, summary: dict[str, Any] | None = None) -> Path:
    """The demo's ``report.md`` and figures: the sweeps' verdicts, what tuning bought, the target's prediction.

    ``tuned`` is the demo's tuning run, whose prediction (it always has a target) the report states."""
    names = {RECIPES[r]: ops for r, ops in panels.items()}
    figs = _demo_figures(out, panels, verdicts, tuned, depth, seq_len)
    summary = summary or {}
    budget = (f"Each trial trains on {summary['tokens_per_trial']:,} tokens, {summary['seeds']} seeds per point; "
              "losses are validation losses in nats/byte." if summary else "")
    lines = [
        "# proxytune demo report", "",
        "Reference GPT on the built-in stdlib byte corpus; grid sweeps over width and log2 learning rate, then "
        "`proxytune tune` on the same proxies.",
        budget, "",
        "## What it shows", "", *[f"- {line}" for line in summary.get("story", [])], "",
        "## Transfer verdict", "",
        *[f"- **{RECIPES[r]}**: {v.line}" + "".join(f"\n  - {a}" for a in v.advice) for r, v in verdicts.items()],
        "", *[f"- {EXPLAIN[k]}" for k in ("octave", "drift", "regret", "wider", "interval")], "",
        "## Optimum per width", "", optima_table(names), "",
        *_tune_lines(out, tuned, summary),
        *gain_table(summary.get("tune", {}).get("gain")),
        *_prediction_lines(tuned),
        "", "## Next", "", *[f"    {c}" for c in summary.get("next", [])], "",
        "## Figures", "",
        *[f"![{f.stem}]({f.name})" for f in figs], "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _demo_figures(out: Path, panels: dict[str, list[Optimum]], verdicts: dict[str, Verdict], tuned: TuneResult,
                  depth: int, seq_len: int) -> list[Path]:
    """LR curves and optimum per width of the sweeps; loss against parameters with the tuned recipe's points
    and the loss law carried to the target."""
    names = {RECIPES[r]: ops for r, ops in panels.items()}
    named_verdicts = {RECIPES[r]: v for r, v in verdicts.items()}
    figs = [lr_curves_figure(names, out / "lr_curves.png"),
            optimum_figure(names, out / "optimum_vs_width.png", verdicts=named_verdicts)]
    points = {}

    def n_of(width: Any) -> int:
        return count_params("gpt", int(width), depth, {"seq_len": seq_len})

    for r, ops in panels.items():
        # the seed-mean loss at the best grid point of each width
        rows = sorted((o for o in ops if math.isfinite(o.best_grid_loss)), key=lambda o: o.group["width"])
        points[RECIPES[r]] = ([n_of(o.group["width"]) for o in rows], [o.best_grid_loss for o in rows])
    cand = next(c for c in tuned.candidates if c.recipe == tuned.recipe)
    # the same measure as the sweeps' points and the prediction's loss law: the seed mean at the best grid LR
    rows = sorted((o for o in cand.optima if math.isfinite(o.best_grid_loss)), key=lambda o: o.group["width"])
    points[_tuned_label(tuned)] = ([n_of(o.group["width"]) for o in rows], [o.best_grid_loss for o in rows])
    pred = tuned.prediction
    extrapolation = ({"recipe": _tuned_label(tuned), "law": pred.loss_law, "target": pred.params,
                      "interval": pred.loss.interval}
                     if pred is not None and pred.loss and pred.loss_law is not None else None)
    figs.append(loss_figure(points, out / "loss_vs_params.png", extrapolation))
    return figs


def _tune_lines(out: Path, tuned: TuneResult, summary: dict[str, Any]) -> list[str]:
    t = summary.get("tune", {})
    cost = tuned.cost
    return [
        "## What tuned constants buy", "",
        f"`proxytune tune` searched the named multipliers and the LR at the smallest width, verified them at "
        f"the wider ones for {', '.join(c.recipe for c in tuned.candidates)}, and recommends:", "",
        f"- recipe `{tuned.recipe}`, constants "
        + (", ".join(f"`{k}: {v}`" for k, v in tuned.constants.items()) or "all 1")
        + " (the lr and the run's other settings: the prediction below)",
        *[f"- {line}" for line in tuned.recommendation],
        f"- cost: {cost.trials} trials, {cost.flops:.3g} FLOPs"
        + (f" ({cost.vs_lr_sweep_at_largest:.2f}x an LR sweep at the largest proxy)"
           if cost.vs_lr_sweep_at_largest is not None else ""),
        f"- its report: `{os.path.relpath(tuned.report, out)}`; its config, to adapt to your model: "
        f"`{t.get('config', '')}`", ""]


def gain_table(gain: dict[str, Any] | None) -> list[str]:
    """The report's table of what the tuned constants buy at the largest proxy: each recipe's best measured
    seed-mean loss and the fitted one beside it, the measured and fitted gaps, and whether each comparison is
    fair (a comparator's optimum on its grid's edge is not, and the row says how far to extend its grid)."""
    if not gain:
        return []
    w = gain["width"]
    rows = [f"| {gain['recipe']} + tuned constants | {gain['loss']:.4f} ({gain['log2_lr']:g}) | "
            f"{gain['loss_fitted']:.4f} ({gain['log2_lr_fitted']:.2f}) | | | "
            + (f"its best LR is on the {gain['edge']} edge of its scan |" if gain.get("edge") else "|")]
    for key, label in COMPARATORS.items():
        g = gain.get(key)
        if not g:
            continue
        noise = f" ± {g['se']:.4f}" if math.isfinite(g["se"]) else ""
        fair = "yes" if g["fair"] else (
            f"**no**: its best point is on the {g['edge']} edge of its grid ({g['grid'][0]:g} .. {g['grid'][1]:g}), "
            f"so its best loss may be lower; extend the grid to log2 lr {g['extend_to']:g}" if g["edge"] else "no")
        rows.append(f"| {label.format(w=w)} | {g['loss']:.4f} ({g['log2_lr']:g}) | {g['loss_fitted']:.4f} "
                    f"({g['log2_lr_fitted']:.2f}) | {g['gain']:+.4f}{noise} ({g['relative']:+.1%}) | "
                    f"{g['gain_fitted']:+.4f} ({g['relative_fitted']:+.1%}) | {fair} |")
    return [f"At width {w}, each recipe at its own best LR. Measured: the seed-mean loss at the best grid point "
            "(log2 lr in brackets); fitted: the fitted curve's minimum (where it is). Gaps: positive = the tuned "
            "recipe is better; the measured gap's standard error is the seed-to-seed noise of both points.", "",
            "| at the largest proxy | best measured loss (log2 lr) | fitted loss (log2 lr) | tuned better by, "
            "measured | tuned better by, fitted | fair comparison |",
            "|---|---|---|---|---|---|", *rows, ""]


def _prediction_lines(tuned: TuneResult) -> list[str]:
    p = tuned.prediction
    if p is None:
        return []
    loss = p.loss
    return [
        "## Prediction for the target", "",
        f"- with {_tuned_label(tuned)}, from `{tuned.run_dir}`",
        f"- target: width {p.width} ({p.params / 1e6:.2f} M parameters), {p.tokens or 0:,.0f} tokens",
        "- the target run's settings (the lr is the one for `plan.optimizer(lr=...)` of the target's plan; the "
        "training code uses every one of them):",
        *[f"  - {line}" for line in setting_lines(p)],
        (f"- expected loss after {loss.at_tokens:,.0f} tokens: {loss.value:.3f} nats/byte (90% interval "
         f"{loss.interval[0]:.3f} .. {loss.interval[1]:.3f}); law {loss.law}" if loss
         else "- expected loss: not predicted"),
        *[f"- **trust**: {w}" for w in p.warnings],
        *[f"- note: {n}" for n in p.notes],
        f"- per-tensor plan: `{PLAN_FILE}`; training code: `{SNIPPET_FILE}`"]

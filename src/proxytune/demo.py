"""``proxytune demo``: SP vs muP width sweeps on the built-in corpus, then verdict, prediction and report.

Everything runs locally with no network: the reference GPT, the stdlib byte
corpus, two grid sweeps (SP with one global LR, and muP) over widths and
log2 learning rates, the optimum per width, the transfer verdict, a
prediction for a 4x wider target, and a report with figures in the output
directory. Running it again continues the stored sweeps instead of redoing
them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .analysis.optimum import Optimum, optima_by_group
from .analysis.predict import count_params, predict_from_sweep
from .analysis.report import loss_figure, lr_curves_figure, optima_table, optimum_figure
from .analysis.verdict import Verdict, transfer_verdict
from .sweep import Sweep, SweepConfig

PRESETS: dict[str, dict[str, Any]] = {
    # about 2 minutes on 2 CPU cores
    "quick": {"widths": [32, 64], "lr": {"start": -11, "stop": -3, "step": 2}, "depth": 2,
              "train": {"steps": 60, "batch_size": 8, "seq_len": 64, "eval_every": 60, "eval_batches": 4}},
    # about 10 minutes on 2 CPU cores (B1's CPU preset: widths 8x apart)
    "cpu": {"widths": [32, 64, 128, 256], "lr": {"start": -10, "stop": -4, "step": 1}, "depth": 2,
            "train": {"steps": 200, "batch_size": 16, "seq_len": 64, "eval_every": 100, "eval_batches": 8}},
    # a lent GPU
    "gpu": {"widths": [128, 256, 512, 1024], "lr": {"start": -13, "stop": -5, "step": 1}, "depth": 4,
            "train": {"steps": 1000, "batch_size": 32, "seq_len": 256, "eval_every": 250, "eval_batches": 16,
                      "device": "cuda", "precision": "bf16"}},
}
RECIPES = {"sp": "SP, one global LR", "mup": "muP"}


def demo_sweeps(out: Path, preset: str, workers: int) -> dict[str, SweepConfig]:
    p = PRESETS[preset]
    train = {"depth": p["depth"], "warmup": 0.1, "schedule": "cosine", "betas": [0.9, 0.95], **p["train"]}
    gpu = p["train"].get("device") == "cuda"
    return {recipe: SweepConfig.from_dict({
        "name": f"demo-{preset}-{recipe}", "model": "gpt", "data": "stdlib", "recipe": recipe,
        "optimizer": "adamw", "base": {"width": p["widths"][0], "depth": p["depth"]},
        "axes": {"width": p["widths"], "log2_lr": p["lr"]}, "train": train,
        "executor": {"workers": 1 if gpu else workers, "threads": 1 if workers > 1 and not gpu else 2,
                     "batch": 8 if gpu else 1},
        "runs_dir": str(out / "runs"),
    }) for recipe in RECIPES}


def run_demo(out: str | Path = "proxytune-demo", preset: str = "cpu", workers: int = 2,
             log: Callable[[str], None] = print,
             on_poll: Callable[[str, dict[str, int]], None] | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``out/summary.json``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; valid: {', '.join(PRESETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = demo_sweeps(out, preset, workers)
    panels: dict[str, list[Optimum]] = {}
    verdicts: dict[str, Verdict] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    for recipe, cfg in configs.items():
        log(f"sweep {cfg.name}: {RECIPES[recipe]}, widths {PRESETS[preset]['widths']}, "
            f"{len(Sweep(cfg).cfg.axes['log2_lr'].values())} learning rates")
        sweep = Sweep(cfg)
        sweep.run(on_poll=(lambda counts, store, r=recipe: on_poll(r, counts)) if on_poll else None)
        records[recipe] = sweep.records()
        panels[recipe] = optima_by_group(records[recipe], "log2_lr", size_axes=["width"])
        verdicts[recipe] = transfer_verdict(panels[recipe], "width")
    widths = PRESETS[preset]["widths"]
    mup = Sweep(configs["mup"])
    result = predict_from_sweep(mup, width=4 * widths[-1], plan_path=out / "target-plan.json")
    (out / "target_snippet.py").write_text(result["plan"]["snippet"])
    loss = result["loss"]
    prediction = {"target_width": result["target"]["width"], "target_params": result["target"]["params"],
                  "lr": result["hp"]["lr"], "lr_interval": result["hp"]["lr_interval"],
                  "log2_lr": result["hp"]["value"], "loss": loss, "notes": result["notes"],
                  "plan": str(out / "target-plan.json"), "snippet": str(out / "target_snippet.py")}
    summary = {
        "preset": preset,
        "verdicts": {r: v.line for r, v in verdicts.items()},
        "drift_octaves": {r: v.drift for r, v in verdicts.items()},
        "regret": {r: v.relative_regret for r, v in verdicts.items()},
        "optima": {r: [o.to_dict() for o in ops] for r, ops in panels.items()},
        "prediction": prediction,
    }
    (out / "summary.json").write_text(json.dumps(
        {**summary, "prediction": {**prediction, "loss": {k: v for k, v in (prediction["loss"] or {}).items()
                                                          if k != "fit"} or None}}, indent=1, default=str))
    write_report(out, panels, verdicts, records, prediction, depth=PRESETS[preset]["depth"],
                 seq_len=PRESETS[preset]["train"]["seq_len"])
    return summary


def write_report(out: Path, panels: dict[str, list[Optimum]], verdicts: dict[str, Verdict],
                 records: dict[str, list[dict[str, Any]]], prediction: dict[str, Any], depth: int = 2,
                 seq_len: int = 64) -> Path:
    names = {RECIPES[r]: ops for r, ops in panels.items()}
    figs = [lr_curves_figure(names, out / "lr_curves.png"), optimum_figure(names, out / "optimum_vs_width.png")]
    points = {}
    for r, ops in panels.items():
        rows = sorted((o for o in ops if math.isfinite(o.best_grid_loss)), key=lambda o: o.group["width"])
        points[RECIPES[r]] = ([count_params("gpt", int(o.group["width"]), depth, {"seq_len": seq_len}) for o in rows],
                              [o.best_grid_loss for o in rows])
    loss = prediction.get("loss") or {}
    extrapolation = ({"recipe": "muP", "law": loss["fit"], "target": prediction["target_params"],
                      "interval": loss["interval"]} if loss else None)
    figs.append(loss_figure(points, out / "loss_vs_params.png", extrapolation))
    lines = [
        "# proxytune demo report", "",
        "Reference GPT on the built-in stdlib byte corpus; grid sweeps over width and log2 learning rate.", "",
        "## Transfer verdict", "",
        *[f"- **{RECIPES[r]}**: {v.line}" for r, v in verdicts.items()], "",
        "## Optimum per width", "", optima_table(names), "",
        "## Prediction for the target", "",
        f"- target: width {prediction['target_width']} ({prediction['target_params'] / 1e6:.2f} M parameters)",
        f"- learning rate: {prediction['lr']:.4g} (90% interval {prediction['lr_interval'][0]:.3g} .. "
        f"{prediction['lr_interval'][1]:.3g})",
        (f"- expected loss: {loss['value']:.3f} (90% interval {loss['interval'][0]:.3f} .. "
         f"{loss['interval'][1]:.3f}); law {loss['law']}" if loss else "- expected loss: not predicted"),
        *[f"- note: {n}" for n in prediction["notes"]],
        f"- per-tensor plan: `{Path(prediction['plan']).name}`; code: `{Path(prediction['snippet']).name}`", "",
        "## Figures", "",
        *[f"![{f.stem}]({f.name})" for f in figs], "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

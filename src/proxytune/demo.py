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
from .analysis.report import loss_figure, lr_curves_figure, optima_table, optimum_figure
from .analysis.verdict import Verdict, transfer_verdict
from .sweep import Sweep, SweepConfig

PRESETS: dict[str, dict[str, Any]] = {
    # about 2 minutes on 2 CPU cores
    "quick": {"widths": [32, 64], "lr": {"start": -11, "stop": -3, "step": 2}, "depth": 2,
              "train": {"steps": 60, "batch_size": 8, "seq_len": 64, "eval_every": 60, "eval_batches": 4}},
    # about 10 minutes on 2 CPU cores (B1's CPU preset, shortened)
    "cpu": {"widths": [32, 48, 64, 96], "lr": {"start": -11, "stop": -4, "step": 1}, "depth": 2,
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
    prediction = predict_target(configs["mup"], panels["mup"], records["mup"], out)
    summary = {
        "preset": preset,
        "verdicts": {r: v.line for r, v in verdicts.items()},
        "drift_octaves": {r: v.drift for r, v in verdicts.items()},
        "regret": {r: v.relative_regret for r, v in verdicts.items()},
        "optima": {r: [o.to_dict() for o in ops] for r, ops in panels.items()},
        "prediction": prediction,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_report(out, panels, verdicts, records, prediction, depth=PRESETS[preset]["depth"])
    return summary


def _params(width: int, depth: int) -> int:
    from .builders import build_model, load_builder

    model = build_model(load_builder("gpt"), width, depth, "meta", {})
    return sum(p.numel() for p in model.parameters())


def predict_target(cfg: SweepConfig, optima: list[Optimum], records: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """HPs and loss of a 4x wider target from the muP sweep, and its per-tensor plan (JSON + snippet)."""
    import torch

    from .analysis.laws import fit_power_law, fit_saturating_power_law
    from .builders import build_model, load_builder
    from .plan import parameterize

    depth = cfg.train["depth"]
    rows = sorted((o for o in optima if math.isfinite(o.value)), key=lambda o: o.group["width"])
    widths = [int(o.group["width"]) for o in rows]
    target_width = 4 * widths[-1]
    ns = [_params(w, depth) for w in widths]
    n_target = _params(target_width, depth)
    notes = []
    lr_law = fit_power_law(ns, [2.0 ** o.value for o in rows]) if len(rows) >= 3 else None
    if lr_law is not None:
        lr = lr_law.predict(n_target)
        lo, hi = lr_law.interval(n_target, 0.9)
        notes.append(f"lr from the fitted law {lr_law}")
    else:
        lr = 2.0 ** rows[-1].value
        lo, hi = 2.0 ** rows[-1].interval[0], 2.0 ** rows[-1].interval[1]
        notes.append("lr transferred from the largest proxy (a law needs 3 or more widths)")
    loss: dict[str, Any] = {}
    if len(rows) >= 4:
        law = fit_saturating_power_law(ns, [o.best_grid_loss for o in rows])
        lo_l, hi_l = law.interval(n_target, 0.9)
        loss = {"value": law.predict(n_target), "interval": [lo_l, hi_l], "law": str(law)}
    else:
        notes.append("no loss prediction: L = a N^b + c (3 parameters) needs 4 or more widths")
    base = build_model(load_builder("gpt"), widths[0], depth, "cpu", {})
    target = build_model(load_builder("gpt"), target_width, depth, "meta", {})
    plan = parameterize(target, base, recipe=cfg.recipe, optimizer=cfg.optimizer)
    plan.save(out / "target-plan.json")
    # lr at the base shape that the plan scales per tensor: muP's base LR transfers unchanged.
    base_lr = lr
    snippet = (f"import proxytune as pt\nfrom proxytune.models import gpt\n\n"
               f"target = gpt.build(width={target_width}, depth={depth})\n"
               f"base = gpt.build(width={widths[0]}, depth={depth}, device=\"meta\")\n"
               f"plan = pt.parameterize(target, base, recipe=\"{cfg.recipe}\", optimizer=\"{cfg.optimizer}\")\n"
               f"opt = plan.optimizer(lr={base_lr:.4g}, betas=(0.9, 0.95))\n")
    (out / "target_snippet.py").write_text(snippet)
    del torch
    return {"target_width": target_width, "target_params": n_target, "lr": lr, "lr_interval": [lo, hi],
            "log2_lr": math.log2(lr), "loss": loss, "notes": notes, "plan": str(out / "target-plan.json"),
            "snippet": str(out / "target_snippet.py")}


def write_report(out: Path, panels: dict[str, list[Optimum]], verdicts: dict[str, Verdict],
                 records: dict[str, list[dict[str, Any]]], prediction: dict[str, Any], depth: int = 2) -> Path:
    names = {RECIPES[r]: ops for r, ops in panels.items()}
    figs = [lr_curves_figure(names, out / "lr_curves.png"), optimum_figure(names, out / "optimum_vs_width.png")]
    points = {}
    for r, ops in panels.items():
        rows = sorted((o for o in ops if math.isfinite(o.best_grid_loss)), key=lambda o: o.group["width"])
        points[RECIPES[r]] = ([_params(int(o.group["width"]), depth) for o in rows], [o.best_grid_loss for o in rows])
    figs.append(loss_figure(points, out / "loss_vs_params.png"))
    loss = prediction.get("loss") or {}
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

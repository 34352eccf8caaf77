"""Figures and a markdown report for one or more sweeps (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .optimum import Optimum


def _plt():  # noqa: ANN202
    try:
        import matplotlib
    except ImportError:
        raise ImportError("figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lr_curves_figure(panels: dict[str, list[Optimum]], path: Path, size_axis: str = "width",
                     hp: str = "log2_lr") -> Path:
    """The muTransfer figure: loss vs log2 LR, one curve per size, one panel per recipe, optima marked."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), sharey=True, squeeze=False)
    finite_losses = [v for ops in panels.values() for o in ops for v in o.mean_losses if math.isfinite(v)]
    lo = min(finite_losses) if finite_losses else 0
    for ax, (name, optima) in zip(axes[0], panels.items()):
        cmap = plt.get_cmap("viridis")
        for i, o in enumerate(sorted(optima, key=lambda o: float(o.group.get(size_axis, 0)))):
            color = cmap(i / max(1, len(optima) - 1))
            xs = [x for x, y in zip(o.grid, o.mean_losses) if math.isfinite(y)]
            ys = [y for y in o.mean_losses if math.isfinite(y)]
            ax.plot(xs, ys, "o-", color=color, label=f"{size_axis} {o.group.get(size_axis)}", ms=3)
            if math.isfinite(o.value):
                ax.plot([o.value], [o.loss], "*", color=color, ms=12, mec="k")
        ax.set_title(name)
        ax.set_xlabel(hp.replace("log2_", "log2 "))
        ax.grid(alpha=0.3)
        if finite_losses:
            ax.set_ylim(lo - 0.05, lo + 1.5)
    axes[0][0].set_ylabel("validation loss")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def optimum_figure(panels: dict[str, list[Optimum]], path: Path, size_axis: str = "width",
                   fits: dict[str, Any] | None = None) -> Path:
    """Optimal log2 HP vs size with its 90% interval, per recipe, and the fitted law (3 or more sizes)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, optima in panels.items():
        rows = sorted((o for o in optima if math.isfinite(o.value)), key=lambda o: float(o.group[size_axis]))
        xs = [float(o.group[size_axis]) for o in rows]
        ys = [o.value for o in rows]
        err = [[o.value - o.interval[0] for o in rows], [o.interval[1] - o.value for o in rows]]
        line = ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=name)
        if len(set(xs)) >= 3:
            from .laws import fit_log2_hp

            law = fit_log2_hp(xs, ys, x_name=size_axis)
            import numpy as np

            grid = np.geomspace(min(xs), max(xs), 30)
            ax.plot(grid, [float(law.predict_log(x)) for x in grid], "--", color=line[0].get_color(),
                    label=f"{name}: fit, {law.exponent:+.2f} octaves per doubling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(size_axis)
    ax.set_ylabel("optimal log2 lr")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_figure(points: dict[str, tuple[list[float], list[float]]], path: Path,
                extrapolation: dict[str, Any] | None = None) -> Path:
    """Best loss vs parameters per recipe, with the fitted law extended to the target when given.

    ``extrapolation``: {"recipe": name, "law": object with predict(n), "target": n, "interval": (lo, hi)}.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (ns, losses) in points.items():
        ax.plot(ns, losses, "o", label=name)
    if extrapolation:
        import numpy as np

        ns = [n for pts in points.values() for n in pts[0]]
        grid = np.geomspace(min(ns), extrapolation["target"], 50)
        ax.plot(grid, [extrapolation["law"].predict(float(n)) for n in grid], "--", color="gray",
                label=f"fit ({extrapolation['recipe']})")
        lo, hi = extrapolation.get("interval", (None, None))
        pred = extrapolation["law"].predict(float(extrapolation["target"]))
        if lo is not None:
            ax.errorbar([extrapolation["target"]], [pred], yerr=[[pred - lo], [hi - pred]], fmt="s", color="k",
                        capsize=4, label="target (predicted)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("best validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def optima_table(panels: dict[str, list[Optimum]], size_axis: str = "width") -> str:
    """Markdown table: recipe, size, optimum (interval), best grid point, loss, notes."""
    lines = [f"| recipe | {size_axis} | optimal log2 lr (90% interval) | best grid point | loss at best | notes |",
             "|---|---|---|---|---|---|"]
    for name, optima in panels.items():
        for o in sorted(optima, key=lambda o: float(o.group.get(size_axis, 0))):
            lines.append(f"| {name} | {o.group.get(size_axis)} | {o.value:.2f} ({o.interval[0]:.2f} .. "
                         f"{o.interval[1]:.2f}) | {o.best_grid_value:g} | {o.best_grid_loss:.4f} | "
                         f"{'; '.join(o.notes) or '-'} |")
    return "\n".join(lines)


def write_sweep_report(sweep: Any, out: Path, hp: str = "log2_lr", size_axis: str = "width") -> Path:
    """``report.md`` + PNG figures for one sweep: optima, verdict, loss vs HP / size."""
    from .optimum import optima_by_group
    from .verdict import transfer_verdict

    out.mkdir(parents=True, exist_ok=True)
    records = sweep.records()
    optima = optima_by_group(records, hp)
    if not optima:
        raise ValueError("no finished trials to report on yet")
    name = f"{sweep.cfg.recipe} + {sweep.cfg.optimizer}"
    panels = {name: optima}
    figs = [lr_curves_figure(panels, out / "lr_curves.png", size_axis, hp)]
    verdict_line = "no transfer verdict (needs 2 or more sizes along one axis)"
    sizes = {o.group.get(size_axis) for o in optima}
    if len(sizes) >= 2 and len(sizes) == len(optima):
        verdict_line = transfer_verdict(optima, size_axis).line
        figs.append(optimum_figure(panels, out / "optimum_vs_size.png", size_axis))
    by_size: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("status") == "complete" and r.get("params"):
            by_size.setdefault(r["params"], []).append(r)
    if len(by_size) >= 2:
        ns = sorted(by_size)
        figs.append(loss_figure({name: (ns, [min(x["val_loss"] for x in by_size[n]) for n in ns])},
                                out / "loss_vs_params.png"))
    counts = sweep.store().counts()
    lines = [
        f"# Sweep report: {sweep.cfg.name}", "",
        f"Model `{sweep.cfg.model}`, data `{sweep.cfg.data}`, recipe `{sweep.cfg.recipe}`, optimizer "
        f"`{sweep.cfg.optimizer}`, base {sweep.cfg.base or 'the target itself'}.", "",
        "Trials: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
        "## Verdict", "", verdict_line, "",
        "## Optimum per size", "", optima_table(panels, size_axis), "",
        "## Figures", "", *[f"![{f.stem}]({f.name})" for f in figs], "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

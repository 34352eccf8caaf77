"""Figures and a markdown report for one or more sweeps (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .optimum import Optimum
from .verdict import Verdict, lsq_slope
from ..train.config import TrainConfig
from .optimum import optima_by_group
from .verdict import verdict_with_gaps

# Fraction of the data range left empty above and below the data in every figure.
MARGIN = 0.05
# Horizontal spread between recipes in optimum_figure, in octaves of the size: enough to separate points that
# share a size (and often the same optimum at the base), small next to one doubling.
RECIPE_OFFSET = 0.04
# Readable names of the HPs that are swept in octaves.
_HP_NAMES = {"lr": "learning rate", "weight_decay": "weight decay", "init_scale": "init scale", "eps": "Adam eps"}


def _plt():  # noqa: ANN202
    try:
        import matplotlib
    except ImportError:
        raise ImportError("figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def hp_label(hp: str) -> str:
    """``log2_lr`` -> ``log2 learning rate``: axis labels spell the HP out."""
    log2 = hp.startswith("log2_")
    name = hp[5:] if log2 else hp
    name = _HP_NAMES.get(name, name.replace("_", " "))
    return f"log2 {name}" if log2 else name


def data_loss_unit(data: str) -> str:
    """The unit of the validation loss for a sweep's ``data``: cross-entropy per byte for the byte-level corpora
    (``stdlib``, text files), per token for ``.bin`` token files, mean squared error for the teacher task."""
    if data == "teacher":
        return "MSE"
    return "nats/token" if str(data).endswith(".bin") else "nats/byte"


def _fit_range(values: list[float], margin: float = MARGIN) -> tuple[float, float] | None:
    """Axis limits around the finite ``values`` with ``margin`` of their range on each side; None if none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    # a single value (or all equal) still needs a visible, non-zero range
    pad = margin * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)
    return lo - pad, hi + pad


def _legend_outside(ax: Any, **kwargs: Any) -> None:
    """Legend to the right of the axes, so it never covers data (the figure is saved with a tight bbox)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    # tight bbox: the outside legend is part of the saved image instead of being cut off
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def lr_curves_figure(panels: dict[str, list[Optimum]], path: Path, size_axis: str = "width",
                     hp: str = "log2_lr", loss_unit: str = "nats/byte") -> Path:
    """The muTransfer figure: loss vs log2 LR, one curve per size, one panel per recipe, optima marked."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), sharey=True, squeeze=False)
    # the y-range covers every plotted point and every star (the fitted loss at the optimum can lie below the
    # measured points), and nothing more
    shown = [v for ops in panels.values() for o in ops for v in o.mean_losses]
    shown += [o.loss for ops in panels.values() for o in ops if math.isfinite(o.value)]
    ylim = _fit_range(shown)
    for ax, (name, optima) in zip(axes[0], panels.items()):
        cmap = plt.get_cmap("viridis")
        for i, o in enumerate(sorted(optima, key=lambda o: float(o.group.get(size_axis, 0)))):
            color = cmap(i / max(1, len(optima) - 1))
            xs = [x for x, y in zip(o.grid, o.mean_losses) if math.isfinite(y)]
            ys = [y for y in o.mean_losses if math.isfinite(y)]
            ax.plot(xs, ys, "o-", color=color, label=f"{size_axis} {o.group.get(size_axis)}", ms=3)
            if math.isfinite(o.value):
                ax.plot([o.value], [o.loss], "*", color=color, ms=12, mec="k")
        ax.set_title("\n".join(textwrap.wrap(str(name), 34)), fontsize=10)
        ax.set_xlabel(hp_label(hp))
        ax.grid(alpha=0.3)
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0][0].set_ylabel(f"validation loss ({loss_unit})")
    last = axes[0][-1]
    last.plot([], [], "*", color="gray", mec="k", ms=10, label="optimum (fit)")  # one legend entry for the stars
    _legend_outside(last)
    return _save(fig, path)


@dataclass(frozen=True)
class DriftLine:
    """The dashed line of one recipe in :func:`optimum_figure`: optimum (octaves) vs log2 size, least squares."""

    slope: float  # octaves of the optimum per doubling of the size
    x_mean: float  # mean log2 size of the points the slope was fitted to
    y_mean: float  # mean optimum at those points
    sizes: tuple[float, float]  # smallest and largest size: where the line is drawn
    label: str

    def at(self, size: float) -> float:
        return self.y_mean + self.slope * (math.log2(size) - self.x_mean)


def _drift_line(name: str, optima: list[Optimum], size_axis: str, verdict: Verdict | None = None) -> DriftLine | None:
    """The line :func:`optimum_figure` draws for one recipe: the verdict's own fit when given, else the same
    least-squares fit (``verdict.lsq_slope``) on the finite optima, so figure and verdict cannot disagree.
    None when fewer than 2 distinct sizes have an optimum."""
    if verdict is not None:
        if verdict.size_axis != size_axis:
            raise ValueError(f"verdict for {name!r} is along {verdict.size_axis!r}, the figure along {size_axis!r}")
        sizes, values = list(verdict.sizes), list(verdict.optima)
        slope = verdict.drift_per_doubling
    else:
        rows = [o for o in optima if size_axis in o.group and math.isfinite(o.value)]
        sizes, values = [float(o.group[size_axis]) for o in rows], [o.value for o in rows]
        slope = math.nan
    if len(set(sizes)) < 2:
        return None
    import numpy as np

    x = np.log2(np.asarray(sizes, dtype=float))
    if verdict is None:
        slope = float(lsq_slope(x, np.asarray(values, dtype=float)[None, :])[0])
    label = f"{name}: {slope:+.2f} octaves per doubling" + (f" ({verdict.state})" if verdict is not None else "")
    return DriftLine(slope, float(x.mean()), float(np.mean(values)), (min(sizes), max(sizes)), label)


def optimum_figure(panels: dict[str, list[Optimum]], path: Path, size_axis: str = "width",
                   verdicts: dict[str, Verdict] | None = None) -> Path:
    """Optimal log2 HP vs size with its interval, per recipe, and the drift line of the transfer verdict.

    ``verdicts`` (keyed like ``panels``): the dashed line of a recipe is its verdict's fit, labelled with the
    verdict's slope and state; recipes without one get the same least-squares fit computed here.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    verdicts = verdicts or {}
    hp = next((o.hp for ops in panels.values() for o in ops), "log2_lr")
    n = len(panels)
    for k, (name, optima) in enumerate(panels.items()):
        # recipes often share the base point: shift each a little along x (centred) so none hides another
        shift = 2.0 ** (RECIPE_OFFSET * (k - (n - 1) / 2))
        rows = sorted((o for o in optima if size_axis in o.group and math.isfinite(o.value)),
                      key=lambda o: float(o.group[size_axis]))
        xs = [float(o.group[size_axis]) * shift for o in rows]
        ys = [o.value for o in rows]
        # an interval bound a rounding error past the value would give a negative length, which matplotlib refuses
        err = [[_nonneg(o.value - o.interval[0]) for o in rows], [_nonneg(o.interval[1] - o.value) for o in rows]]
        bars = ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=name)
        line = _drift_line(name, optima, size_axis, verdicts.get(name))
        if line is not None:
            ends = line.sizes
            # drawn at the same shift as the points, so it passes through them; a shift leaves the slope as is
            ax.plot([e * shift for e in ends], [line.at(e) for e in ends], "--", color=bars[0].get_color(),
                    label=line.label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(size_axis)
    ax.set_ylabel(f"optimal {hp_label(hp)}")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def _nonneg(v: float) -> float:
    """An error-bar length: at least 0, and 0 for an unknown bound."""
    return max(0.0, v) if math.isfinite(v) else 0.0


def loss_figure(points: dict[str, tuple[list[float], list[float]]], path: Path,
                extrapolation: dict[str, Any] | None = None, loss_unit: str = "nats/byte") -> Path:
    """Best loss vs parameters per recipe, with the fitted law extended to the target when given.

    ``extrapolation``: {"recipe": name, "law": object with predict(n), "target": n, "interval": (lo, hi)}.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    shown: list[float] = []  # every loss drawn, for the y-range
    for k, (name, (ns, losses)) in enumerate(points.items()):
        # recipes share the base point (same model there): an open ring around a smaller dot shows both
        ring = k == 0 and len(points) > 1
        ax.plot(ns, losses, "o", label=name, ms=11 if ring else 6, mfc="none" if ring else None, mew=1.8)
        shown += list(losses)
    if extrapolation:
        import numpy as np

        ns = [n for pts in points.values() for n in pts[0]]
        grid = np.geomspace(min(ns), extrapolation["target"], 50)
        curve = [extrapolation["law"].predict(float(n)) for n in grid]
        ax.plot(grid, curve, "--", color="gray", label=f"fit ({extrapolation['recipe']})")
        shown += [float(c) for c in curve]
        lo, hi = extrapolation.get("interval", (None, None))
        pred = extrapolation["law"].predict(float(extrapolation["target"]))
        if lo is not None:
            ax.errorbar([extrapolation["target"]], [pred], yerr=[[_nonneg(pred - lo)], [_nonneg(hi - pred)]],
                        fmt="s", color="k", capsize=4, label="target (predicted)")
            shown += [lo, hi, pred]
    ylim = _fit_range(shown)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"best validation loss ({loss_unit})")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def optima_table(panels: dict[str, list[Optimum]], size_axis: str = "width") -> str:
    """Markdown table: recipe, size, optimum (interval), best grid point, loss, seeds, notes."""
    lines = [f"| recipe | {size_axis} | optimal log2 lr (90% interval) | best grid point | loss at best | seeds | "
             "notes |",
             "|---|---|---|---|---|---|---|"]
    for name, optima in panels.items():
        for o in sorted(optima, key=lambda o: float(o.group.get(size_axis, 0))):
            lines.append(f"| {name} | {o.group.get(size_axis)} | {o.value:.2f} ({o.interval[0]:.2f} .. "
                         f"{o.interval[1]:.2f}) | {o.best_grid_value:g} | {o.best_grid_loss:.4f} | {o.n_seeds} | "
                         f"{'; '.join(o.notes) or '-'} |")
    return "\n".join(lines)


_BUDGET_FIELDS = ("steps", "batch_size", "seq_len")


def token_budget(cfg: Any, records: list[dict[str, Any]]) -> str:
    """One sentence: tokens per trial = steps x batch_size x seq_len, from ``cfg.train`` over the TrainConfig
    defaults, with the values of any of the three that the sweep varies read from the trials themselves."""

    train = cfg.train.model_dump() if hasattr(cfg.train, "model_dump") else dict(cfg.train or {})
    fixed = {f: train.get(f, TrainConfig.model_fields[f].default) for f in _BUDGET_FIELDS}
    teacher = getattr(cfg, "data", None) == "teacher"  # vector task: a step consumes batch_size samples
    combos = set()
    for r in records:
        if r.get("status") in ("complete", "diverged", "pruned"):
            v = {f: int(r[f]) if r.get(f) is not None else int(fixed[f]) for f in _BUDGET_FIELDS}
            combos.add((v["steps"], v["batch_size"], 1 if teacher else v["seq_len"]))
    if not combos:
        combos = {(int(fixed["steps"]), int(fixed["batch_size"]), 1 if teacher else int(fixed["seq_len"]))}
    unit = "samples" if teacher else "tokens"
    if len(combos) == 1:
        steps, batch, seq = next(iter(combos))
        shape = f"{steps} steps x batch {batch}" + ("" if teacher else f" x seq_len {seq}")
        return f"Budget per trial: {shape} = {steps * batch * seq:,} {unit}."
    totals = sorted(s * b * q for s, b, q in combos)
    varied = ", ".join(f for i, f in enumerate(_BUDGET_FIELDS) if len({c[i] for c in combos}) > 1)
    return ("Budget per trial: steps x batch_size" + ("" if teacher else " x seq_len")
            + f" = {totals[0]:,} .. {totals[-1]:,} {unit} (the sweep varies {varied}).")


def _seed_count(optima: list[Optimum]) -> str:
    counts = sorted({o.n_seeds for o in optima})
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} .. {counts[-1]}"
    return f"Seeds per point: {n}."


def write_sweep_report(sweep: Any, out: Path, hp: str = "log2_lr", size_axis: str = "width") -> Path:
    """``report.md`` + PNG figures for one sweep: budget, optima, verdict, loss vs HP / size."""

    out.mkdir(parents=True, exist_ok=True)
    records = sweep.records()
    optima = optima_by_group(records, hp)
    if not optima:
        raise ValueError("no finished trials to report on yet")
    unit = data_loss_unit(sweep.cfg.data) if sweep.cfg.program is None else "the program's units"
    name = f"{sweep.cfg.recipe} + {sweep.cfg.optimizer}"
    panels = {name: optima}
    figs = [lr_curves_figure(panels, out / "lr_curves.png", size_axis, hp, loss_unit=unit)]
    verdict_lines = ["no transfer verdict (needs a finite optimum at 2 or more sizes along one axis)"]
    verdict, gaps = verdict_with_gaps(optima, size_axis, hp)
    if verdict is not None:
        verdict_lines = [verdict.line]
        # what to do and what to doubt come right under the line they qualify
        if verdict.advice:
            verdict_lines += ["", "Advice:", "", *[f"- {a}" for a in verdict.advice]]
        if verdict.warnings:
            verdict_lines += ["", "Warnings:", "", *[f"- {w}" for w in verdict.warnings]]
        figs.append(optimum_figure({name: [o for o in optima if math.isfinite(o.value)]},
                                   out / "optimum_vs_size.png", size_axis, verdicts={name: verdict}))
    if gaps:
        verdict_lines += ["", "Missing:", "", *[f"- {g}" for g in gaps]]
    by_size: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("status") == "complete" and r.get("params"):
            by_size.setdefault(r["params"], []).append(r)
    if len(by_size) >= 2:
        ns = sorted(by_size)
        figs.append(loss_figure({name: (ns, [min(x["val_loss"] for x in by_size[n]) for n in ns])},
                                out / "loss_vs_params.png", loss_unit=unit))
    counts = sweep.store().counts()
    lines = [
        f"# Sweep report: {sweep.cfg.name}", "",
        f"Model `{sweep.cfg.model}`, data `{sweep.cfg.data}`, recipe `{sweep.cfg.recipe}`, optimizer "
        f"`{sweep.cfg.optimizer}`, base {sweep.cfg.base or 'the target itself'}.", "",
        f"{token_budget(sweep.cfg, records)} {_seed_count(optima)} Losses are validation losses in {unit}.", "",
        "Trials: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
        "## Verdict", "", *verdict_lines, "",
        "## Optimum per size", "", optima_table(panels, size_axis), "",
        "## Figures", "", *[f"![{f.stem}]({f.name})" for f in figs], "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

"""Sweep points: the grid, telescoping stages, and sampler suggestions."""

from __future__ import annotations

import itertools
import math
from typing import Any

from ..train.config import BATCHABLE_FIELDS
from .fields import field_name
from .schema import Range, SweepConfig

SEED_AXES = ("seed", "data_seed")


def axis_values(spec: list[Any] | Range) -> list[Any]:
    return list(spec) if isinstance(spec, list) else spec.values()


def is_batchable_axis(axis: str) -> bool:
    """Axes whose points can train together in one batched group (a program's own parameters are not: they
    may change anything)."""
    try:
        return field_name(axis) in BATCHABLE_FIELDS
    except ValueError:
        return False


def order_axes(axes: list[str]) -> list[str]:
    """Shape-changing axes first, batchable ones last, so neighbouring points batch together."""
    return sorted(axes, key=lambda a: (is_batchable_axis(a), axes.index(a)))


def grid_points(axes: dict[str, list[Any] | Range]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, batchable axes varying fastest."""
    names = order_axes(list(axes))
    return [dict(zip(names, combo)) for combo in itertools.product(*(axis_values(axes[n]) for n in names))]


def largest_first(points: list[dict[str, Any]], fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """Points reordered so the most expensive shapes run first (shorter sweeps on several workers).

    Cost estimate: width^2 x depth x steps x batch_size x seq_len, from the
    point or the fixed training settings; the order inside a shape is kept.
    """
    def cost(p: dict[str, Any]) -> float:
        get = {**fixed, **p}.get
        return float(get("width", 1)) ** 2 * float(get("depth", 1)) * float(get("steps", 1)) * float(
            get("batch_size", 1)) * float(get("seq_len", 1))

    return sorted(points, key=cost, reverse=True)  # sorted() is stable


def group_key(point: dict[str, Any]) -> str:
    """Points with equal keys differ only in batchable axes."""
    return repr(sorted((k, v) for k, v in point.items() if not is_batchable_axis(k)))


# ------------------------------------------------------------------ telescoping
def telescoping_hp_axes(cfg: SweepConfig) -> list[str]:
    """The numeric HP axes that telescoping narrows (not the scale axis, not seeds)."""
    out = []
    for axis, spec in cfg.axes.items():
        if axis == cfg.strategy.scale_axis or axis in SEED_AXES:
            continue
        values = axis_values(spec)
        if len(values) > 1 and all(isinstance(v, (int, float)) for v in values):
            out.append(axis)
    return out


def telescoping_stage(cfg: SweepConfig, stage: int, previous: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The points of ``stage`` (0 = full grid at the smallest scale value).

    Each later stage doubles (or steps) the scale axis; every HP axis keeps
    ``max(min_points, ceil(n * shrink^(-1/k)))`` points at half the previous
    spacing, centred on the previous stage's best point (Essential AI 2025,
    "Practical Efficiency of Muon for Pretraining").

    ``previous``: records ``{axis: value, ..., "val_loss": float}`` of stage - 1.
    """
    scales = sorted(axis_values(cfg.axes[cfg.strategy.scale_axis]))
    if stage >= len(scales):
        return []
    hp_axes = telescoping_hp_axes(cfg)
    axes: dict[str, list[Any]] = {a: axis_values(s) for a, s in cfg.axes.items()}
    axes[cfg.strategy.scale_axis] = [scales[stage]]
    if stage > 0 and hp_axes:
        if not previous:
            raise ValueError(f"telescoping stage {stage} needs the results of stage {stage - 1}")
        best = _best_hp(previous, hp_axes)
        k = len(hp_axes)
        for axis in hp_axes:
            n0, spacing0 = _grid_shape(axis_values(cfg.axes[axis]))
            n = n0
            spacing = spacing0
            for _ in range(stage):
                n = max(cfg.strategy.min_points, math.ceil(n * cfg.strategy.shrink ** (-1.0 / k) - 1e-9))
                spacing /= 2
            axes[axis] = [round(best[axis] + spacing * (j - (n - 1) / 2), 10) for j in range(n)]
    return grid_points(axes)


def _grid_shape(values: list[float]) -> tuple[int, float]:
    vals = sorted(values)
    gaps = sorted(b - a for a, b in zip(vals, vals[1:]))
    return len(vals), gaps[len(gaps) // 2]


def _best_hp(records: list[dict[str, Any]], hp_axes: list[str]) -> dict[str, float]:
    """HP values with the lowest seed-averaged val loss (diverged counts as inf)."""
    losses: dict[tuple, list[float]] = {}
    for r in records:
        key = tuple(r[a] for a in hp_axes)
        loss = r.get("val_loss")
        losses.setdefault(key, []).append(math.inf if loss is None or not math.isfinite(loss) else loss)
    key = min(losses, key=lambda k: sum(losses[k]) / len(losses[k]))
    return dict(zip(hp_axes, key))


# ---------------------------------------------------------------- samplers
def suggest_point(trial: Any, cfg: SweepConfig) -> dict[str, Any]:
    """Ask an Optuna trial for one value per axis (random, TPE, halving, hyperband)."""
    point = {}
    for axis, spec in cfg.axes.items():
        if isinstance(spec, list):
            point[axis] = trial.suggest_categorical(axis, spec)
        elif spec.low is not None:
            point[axis] = trial.suggest_float(axis, spec.low, spec.high)
        else:
            point[axis] = trial.suggest_float(axis, spec.start, spec.stop, step=spec.step)
    return point


def space_size(cfg: SweepConfig) -> int | None:
    """How many distinct points a sampler can propose: None when an axis is continuous ({low, high})."""
    n = 1
    for spec in cfg.axes.values():
        if isinstance(spec, Range) and spec.low is not None:
            return None
        n *= len({_value_key(v) for v in axis_values(spec)})
    return n


def sampled_budget(cfg: SweepConfig) -> int:
    """The distinct points a sampled strategy runs: ``n_trials``, or the whole space when it is smaller."""
    size = space_size(cfg)
    n = cfg.strategy.n_trials or 0
    return n if size is None else min(n, size)


def _value_key(v: Any) -> Any:
    # A sampler's float for a stepped axis may differ from the grid's in the last bits (0.30000000000000004).
    return float(f"{v:.12g}") if isinstance(v, float) else v


def point_key(point: dict[str, Any]) -> tuple:
    """A point's identity with floats compared to 12 significant digits."""
    return tuple(sorted((k, _value_key(v)) for k, v in point.items()))


def unvisited_points(cfg: SweepConfig, visited: set[tuple]) -> list[dict[str, Any]]:
    """The points of a finite sampled space not in ``visited`` (:func:`point_key`); empty when continuous."""
    if space_size(cfg) is None:
        return []
    return [p for p in grid_points(cfg.axes) if point_key(p) not in visited]

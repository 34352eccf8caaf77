"""Strategies: how a sweep chooses its points, one class per ``strategy.kind``, in one registry.

A :class:`Strategy` answers everything the rest of the sweep asks of its kind: the checks of its settings (the
schema asks, through the registry), the points enqueued when the sweep starts, the points of a next stage once
those have run, whether an Optuna sampler proposes points while the sweep runs and how many distinct points it
may spend, the sampler and the pruner, and what to warn about. The runner, the worker and the schema look the
kind up with :func:`strategy_of`; none of them compares kind names.

Adding a strategy is one class with ``@register``, here or in the user's own code::

    @register
    class ReverseGrid(GridStrategy):
        name = "reverse-grid"

        def initial_points(self, cfg, store):
            return grid_points(cfg.axes)[::-1]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, cast

import optuna

from ..optimum_fit import optima_by_group
from ..train.config import TrainConfig
from .fields import axis_values_of, field_name
from .schema import MAX_GRID_POINTS, STRATEGY_REGISTRY, Range, SweepConfig
from .space import grid_points, largest_first, sampled_budget, space_size, telescoping_stage

Point = dict[str, Any]


class StoreView(Protocol):
    """What a strategy reads of a sweep's store (:class:`~proxytune.sweep.store.SweepStore`)."""

    def trials(self, states: Iterable[Any] | None = None) -> list[optuna.trial.FrozenTrial]: ...

    def records(self) -> list[dict[str, Any]]: ...


class Strategy:
    """One kind of ``strategy:``. The base enqueues nothing, samples nothing and has no next stage."""

    #: the ``strategy.kind`` that names it
    name: ClassVar[str] = ""
    #: an Optuna sampler proposes its points while the sweep runs, up to :meth:`budget` distinct points
    samples: ClassVar[bool] = False

    def check(self, cfg: SweepConfig) -> None:
        """Check the sweep's settings for this strategy; raise ValueError with the message."""
        if cfg.points is not None:
            raise ValueError(f"points are for strategy 'list', not {self.name!r}; remove them or set "
                             "strategy.kind: list")

    def check_size(self, cfg: SweepConfig) -> None:
        """Checks that come after the program's (the size of what the strategy enumerates)."""

    def initial_points(self, cfg: SweepConfig, store: StoreView) -> list[Point]:
        """The points enqueued (stage 0) when the sweep starts or resumes; points already there are skipped."""
        return []

    def next_points(self, cfg: SweepConfig, store: StoreView) -> tuple[list[Point], int] | None:
        """Once the queue has run dry: the points of the next stage and its number; None when the sweep is done."""
        return None

    def refines(self, cfg: SweepConfig) -> bool:
        """Whether the sweep runs a refinement pass (:meth:`refinement_points`) after its first one."""
        return False

    def refinement_points(self, cfg: SweepConfig, records: list[dict[str, Any]]) -> list[Point]:
        """The points of the refinement pass, from the records of the trials run so far."""
        return []

    def budget(self, cfg: SweepConfig) -> int | None:
        """The distinct points a sampling strategy spends (None: the enqueued points are the whole sweep)."""
        return None

    def sampler(self, cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded with ``seed`` (each worker salts the strategy's seed)."""
        return optuna.samplers.RandomSampler(seed=seed)

    def pruner(self, cfg: SweepConfig) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def warnings(self, cfg: SweepConfig) -> list[str]:
        """What a sweep with this strategy warns about when it starts."""
        return []


#: The registry: kind -> Strategy, in the order messages list the kinds. It is the schema's
#: :data:`~proxytune.sweep.schema.STRATEGY_REGISTRY` (the schema reads it to check ``strategy.kind``).
STRATEGIES = cast(dict[str, Strategy], STRATEGY_REGISTRY)


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` the strategy of ``strategy.kind: <cls.name>``."""
    if not cls.name:
        raise ValueError(f"strategy {cls.__name__} needs a name")
    STRATEGIES[cls.name] = cls()
    return cls


def strategy_of(cfg: SweepConfig) -> Strategy:
    """The strategy of a (validated) sweep config."""
    return STRATEGIES[cfg.strategy.kind]


# ------------------------------------------------------------------ enumerated: every point known up front
class GridLike(Strategy):
    """A strategy that enumerates a grid of its axes' values: every axis needs values, and the grid a size."""

    def check(self, cfg: SweepConfig) -> None:
        super().check(cfg)
        for name, spec in cfg.axes.items():
            if isinstance(spec, Range) and spec.start is None:
                raise ValueError(f"axis {name!r}: strategy {self.name} needs a list or {{start, stop, step}}")

    def check_size(self, cfg: SweepConfig) -> None:
        size = math.prod(len(axis_values_of(spec)) for spec in cfg.axes.values())
        if size > MAX_GRID_POINTS:
            raise ValueError(f"the grid has {size:,} points; at most {MAX_GRID_POINTS:,} (fewer axis values, or "
                             "strategy random/tpe with n_trials)")


@register
class GridStrategy(GridLike):
    """Every combination of the axes' values, largest shapes first; then, once, a refinement pass at half
    spacing around each size's optimum whose interval is wider than the grid step (``strategy.refine``)."""

    name = "grid"

    def initial_points(self, cfg: SweepConfig, store: StoreView) -> list[Point]:
        return largest_first(grid_points(cfg.axes), cfg.train)

    def next_points(self, cfg: SweepConfig, store: StoreView) -> tuple[list[Point], int] | None:
        """The refinement pass (stage 1), once, after every trial of the grid has finished."""
        if any(t.user_attrs.get("stage", 0) >= 1 for t in store.trials()):
            return None
        records = store.records()
        if any(r["status"] in ("waiting", "running") for r in records):
            return None
        return (self.refinement_points(cfg, records) if self.refines(cfg) else []), 1

    def refines(self, cfg: SweepConfig) -> bool:
        return cfg.strategy.refine and cfg.strategy.refine_axis in cfg.axes

    def refinement_points(self, cfg: SweepConfig, records: list[dict[str, Any]]) -> list[Point]:
        """The half-step values of the refined axis that each size's optimum asks for (:attr:`Optimum.refine`),
        with every seed that ran at that size."""
        hp = cfg.strategy.refine_axis
        done = [r for r in records if r.get("status") in ("complete", "diverged")]
        if not done:
            return []
        size_axes = [a for a in cfg.axes if a != hp and a not in ("seed", "data_seed")]
        points = []
        for o in optima_by_group(done, hp, size_axes=size_axes):
            if not o.refine:
                continue
            same = [r for r in done if all(r.get(a) == o.group.get(a) for a in size_axes)
                    and r[hp] == o.best_grid_value]
            for r in same:
                for x in o.refine:
                    points.append({**{a: r[a] for a in cfg.axes}, hp: x})
        return largest_first(points, cfg.train)


@register
class ListStrategy(Strategy):
    """Exactly the points of ``points:``, largest shapes first."""

    name = "list"

    def check(self, cfg: SweepConfig) -> None:
        """Points present, each setting the same valid axes; axes derived from them when omitted."""
        if not cfg.points:
            raise ValueError("strategy 'list' needs a non-empty points list")
        names = list(cfg.points[0])
        for i, point in enumerate(cfg.points):
            if set(point) != set(names):
                raise ValueError(f"points[{i}] sets {sorted(point)}, points[0] sets {sorted(names)}: every point "
                                 "must set the same axes")
        for name in names:
            field_name(name, list(cfg.program.params) if cfg.program else [])  # raises with a suggestion
        if not cfg.axes:
            cfg.axes = {n: sorted({p[n] for p in cfg.points}, key=lambda v: (isinstance(v, str), v))
                        for n in names}
        elif set(cfg.axes) != set(names):
            raise ValueError(f"the points set {sorted(names)} but axes lists {sorted(cfg.axes)}")

    def initial_points(self, cfg: SweepConfig, store: StoreView) -> list[Point]:
        return largest_first([dict(p) for p in cfg.points or []], cfg.train)


@register
class RandomStrategy(Strategy):
    """``n_trials`` distinct points drawn at random while the sweep runs."""

    name = "random"
    samples = True

    def check(self, cfg: SweepConfig) -> None:
        super().check(cfg)
        if not cfg.strategy.n_trials:
            raise ValueError(f"strategy {self.name} needs strategy.n_trials")

    def budget(self, cfg: SweepConfig) -> int | None:
        return sampled_budget(cfg)

    def warnings(self, cfg: SweepConfig) -> list[str]:
        size = space_size(cfg)
        if size is not None and size < (cfg.strategy.n_trials or 0):
            return [f"the search space has {size} distinct point(s), fewer than strategy.n_trials = "
                    f"{cfg.strategy.n_trials}: each runs once ({size} trials)"]
        return []


@register
class TPEStrategy(RandomStrategy):
    """``n_trials`` distinct points proposed by Optuna's TPE sampler."""

    name = "tpe"

    def sampler(self, cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)


class EarlyStopping(RandomStrategy):
    """Random points whose trials a pruner may stop early."""

    def warnings(self, cfg: SweepConfig) -> list[str]:
        return super().warnings(cfg) + [
            f"strategy {self.name!r} stops trials early, which favours large learning rates (they look good "
            "early); never use its optimum for the transfer verdict."]


@register
class HalvingStrategy(EarlyStopping):
    """Random points with successive halving: each rung keeps 1 / ``reduction_factor`` of its trials."""

    name = "halving"

    def pruner(self, cfg: SweepConfig) -> optuna.pruners.BasePruner:
        s = cfg.strategy
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.min_resource or "auto",
                                                      reduction_factor=s.reduction_factor)


@register
class TPEHalvingStrategy(HalvingStrategy):
    """TPE's points with successive halving (as BOHB, Falkner et al. 2018, pairs a model-based sampler with
    Hyperband): a trial continues past each rung (``min_resource`` x ``reduction_factor``^k eval steps) only if its
    loss there is in the best 1 / ``reduction_factor`` of the trials that reached that rung."""

    name = "tpe-halving"

    def sampler(self, cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)


@register
class HyperbandStrategy(EarlyStopping):
    """Random points with Hyperband, up to the trials' ``steps``."""

    name = "hyperband"

    def pruner(self, cfg: SweepConfig) -> optuna.pruners.BasePruner:
        s = cfg.strategy
        fixed = {**(cfg.program.params if cfg.program else {}), **cfg.train}
        steps = int(fixed.get("steps", TrainConfig.model_fields["steps"].default))
        return optuna.pruners.HyperbandPruner(min_resource=s.min_resource or 1, max_resource=steps,
                                              reduction_factor=s.reduction_factor)


@register
class TelescopingStrategy(GridLike):
    """The full grid at the smallest value of ``scale_axis``, then stage by stage a larger one with a grid that
    shrinks around the previous stage's optimum (:func:`~proxytune.sweep.space.telescoping_stage`)."""

    name = "telescoping"

    def check(self, cfg: SweepConfig) -> None:
        super().check(cfg)
        axis = cfg.strategy.scale_axis
        if axis not in cfg.axes or not isinstance(cfg.axes[axis], list):
            raise ValueError(f"telescoping grows axis {axis!r}: list its values under axes")

    def initial_points(self, cfg: SweepConfig, store: StoreView) -> list[Point]:
        return [] if store.trials() else telescoping_stage(cfg, 0, None)

    def next_points(self, cfg: SweepConfig, store: StoreView) -> tuple[list[Point], int] | None:
        stages = [t.user_attrs.get("stage", 0) for t in store.trials()]
        stage = max(stages) if stages else 0
        done = [r for r in store.records() if r["stage"] == stage]
        if not done or any(r["status"] in ("waiting", "running") for r in done):
            return None
        return telescoping_stage(cfg, stage + 1, done), stage + 1

"""Sweeps that survive anything: config, strategies, store, executors."""

from .errors import SweepConfigError, TrialPruned
from .runner import Sweep, best_per_group
from .schema import ExecutorConfig, ProgramConfig, Range, StrategyConfig, SweepConfig, TrackingConfig
from .store import SweepStore, point_id
from .strategy import STRATEGIES, Strategy, register
from .trial import Trial
from .worker import run_worker

__all__ = ["Sweep", "SweepConfig", "SweepConfigError", "StrategyConfig", "ExecutorConfig", "Range", "SweepStore",
           "point_id", "run_worker", "best_per_group", "ProgramConfig", "TrackingConfig", "Trial", "TrialPruned",
           "Strategy", "STRATEGIES", "register"]

"""Sweeps that survive anything: config, strategies, store, executors."""

from .config import ExecutorConfig, Range, StrategyConfig, SweepConfig, SweepConfigError
from .program import ProgramConfig
from .runner import Sweep, best_per_group
from .store import SweepStore, point_id
from .tracking import TrackingConfig
from .trial import Trial, TrialPruned
from .worker import run_worker

__all__ = ["Sweep", "SweepConfig", "SweepConfigError", "StrategyConfig", "ExecutorConfig", "Range", "SweepStore",
           "point_id", "run_worker", "best_per_group", "ProgramConfig", "TrackingConfig", "Trial", "TrialPruned"]

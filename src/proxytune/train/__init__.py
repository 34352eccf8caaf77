"""One trainer: ``train(config) -> RunResult``, and ``train_batched(configs)`` for K trials at once."""

from .batched import BatchError, check_batchable, group_batchable, train_batched
from .config import BATCHABLE_FIELDS, SCHEDULES, TrainConfig, make_config
from .loop import evaluate, train
from .result import RunResult
from .schedule import lr_factor, schedule_factors

__all__ = ["TrainConfig", "make_config", "RunResult", "train", "train_batched", "evaluate", "BatchError",
           "check_batchable", "group_batchable", "lr_factor", "schedule_factors", "SCHEDULES",
           "BATCHABLE_FIELDS"]

"""Helpers shared by the sweep tests (built-in trainer and user programs)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from optuna.trial import TrialState


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    """Poll ``pred`` until it returns something true (returned), or fail after ``timeout`` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def completes_per_point(sweep: Any) -> Counter:
    """How many complete trials each point of a sweep has (exactly-once means all ones)."""
    return Counter(t.user_attrs["point_id"] for t in sweep.store().trials((TrialState.COMPLETE,)))

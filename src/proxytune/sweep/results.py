"""The ends of trials and what they left: a result, a failure or a step aside written; records, counts and
failure streaks read back.

A trial ends once: writing its end fails (False) when it was closed meanwhile, by another worker or as stale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ..train.result import RunResult

Trials = Callable[..., list[optuna.trial.FrozenTrial]]


class TrialResults:
    """Writes the ends of one sweep's trials and reads them back.

    ``trials(states)``: the sweep's trials; ``on_end(trial_id)``: called as a trial ends (its lease is dropped).
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trials: Trials, on_end: Callable[[int], None]) -> None:
        self.storage = storage
        self._trials = trials
        self._on_end = on_end

    def finish(self, trial_id: int, result: RunResult) -> bool:
        """Store a RunResult and close the trial (False if it had been re-queued meanwhile)."""
        data = result.to_dict()
        attrs = {"status": result.status, "result": {k: v for k, v in data.items() if k not in ("config", "env")},
                 "config": data["config"], "env": data["env"]}
        if result.status == "pruned":
            return self.end(trial_id, TrialState.PRUNED, None, attrs)
        value = result.final_val_loss if result.status == "complete" else math.inf
        return self.end(trial_id, TrialState.COMPLETE, [value], attrs)

    def fail(self, trial_id: int, error: str, config: dict[str, Any] | None = None) -> bool:
        attrs = {"status": "failed", "error": error[-4000:]}
        if config is not None:
            attrs["config"] = config
        return self.end(trial_id, TrialState.FAIL, None, attrs)

    def step_aside(self, trial_id: int, status: str = "duplicate") -> bool:
        """End a trial that must not run (a point already taken, one past a sampled sweep's budget): failed with
        ``status``, which is neither a result nor a failure of its point."""
        return self.end(trial_id, TrialState.FAIL, None, {"status": status})

    def end(self, trial_id: int, state: TrialState, values: list[float] | None, attrs: dict[str, Any]) -> bool:
        """Close a trial in ``state`` with ``attrs`` (False when it had been closed meanwhile, by another
        worker or as stale)."""
        self._on_end(trial_id)
        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(trial_id, key, value)
            self.storage.set_trial_state_values(trial_id, state=state, values=values)
            return True
        except UpdateFinishedTrialError:
            return False

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per trial (point axes as columns), for status, export and analysis."""
        rows = []
        for t in self._trials():
            status = _status(t)
            if status in ("requeued", "duplicate", "surplus"):
                continue
            res = t.user_attrs.get("result", {})
            row = {"trial": t.number, "status": status, "stage": t.user_attrs.get("stage", 0)}
            row.update(t.user_attrs.get("point", {}))
            row.update({
                "val_loss": _float(res.get("final_val_loss")),
                "train_loss": _float(res.get("final_train_loss")),
                "steps_done": res.get("steps_done"), "tokens": res.get("tokens"), "flops": res.get("flops"),
                "params": res.get("n_params"),
                "wall_time": res.get("wall_time"), "diverged_step": res.get("diverged_step"),
                "noise_scale": _float(res["noise_scale"]) if res.get("noise_scale") is not None else None,
                "error": t.user_attrs.get("error", ""),
            })
            rows.append(row)
        return rows

    def failure_streak(self, n: int, since: float | None = None) -> str | None:
        """The error of the last ``n`` trials to finish (since ``since``, a ``time.time()``) when they all failed
        with the same error, else None.

        Errors are compared on their last line with the numbers taken out, so a sampled value quoted in the
        message (``attention multiplier 5.1005: ...``) does not make it another error. Trials given back
        (``requeued``, ``duplicate``) are not results and do not count either way."""
        done = []
        for t in self._trials((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if t.state == TrialState.FAIL and t.user_attrs.get("status", "failed") != "failed":
                continue
            end = t.datetime_complete
            if end is None or (since is not None and end.timestamp() < since):
                continue
            done.append((end, t.number, t))
        if n < 1 or len(done) < n:
            return None
        last = [t for _, _, t in sorted(done, key=lambda x: (x[0], x[1]))[-n:]]
        if any(t.state != TrialState.FAIL for t in last):
            return None
        lines = [error_line(t.user_attrs.get("error", "")) for t in last]
        return lines[-1] if len({error_key(line) for line in lines}) == 1 else None

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("complete", "diverged", "pruned", "failed", "running", "waiting")}
        for t in self._trials():
            s = _status(t)
            if s in out:
                out[s] += 1
        return out


def error_line(error: str) -> str:
    """The line of a stored error that says what went wrong: the last non-empty one (a traceback's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


_HEX = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def error_key(line: str) -> str:
    """``line`` with its numbers (and hex addresses) replaced by ``#``: two trials that fail on the same cause with
    other sampled values or process ids have the same key."""
    return _NUMBER.sub("#", _HEX.sub("#", line))


def _status(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.WAITING:
        return "waiting"
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state == TrialState.COMPLETE:
        return t.user_attrs.get("status", "complete")
    return t.user_attrs.get("status", "failed")


def _float(v: Any) -> float:
    if v is None:
        return math.nan
    return float(v)

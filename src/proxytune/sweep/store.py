"""Where a sweep's trials live: an Optuna storage, with leases for crash safety.

Default storage: one journal file per sweep (``runs/<name>/trials.journal``),
safe for many processes on one machine, no server. ``postgresql://...`` (any
SQLAlchemy URL) for many machines.

Every trial records its sweep point, full TrainConfig, curve, final metrics,
status and environment as Optuna user attributes. States:

- ``waiting``: enqueued, not yet claimed;
- ``running``: claimed by a worker that holds a *lease* (host, pid, expiry)
  renewed by a heartbeat thread. A running trial whose lease expired, or
  whose worker process on this host is gone, is *stale*: it is marked
  failed (``status="requeued"``) and its point is enqueued again;
- ``complete`` (Optuna COMPLETE, value = final val loss), ``diverged``
  (COMPLETE with value ``inf``: a result, not a failure), ``pruned``,
  ``failed`` (an exception in training; the error is kept).

A point never runs twice: claiming is an atomic WAITING -> RUNNING transition
in the storage, and a claimed trial whose point is already complete, or held
by a running trial with a lower number, steps aside (``status="duplicate"``).

:class:`SweepStore` is the one object the rest of the sweep talks to; it composes one part per job:
:mod:`.storage` (opening the storage and the study, the sweep's identity), :mod:`.queue` (enqueueing,
claiming, de-duplication, giving back, re-queueing), :mod:`.leases` (leases, heartbeats, staleness) and
:mod:`.results` (writing the ends of trials, reading records back).
"""

from __future__ import annotations

# os, time: still reachable as store.os / store.time, through which callers patch os.access and time.time
import os  # noqa: F401
import time  # noqa: F401
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.trial import TrialState

from ..train.result import RunResult
from .leases import Leases
from .queue import TrialQueue
from .results import TrialResults
from .schema import SweepConfig
from .storage import open_study

# re-exported for one release; import from proxytune.sweep.leases / .queue / .reconnect / .results / .storage
from .leases import HOST, Heartbeat  # noqa: F401
from .queue import point_id  # noqa: F401
from .reconnect import MAX_WAIT_S  # noqa: F401
from .results import error_key, error_line  # noqa: F401
from .storage import (IDENTITY_ATTR, IDENTITY_WAIT_S, _diff, _optuna_quiet, check_writable,  # noqa: F401
                      existing_studies, open_storage, probe_folder)


class SweepStore:
    """The trials of one sweep in one Optuna storage: a facade over its queue, leases and results."""

    def __init__(self, cfg: SweepConfig, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        self.cfg = cfg
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(cfg.name)
        self.url = cfg.storage_url()
        self.leases = Leases(storage, self.url, cfg.executor.lease_seconds, self.trials)
        self.results = TrialResults(storage, self.trials, on_end=self.leases.drop)
        self.queue = TrialQueue(study, storage, self.trials, self.leases, self.results, cfg.executor.max_attempts)

    @property
    def lease_seconds(self) -> float:
        return self.leases.lease_seconds

    @lease_seconds.setter
    def lease_seconds(self, value: float) -> None:
        self.leases.lease_seconds = value

    @property
    def max_attempts(self) -> int:
        return self.queue.max_attempts

    @max_attempts.setter
    def max_attempts(self, value: int) -> None:
        self.queue.max_attempts = value

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, cfg: SweepConfig, *, create: bool, sampler: Any = None, pruner: Any = None,
             wait: bool = False) -> SweepStore:
        """Open the sweep's study; with ``create``, make it if missing.

        Refuses a storage file that belongs to another sweep, and a stored
        sweep whose identity (model, data, recipe, base, training settings)
        differs from ``cfg``, naming what changed. ``wait``: a database that
        does not answer is waited for (``executor.reconnect_timeout``).

        Creating the study and recording its identity is one atomic step, so
        of two different sweeps started at once under one name exactly one is
        accepted: a journal does it all under its file lock, a database
        records the identity with an insert its unique key lets only one
        process win (:func:`proxytune.sweep.storage._claim_identity`).
        """
        study, storage = open_study(cfg, create=create, sampler=sampler, pruner=pruner, wait=wait)
        return cls(cfg, study, storage)

    # --------------------------------------------------------------- trials
    def trials(self, states: Iterable[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False,
                                           states=tuple(states) if states is not None else None)

    # ---------------------------------------------------------------- queue
    def enqueue(self, points: list[dict[str, Any]], stage: int = 0) -> int:
        """Enqueue the points not already waiting, running or done; returns how many were added."""
        return self.queue.enqueue(points, stage)

    def claim(self, limit: int, same_group: Any = None, share: int = 1) -> list[optuna.trial.FrozenTrial]:
        """Atomically take up to ``limit`` waiting trials (``same_group(point)`` equal to the first's); see
        :meth:`TrialQueue.claim <proxytune.sweep.queue.TrialQueue.claim>`."""
        return self.queue.claim(limit, same_group, share)

    def register(self, trial_id: int, point: dict[str, Any], stage: int = 0) -> bool:
        """Record the point of a trial created by a sampler (``study.ask``); False if it is a duplicate."""
        return self.queue.register(trial_id, point, stage)

    def release(self, trial_id: int) -> bool:
        """Give a claimed trial back (clean stop): its point is enqueued again, the trial failed as ``requeued``."""
        return self.queue.release(trial_id)

    def requeue_stale(self) -> int:
        """Fail the stale trials and enqueue their points again; returns how many."""
        return self.queue.requeue_stale()

    def _reenqueue(self, trial: optuna.trial.FrozenTrial) -> None:
        self.queue.reenqueue(trial)

    # ---------------------------------------------------------------- leases
    def heartbeat(self, trial_ids: Iterable[int]) -> None:
        self.leases.heartbeat(trial_ids)

    def stale(self) -> list[optuna.trial.FrozenTrial]:
        """Running trials whose worker is gone: lease expired, or its process on this host no longer exists."""
        return self.leases.stale()

    # --------------------------------------------------------------- results
    def finish(self, trial_id: int, result: RunResult) -> bool:
        """Store a RunResult and close the trial (False if it had been re-queued meanwhile)."""
        return self.results.finish(trial_id, result)

    def fail(self, trial_id: int, error: str, config: dict[str, Any] | None = None) -> bool:
        return self.results.fail(trial_id, error, config)

    def step_aside(self, trial_id: int, status: str = "duplicate") -> bool:
        """End a trial that must not run (a point already taken, one past a sampled sweep's budget)."""
        return self.results.step_aside(trial_id, status)

    def _finish_state(self, trial_id: int, state: TrialState, values: list[float] | None,
                      attrs: dict[str, Any]) -> bool:
        return self.results.end(trial_id, state, values, attrs)

    # ---------------------------------------------------------------- reading
    def records(self) -> list[dict[str, Any]]:
        """One flat dict per trial (point axes as columns), for status, export and analysis."""
        return self.results.records()

    def failure_streak(self, n: int, since: float | None = None) -> str | None:
        """The error of the last ``n`` trials to finish (since ``since``) when they all failed with the same
        error, else None (:meth:`TrialResults.failure_streak <proxytune.sweep.results.TrialResults.failure_streak>`)."""
        return self.results.failure_streak(n, since)

    def counts(self) -> dict[str, int]:
        return self.results.counts()

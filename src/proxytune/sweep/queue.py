"""The queue of a sweep's points: enqueued once, claimed atomically, never run twice, given back, re-queued.

A point never runs twice: claiming is an atomic WAITING -> RUNNING transition in the storage, and a claimed
trial whose point is already complete, or held by a running trial with a lower number, steps aside
(``status="duplicate"``). A trial given back, or left stale by its worker, has its point enqueued again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from .leases import Leases, stop_orphan_program
from .results import TrialResults

Trials = Callable[..., list[optuna.trial.FrozenTrial]]


def point_id(point: dict[str, Any]) -> str:
    """Canonical text of a sweep point (the key that makes 'the same point' exact)."""
    return json.dumps({k: point[k] for k in sorted(point)}, sort_keys=True)


#: seconds a point given back may look orphaned while the process that gave it back enqueues it again
ORPHAN_GRACE_S = 3.0


def _age(trial: optuna.trial.FrozenTrial) -> float:
    """Seconds since ``trial`` ended (0 when it has no end time)."""
    end = trial.datetime_complete
    return max(0.0, time.time() - end.timestamp()) if end is not None else 0.0


class TrialQueue:
    """The points of one sweep, as waiting trials of its study; claims take leases, ends go through results.

    ``max_attempts``: a point whose worker died this many times while running it is stored as failed, not
    re-queued.
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, trials: Trials, leases: Leases,
                 results: TrialResults, max_attempts: int) -> None:
        self.study = study
        self.storage = storage
        self._trials = trials
        self._leases = leases
        self._results = results
        self.max_attempts = max_attempts

    def enqueue(self, points: list[dict[str, Any]], stage: int = 0) -> int:
        """Enqueue the points not already waiting, running or done; returns how many were added."""
        taken = {t.user_attrs.get("point_id") for t in self._trials()
                 if t.state != TrialState.FAIL}
        added = 0
        for point in points:
            pid = point_id(point)
            if pid in taken:
                continue
            self.study.enqueue_trial({}, user_attrs={"point": point, "point_id": pid, "stage": stage,
                                                     "status": "waiting"})
            taken.add(pid)
            added += 1
        return added

    def claim(self, limit: int, same_group: Any = None, share: int = 1) -> list[optuna.trial.FrozenTrial]:
        """Atomically take up to ``limit`` waiting trials (``same_group(point)`` equal to the first's).

        ``share``: the number of workers; a worker takes at most its share of
        the first group's waiting trials, so one large group does not leave
        the other workers idle.
        """
        claimed: list[optuna.trial.FrozenTrial] = []
        group = None
        waiting = self._trials((TrialState.WAITING,))
        if waiting and same_group is not None and share > 1:
            first = same_group(waiting[0].user_attrs.get("point", {}))
            n = sum(1 for t in waiting if same_group(t.user_attrs.get("point", {})) == first)
            limit = min(limit, max(1, math.ceil(n / share)))
        for t in waiting:
            if len(claimed) >= limit:
                break
            point = t.user_attrs.get("point", {})
            key = same_group(point) if same_group is not None else None
            if claimed and key != group:
                continue
            try:
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            self._leases.take(t._trial_id)
            if self.is_duplicate(t):
                self._results.end(t._trial_id, TrialState.FAIL, None, {"status": "duplicate"})
                continue
            claimed.append(self.storage.get_trial(t._trial_id))
            group = key
        return claimed

    def register(self, trial_id: int, point: dict[str, Any], stage: int = 0) -> bool:
        """Record the point of a trial created by a sampler (``study.ask``); False if it is a duplicate."""
        pid = point_id(point)
        for key, value in (("point", point), ("point_id", pid), ("stage", stage), ("status", "running")):
            self.storage.set_trial_user_attr(trial_id, key, value)
        self._leases.take(trial_id)
        if self.is_duplicate(self.storage.get_trial(trial_id)):
            self._results.end(trial_id, TrialState.FAIL, None, {"status": "duplicate"})
            return False
        return True

    def is_duplicate(self, trial: optuna.trial.FrozenTrial) -> bool:
        pid = trial.user_attrs.get("point_id")
        # A re-enqueued copy supersedes the trial it came from: that one is being given back (a release
        # enqueues the copy before failing the original), so its RUNNING state must not make the copy a
        # duplicate, or both would end failed and the point be lost.
        origin = trial.user_attrs.get("requeued_from")
        for other in self._trials((TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if other._trial_id == trial._trial_id or other.user_attrs.get("point_id") != pid:
                continue
            if other.state == TrialState.RUNNING and other.number == origin:
                continue
            if other.state != TrialState.RUNNING or other.number < trial.number:
                return True
        return False

    def requeue_stale(self) -> int:
        """Fail the stale trials and enqueue their points again; returns how many.

        Failing first means a stale worker that wakes up cannot also finish the
        trial. A process stopped between the two steps would leave the point
        with no live trial: :meth:`requeue_orphans` finds such points (every
        trial failed as requeued or duplicate) and enqueues them again.
        """
        n = 0
        stale = self._leases.stale()
        trials = self._trials() if stale else []
        for t in stale:
            pid = t.user_attrs.get("point_id")
            died = 1 + sum(1 for o in trials if o.user_attrs.get("worker_died") and o.user_attrs.get("point_id") == pid
                           and o._trial_id != t._trial_id)
            lease = t.user_attrs.get("lease") or {}
            if died >= self.max_attempts:  # a poison point: it takes its worker down every time
                error = (f"its worker died {died} times while running it (killed, out of memory, or a crash in "
                         f"native code); last seen: pid {lease.get('pid')} on {lease.get('host')}. Not retried again "
                         f"(executor.max_attempts: {self.max_attempts}); proxytune resume tries it once more")
                if self._results.end(t._trial_id, TrialState.FAIL, None,
                                     {"status": "failed", "worker_died": True, "error": error}):
                    stop_orphan_program(t)
                continue
            if self._results.end(t._trial_id, TrialState.FAIL, None, {"status": "requeued", "worker_died": True}):
                stop_orphan_program(t)
                self.reenqueue(t)
                n += 1
        return n + self.requeue_orphans()

    def requeue_orphans(self) -> int:
        """Enqueue again the points whose every trial was given back or stepped aside (no live trial left).

        Another process of the sweep may be between the two steps of :meth:`requeue_stale` (failed, not yet
        enqueued again): for that moment its point looks orphaned, and enqueueing it here too would run it twice
        (a point that kills its worker would then die once more than ``max_attempts``). So a point whose last
        trial was given back less than :data:`ORPHAN_GRACE_S` ago is looked at again until that much time has
        passed, and enqueued only if it is still orphaned; older ones (a process killed between the steps) at
        once."""
        orphans = self._orphans()
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while orphans and time.monotonic() < deadline and any(
                _age(t) < ORPHAN_GRACE_S for t in orphans.values()):
            time.sleep(0.1)
            orphans = self._orphans()
        for t in orphans.values():
            self.reenqueue(t)
        return len(orphans)

    def _orphans(self) -> dict[str, optuna.trial.FrozenTrial]:
        trials = self._trials()
        live = {t.user_attrs.get("point_id") for t in trials
                if t.state != TrialState.FAIL or t.user_attrs.get("status") not in ("requeued", "duplicate", "surplus")}
        orphans: dict[str, optuna.trial.FrozenTrial] = {}
        for t in trials:
            pid = t.user_attrs.get("point_id")
            if pid is not None and pid not in live and t.user_attrs.get("status") == "requeued":
                orphans[pid] = t
        return orphans

    def release(self, trial_id: int) -> bool:
        """Give a claimed trial back (clean stop): enqueue its point again, then fail it as ``requeued``.

        Enqueueing first means an interrupted release can only leave a
        duplicate in the queue (resolved when claimed), never lose the point.
        """
        trial = self.storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            return False
        self.reenqueue(trial)
        return self._results.end(trial_id, TrialState.FAIL, None, {"status": "requeued"})

    def reenqueue(self, trial: optuna.trial.FrozenTrial) -> None:
        """Put a trial's point back in the queue as a new waiting trial."""
        point = trial.user_attrs.get("point")
        if point is not None:
            self.study.enqueue_trial({}, user_attrs={"point": point, "point_id": point_id(point),
                                                     "stage": trial.user_attrs.get("stage", 0),
                                                     "status": "waiting", "requeued_from": trial.number})

"""Leases: which worker holds a running trial, and whether it still does.

A worker that takes a trial records a lease (host, pid, expiry) with it and renews it from a heartbeat thread.
A running trial is *stale* when its lease expired (judged against this host's wall clock, not while that clock
has just jumped nor right after a storage outage) or when its process on this host is gone (``/proc``); the
queue re-queues stale trials (:meth:`proxytune.sweep.queue.TrialQueue.requeue_stale`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from .program import kill_orphans
from .reconnect import MAX_WAIT_S

log = logging.getLogger("proxytune.sweep")

HOST = socket.gethostname()

Trials = Callable[..., list[optuna.trial.FrozenTrial]]


class HeldTrials:
    """The (storage url, trial id) pairs of the trials that a worker in this process holds now.

    A lease in this process's name whose trial is not here was left by a worker that stopped on an error (a full
    disk, a lost database): nobody runs it. One instance per process (:data:`HELD`), and it must be: a sweep's
    trials are judged by whichever of its stores in this process looks (the runner's store while an inline worker
    trains through its own, a tune stage's), so every store must see what every worker here holds.
    """

    def __init__(self) -> None:
        # No lock: a heartbeat thread adds while the worker's thread discards, and one set operation is atomic;
        # a lock could be left taken by a stop signal that raises in the main thread between acquire and try.
        self._held: set[tuple[str, int]] = set()

    def add(self, url: str, trial_id: int) -> None:
        self._held.add((url, trial_id))

    def discard(self, url: str, trial_id: int) -> None:
        self._held.discard((url, trial_id))

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._held


#: this process's held trials
HELD = HeldTrials()


class Leases:
    """The leases of one sweep's trials in one storage."""

    def __init__(self, storage: optuna.storages.BaseStorage, url: str, lease_seconds: float, trials: Trials,
                 held: HeldTrials = HELD) -> None:
        self.storage = storage
        self.url = url
        self.lease_seconds = lease_seconds
        self._trials = trials
        self._held = held
        self._clock = WallClockWatch()

    def take(self, trial_id: int) -> None:
        """Record (or renew) this process's lease on a trial."""
        self._held.add(self.url, trial_id)
        self.storage.set_trial_user_attr(trial_id, "lease", {"host": HOST, "pid": os.getpid(),
                                                             "until": time.time() + self.lease_seconds})

    def drop(self, trial_id: int) -> None:
        """This process no longer holds the trial (it ended, or was given back or left behind)."""
        self._held.discard(self.url, trial_id)

    def heartbeat(self, trial_ids: Iterable[int]) -> None:
        for tid in trial_ids:
            try:
                self.take(tid)
            except (UpdateFinishedTrialError, RuntimeError):
                pass  # finished meanwhile

    def stale(self) -> list[optuna.trial.FrozenTrial]:
        """Running trials whose worker is gone: lease expired, or its process on this host no longer exists."""
        now = time.time()
        # After a storage outage no heartbeat could be written: leases that ran out meanwhile belong to workers
        # that are most likely alive and reconnecting (their next try can be one backoff step away). Give them a
        # lease period and that step to renew before judging.
        quiet = self.lease_seconds + 1.2 * MAX_WAIT_S
        recovered = getattr(self.storage, "recovered_at", None)
        # This host's wall clock jumped (an NTP step, a VM resumed): expiry times read against it mean nothing
        # until the workers have renewed their leases with the new time. (Asked every time, so a jump is seen.)
        clock_settled = self._clock.settled(quiet)
        judge_expiry = clock_settled and (recovered is None or now - recovered > quiet)
        out = []
        for t in self._trials((TrialState.RUNNING,)):
            lease = t.user_attrs.get("lease")
            if lease is None:
                started = t.datetime_start.timestamp() if t.datetime_start else now
                if judge_expiry and now - started > self.lease_seconds:
                    out.append(t)
            elif (judge_expiry and lease["until"] < now) or (lease["host"] == HOST and not self.held(lease, t)):
                out.append(t)
        return out

    def held(self, lease: dict[str, Any], trial: optuna.trial.FrozenTrial) -> bool:
        """Whether the lease's process on this host still runs the trial."""
        if lease["pid"] == os.getpid():
            return (self.url, trial._trial_id) in self._held
        return alive(lease["pid"])


class WallClockWatch:
    """Notices a jump of this host's wall clock (against the monotonic clock, which never jumps)."""

    JUMP_S = 5.0

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()
        self._jumped_at: float | None = None

    def settled(self, quiet_s: float) -> bool:
        """False within ``quiet_s`` seconds of a jump (logged once per jump)."""
        offset = time.time() - time.monotonic()
        if abs(offset - self._offset) > self.JUMP_S:
            log.warning("this host's clock jumped by %+.0f s; no lease is judged expired for the next %.0f s",
                        offset - self._offset, quiet_s)
            self._offset = offset
            self._jumped_at = time.monotonic()
        return self._jumped_at is None or time.monotonic() - self._jumped_at > quiet_s


def alive(pid: int) -> bool:
    """Whether process ``pid`` on this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers signal 0.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def stop_orphan_program(trial: optuna.trial.FrozenTrial) -> None:
    """A command started for a trial whose worker died may still run (and hold a GPU): end it, on this host."""
    started = trial.user_attrs.get("program")
    if isinstance(started, dict) and started.get("host") == HOST and started.get("trial_file"):
        kill_orphans(started["trial_file"])


class Heartbeat:
    """Renews the leases of a worker's running trials every lease/4 seconds, in a thread.

    ``store``: what holds the leases (a :class:`~proxytune.sweep.store.SweepStore`: its ``heartbeat``,
    ``lease_seconds`` and ``leases``)."""

    def __init__(self, store: Any, trial_ids: list[int]) -> None:
        self.store = store
        self.trial_ids = list(trial_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.store.lease_seconds / 4):
            self.store.heartbeat(self.trial_ids)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for tid in self.trial_ids:  # finished, given back, or left behind by an error: no longer held here
            self.store.leases.drop(tid)

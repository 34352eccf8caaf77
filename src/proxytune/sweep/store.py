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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ..train.result import RunResult
from .config import SweepConfig, SweepConfigError
from .reconnect import MAX_WAIT_S

log = logging.getLogger("proxytune.sweep")


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines off for the duration (its "A new study created" would interleave with proxytune's own
    output), and its verbosity as the user had it afterwards: importing proxytune changes no global state."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(before, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)

IDENTITY_ATTR = "proxytune_identity"
HOST = socket.gethostname()
# (storage url, trial id) of the trials a worker in this process holds now. A lease in this process's name whose
# trial is not here was left by a worker that stopped on an error (a full disk, a lost database): nobody runs it.
_HELD: set[tuple[str, int]] = set()


def point_id(point: dict[str, Any]) -> str:
    """Canonical text of a sweep point (the key that makes 'the same point' exact)."""
    return json.dumps({k: point[k] for k in sorted(point)}, sort_keys=True)


def open_storage(url: str, *, reconnect_timeout: float = 600.0, wait: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; file paths become journal storages.

    A database URL gives a :class:`ReconnectingStorage`: its calls wait up to
    ``reconnect_timeout`` seconds for a lost connection to come back. With
    ``wait`` (a worker joining a running sweep) opening it waits too; without
    (a command a person typed), an unreachable database is an error at once.
    """
    if "://" not in url:
        return _open_journal(url)
    from .reconnect import ReconnectingStorage, StorageUnavailable, is_connection_error, retry_connection

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql") and "?" not in url:
        # A dropped network (not a refused connection) must fail a call in seconds, not after the kernel's TCP
        # timeout, so the reconnect loop can run: libpq's connect timeout and TCP keepalives.
        engine_kwargs["connect_args"] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                                         "keepalives_interval": 10, "keepalives_count": 3}

    def connect() -> optuna.storages.BaseStorage:
        return ReconnectingStorage(url, reconnect_timeout=reconnect_timeout, what=_redact(url),
                                   engine_kwargs=engine_kwargs)

    for attempt in range(6):
        try:
            if wait:
                return retry_connection(connect, what=_redact(url), timeout=reconnect_timeout)
            return connect()
        except (SweepConfigError, StorageUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors vary; the message is what matters
            # Two processes creating the schema of a fresh database at once: one loses a CREATE race
            # (PostgreSQL: a unique violation on pg_type; SQLite: on alembic_version, or the file is locked
            # meanwhile). The schema exists after that, so try again.
            text = str(exc)
            if attempt < 5 and any(s in text for s in ("UniqueViolation", "already exists", "UNIQUE constraint failed",
                                                       "database is locked")):
                time.sleep(0.2 + 0.3 * attempt + random.random() * 0.3)
                continue
            hint = " (is the server running and reachable?)" if is_connection_error(exc) else ""
            raise SweepConfigError(f"cannot open storage {_redact(url)}: {type(exc).__name__}: "
                                   f"{text.splitlines()[0] if text else ''}{hint}") from None
    raise AssertionError("unreachable")


def _open_journal(url: str) -> optuna.storages.BaseStorage:
    """The journal file at ``url`` (a path), checked and, when its last record is torn, repaired.

    An existing file is identified as a journal before anything writes to it (a repair included): a database or
    text file given as ``storage:`` by mistake is refused untouched, no side file made beside it.
    """
    from optuna.storages import JournalStorage

    from .journal import (JournalCorrupt, JournalRepairWarning, NotAJournal, SafeJournalBackend, journal_problem,
                          remove_legacy_lock, side_file_note)

    path = Path(url).resolve()
    if path.is_dir():
        raise SweepConfigError(f"storage {url!r} is a directory; give a file path (or leave storage unset)")
    kind, refusal = journal_problem(str(path)) if path.exists() else ("missing", None)
    if kind == "foreign":
        raise SweepConfigError(refusal)
    # ("torn-first": its first record may be being written right now; the repair below holds the lock and refuses
    # it if it is still incomplete, cutting nothing.)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, PermissionError) as exc:
        raise SweepConfigError(f"storage {url!r}: cannot create its folder: {exc.strerror or exc}") from None
    if not path.parent.is_dir():
        raise SweepConfigError(f"storage {url!r}: {str(path.parent)!r} is not a directory")
    writable = os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    if not path.exists() and not writable:
        raise SweepConfigError(f"storage {url!r}: the folder {str(path.parent)!r} is not writable")
    try:
        backend = SafeJournalBackend(str(path))
        done = None
        if writable:
            remove_legacy_lock(str(path))
            done = backend.repair()
        storage = JournalStorage(backend)
        if done:
            kept = sum(1 for study in storage.get_all_studies()
                       for t in storage.get_all_trials(study._study_id, deepcopy=False)
                       if t.state.is_finished() and t.user_attrs.get("status") not in ("requeued", "duplicate", "surplus"))
            warnings.warn(f"journal {path}: dropped 1 incomplete record at byte {done['offset']} ({done['bytes']} "
                          f"bytes, a write cut short by a crash; {side_file_note(done)}); {kept} finished "
                          "trials kept", JournalRepairWarning, stacklevel=2)
        return storage
    except (JournalCorrupt, NotAJournal) as exc:
        raise SweepConfigError(str(exc)) from None
    except PermissionError as exc:
        raise SweepConfigError(f"storage {url!r}: {exc.strerror}: {exc.filename}") from None


def check_writable(url: str) -> None:
    """A sweep that will write its journal: refuse a read-only file or folder, or an existing file that is not a
    journal, before any worker starts. Reads only."""
    from .journal import journal_problem

    if "://" in url:
        return
    path = Path(url).resolve()
    if path.is_dir():
        raise SweepConfigError(f"storage {url!r} is a directory; give a file path (or leave storage unset)")
    for p in (path, path.parent):
        if p.exists() and not os.access(p, os.W_OK):
            raise SweepConfigError(f"storage {url!r}: {str(p)!r} is read-only; a sweep must write its results "
                                   "(make it writable, or copy the run folder somewhere writable)")
    if path.exists():
        _, refusal = journal_problem(str(path))
        if refusal:
            raise SweepConfigError(refusal)
    probe_folder(path.parent, f"storage {url!r}")


def probe_folder(folder: Path, what: str) -> None:
    """Refuse a folder that cannot be created: make (and remove) a scratch folder where it would go."""
    import tempfile

    p = folder
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise SweepConfigError(f"{what}: {str(p)!r} is a file, not a folder")
    if p == folder:
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".proxytune-probe-", dir=p))
    except OSError as exc:
        raise SweepConfigError(f"{what}: cannot create its folder under {str(p)!r}: {exc.strerror or exc}") from None


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def existing_studies(url: str, storage: optuna.storages.BaseStorage | None = None) -> list[str]:
    """Names of the studies in a storage, without creating anything (a missing file has none)."""
    if storage is None:
        if "://" not in url and not Path(url).exists():
            return []
        storage = open_storage(url)
    return [s.study_name for s in storage.get_all_studies()]


@contextlib.contextmanager
def _journal_lock(storage: optuna.storages.BaseStorage, url: str, create: bool) -> Iterator[None]:
    """The journal's file lock, held while a sweep is looked up, created and its identity checked or recorded.

    The storage is fresh, used by no other thread yet, so holding the lock across Optuna's calls (which take its
    thread lock, then this lock again) cannot deadlock. A lock that cannot be taken at all (a read-only folder
    with no lock file in it) is only an error for a sweep that would write: nobody can write there either."""
    lock = storage._backend.lock  # type: ignore[attr-defined] - a SafeJournalBackend's
    try:
        lock.acquire()
    except OSError as exc:
        if create:
            raise SweepConfigError(f"storage {url!r}: cannot take its lock {lock.path}: {exc.strerror or exc}; a "
                                   "sweep must write its results (make the folder writable)") from None
        yield
        return
    try:
        yield
    finally:
        lock.release()


IDENTITY_WAIT_S = 5.0  # how long an opener waits for a sweep created a moment ago to get its identity recorded


def _open_study(cfg: SweepConfig, storage: optuna.storages.BaseStorage, url: str, *, create: bool, sampler: Any,
                pruner: Any) -> optuna.Study:
    """Load (``create``: or create) the study of ``cfg`` and check, or record, its identity (a journal's caller
    holds its lock)."""
    file_store = "://" not in url
    names = [s.study_name for s in storage.get_all_studies()]
    if file_store and names and cfg.name not in names:
        raise SweepConfigError(f"storage file {url!r} belongs to sweep {', '.join(names)!r}, not {cfg.name!r}; "
                               "use another runs_dir or storage")
    if cfg.name not in names:
        if not create:
            raise SweepConfigError(f"no sweep named {cfg.name!r} in {_redact(url)}")
        try:
            with _optuna_quiet():
                storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], cfg.name)
        except optuna.exceptions.DuplicatedStudyError:
            pass  # a database: another process created it a moment ago; the identity decides whose it is
    study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=pruner)
    identity = cfg.identity()
    stored = storage.get_study_user_attrs(study._study_id).get(IDENTITY_ATTR)
    if stored is None and create:
        stored = _claim_identity(storage, study._study_id, identity, url, cfg.executor.reconnect_timeout)
    elif stored is None and not file_store:
        stored = _await_identity(storage, study._study_id)
    if stored is not None and stored != identity:
        changes = _diff(stored, identity)
        raise SweepConfigError(
            f"sweep {cfg.name!r} in {_redact(url)} was run with a different configuration; its stored trials "
            f"would not match: {'; '.join(changes)}. Restore these settings, or give the sweep a new name.")
    return study


def _claim_identity(storage: optuna.storages.BaseStorage, study_id: int, identity: Any, url: str,
                    reconnect_timeout: float) -> Any:
    """Record ``identity`` as the study's unless one is recorded already; returns the one that stands.

    A study without one was created a moment ago, by this process or another (or by one that stopped before it
    recorded it). A journal's caller holds the file lock, so a plain write is safe. A database gets an INSERT of
    the attribute row: its unique key (study, key) lets exactly one of several processes win; the others read
    the winner's."""
    if "://" not in url:
        storage.set_study_user_attr(study_id, IDENTITY_ATTR, identity)
        return identity
    from .reconnect import retry_connection

    def insert() -> None:
        from optuna.storages._rdb import models
        from sqlalchemy import exc as sa_exc

        session = storage.scoped_session()  # type: ignore[attr-defined] - an RDBStorage
        try:
            session.add(models.StudyUserAttributeModel(study_id=study_id, key=IDENTITY_ATTR,
                                                       value_json=json.dumps(identity)))
            session.commit()
        except sa_exc.IntegrityError:
            session.rollback()  # recorded first by another process: its identity stands
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # A commit that reached the server before the connection dropped is retried into the IntegrityError: fine.
    retry_connection(insert, what=_redact(url), timeout=reconnect_timeout)
    return storage.get_study_user_attrs(study_id).get(IDENTITY_ATTR)


def _await_identity(storage: optuna.storages.BaseStorage, study_id: int) -> Any:
    """The identity of a database study opened without ``create``: one created a moment ago (no trials yet) may
    not have it recorded yet, so wait a little for it. A study with trials and none is from before identities."""
    deadline = time.monotonic() + IDENTITY_WAIT_S
    while True:
        stored = storage.get_study_user_attrs(study_id).get(IDENTITY_ATTR)
        if stored is not None or time.monotonic() > deadline or storage.get_all_trials(study_id, deepcopy=False):
            return stored
        time.sleep(0.05)


class SweepStore:
    """The trials of one sweep in one Optuna storage."""

    def __init__(self, cfg: SweepConfig, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        self.cfg = cfg
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(cfg.name)
        self.url = cfg.storage_url()
        self.lease_seconds = cfg.executor.lease_seconds
        self.max_attempts = cfg.executor.max_attempts
        self._clock = _WallClockWatch()

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
        process win (:func:`_claim_identity`).
        """
        url = cfg.storage_url()
        if "://" not in url:
            if not create and not Path(url).exists():
                raise SweepConfigError(f"no sweep named {cfg.name!r} in {_redact(url)}")
            storage = open_storage(url)  # (read here, unlocked: the locked part below reads only what is new)
            with _journal_lock(storage, url, create):
                study = _open_study(cfg, storage, url, create=create, sampler=sampler, pruner=pruner)
        else:
            storage = open_storage(url, reconnect_timeout=cfg.executor.reconnect_timeout, wait=wait)
            study = _open_study(cfg, storage, url, create=create, sampler=sampler, pruner=pruner)
        return cls(cfg, study, storage)

    # --------------------------------------------------------------- trials
    def trials(self, states: Iterable[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False,
                                           states=tuple(states) if states is not None else None)

    def enqueue(self, points: list[dict[str, Any]], stage: int = 0) -> int:
        """Enqueue the points not already waiting, running or done; returns how many were added."""
        taken = {t.user_attrs.get("point_id") for t in self.trials()
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
        waiting = self.trials((TrialState.WAITING,))
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
            self._set_lease(t._trial_id)
            if self._is_duplicate(t):
                self._finish_state(t._trial_id, TrialState.FAIL, None, {"status": "duplicate"})
                continue
            claimed.append(self.storage.get_trial(t._trial_id))
            group = key
        return claimed

    def register(self, trial_id: int, point: dict[str, Any], stage: int = 0) -> bool:
        """Record the point of a trial created by a sampler (``study.ask``); False if it is a duplicate."""
        pid = point_id(point)
        for key, value in (("point", point), ("point_id", pid), ("stage", stage), ("status", "running")):
            self.storage.set_trial_user_attr(trial_id, key, value)
        self._set_lease(trial_id)
        if self._is_duplicate(self.storage.get_trial(trial_id)):
            self._finish_state(trial_id, TrialState.FAIL, None, {"status": "duplicate"})
            return False
        return True

    def _is_duplicate(self, trial: optuna.trial.FrozenTrial) -> bool:
        pid = trial.user_attrs.get("point_id")
        # A re-enqueued copy supersedes the trial it came from: that one is being given back (a release
        # enqueues the copy before failing the original), so its RUNNING state must not make the copy a
        # duplicate, or both would end failed and the point be lost.
        origin = trial.user_attrs.get("requeued_from")
        for other in self.trials((TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if other._trial_id == trial._trial_id or other.user_attrs.get("point_id") != pid:
                continue
            if other.state == TrialState.RUNNING and other.number == origin:
                continue
            if other.state != TrialState.RUNNING or other.number < trial.number:
                return True
        return False

    # ---------------------------------------------------------------- leases
    def _set_lease(self, trial_id: int) -> None:
        _HELD.add((self.url, trial_id))
        self.storage.set_trial_user_attr(trial_id, "lease", {"host": HOST, "pid": os.getpid(),
                                                             "until": time.time() + self.lease_seconds})

    def heartbeat(self, trial_ids: Iterable[int]) -> None:
        for tid in trial_ids:
            try:
                self._set_lease(tid)
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
        for t in self.trials((TrialState.RUNNING,)):
            lease = t.user_attrs.get("lease")
            if lease is None:
                started = t.datetime_start.timestamp() if t.datetime_start else now
                if judge_expiry and now - started > self.lease_seconds:
                    out.append(t)
            elif (judge_expiry and lease["until"] < now) or (lease["host"] == HOST and not self._held(lease, t)):
                out.append(t)
        return out

    def _held(self, lease: dict[str, Any], trial: optuna.trial.FrozenTrial) -> bool:
        """Whether the lease's process on this host still runs the trial."""
        if lease["pid"] == os.getpid():
            return (self.url, trial._trial_id) in _HELD
        return _alive(lease["pid"])

    def requeue_stale(self) -> int:
        """Fail the stale trials and enqueue their points again; returns how many.

        Failing first means a stale worker that wakes up cannot also finish the
        trial. A process stopped between the two steps would leave the point
        with no live trial: :meth:`_requeue_orphans` finds such points (every
        trial failed as requeued or duplicate) and enqueues them again.
        """
        n = 0
        stale = self.stale()
        trials = self.trials() if stale else []
        for t in stale:
            pid = t.user_attrs.get("point_id")
            died = 1 + sum(1 for o in trials if o.user_attrs.get("worker_died") and o.user_attrs.get("point_id") == pid
                           and o._trial_id != t._trial_id)
            lease = t.user_attrs.get("lease") or {}
            if died >= self.max_attempts:  # a poison point: it takes its worker down every time
                error = (f"its worker died {died} times while running it (killed, out of memory, or a crash in "
                         f"native code); last seen: pid {lease.get('pid')} on {lease.get('host')}. Not retried again "
                         f"(executor.max_attempts: {self.max_attempts}); proxytune resume tries it once more")
                if self._finish_state(t._trial_id, TrialState.FAIL, None,
                                      {"status": "failed", "worker_died": True, "error": error}):
                    _stop_orphan_program(t)
                continue
            if self._finish_state(t._trial_id, TrialState.FAIL, None, {"status": "requeued", "worker_died": True}):
                _stop_orphan_program(t)
                self._reenqueue(t)
                n += 1
        return n + self._requeue_orphans()

    def _requeue_orphans(self) -> int:
        trials = self.trials()
        live = {t.user_attrs.get("point_id") for t in trials
                if t.state != TrialState.FAIL or t.user_attrs.get("status") not in ("requeued", "duplicate", "surplus")}
        orphans: dict[str, optuna.trial.FrozenTrial] = {}
        for t in trials:
            pid = t.user_attrs.get("point_id")
            if pid is not None and pid not in live and t.user_attrs.get("status") == "requeued":
                orphans[pid] = t
        for t in orphans.values():
            self._reenqueue(t)
        return len(orphans)

    # --------------------------------------------------------------- results
    def finish(self, trial_id: int, result: RunResult) -> bool:
        """Store a RunResult and close the trial (False if it had been re-queued meanwhile)."""
        data = result.to_dict()
        attrs = {"status": result.status, "result": {k: v for k, v in data.items() if k not in ("config", "env")},
                 "config": data["config"], "env": data["env"]}
        if result.status == "pruned":
            return self._finish_state(trial_id, TrialState.PRUNED, None, attrs)
        value = result.final_val_loss if result.status == "complete" else math.inf
        return self._finish_state(trial_id, TrialState.COMPLETE, [value], attrs)

    def fail(self, trial_id: int, error: str, config: dict[str, Any] | None = None) -> bool:
        attrs = {"status": "failed", "error": error[-4000:]}
        if config is not None:
            attrs["config"] = config
        return self._finish_state(trial_id, TrialState.FAIL, None, attrs)

    def release(self, trial_id: int) -> bool:
        """Give a claimed trial back (clean stop): enqueue its point again, then fail it as ``requeued``.

        Enqueueing first means an interrupted release can only leave a
        duplicate in the queue (resolved when claimed), never lose the point.
        """
        trial = self.storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            return False
        self._reenqueue(trial)
        return self._finish_state(trial_id, TrialState.FAIL, None, {"status": "requeued"})

    def _reenqueue(self, trial: optuna.trial.FrozenTrial) -> None:
        """Put a trial's point back in the queue as a new waiting trial."""
        point = trial.user_attrs.get("point")
        if point is not None:
            self.study.enqueue_trial({}, user_attrs={"point": point, "point_id": point_id(point),
                                                     "stage": trial.user_attrs.get("stage", 0),
                                                     "status": "waiting", "requeued_from": trial.number})

    def step_aside(self, trial_id: int, status: str = "duplicate") -> bool:
        """End a trial that must not run (a point already taken, one past a sampled sweep's budget): failed with
        ``status``, which is neither a result nor a failure of its point."""
        return self._finish_state(trial_id, TrialState.FAIL, None, {"status": status})

    def _finish_state(self, trial_id: int, state: TrialState, values: list[float] | None,
                      attrs: dict[str, Any]) -> bool:
        _HELD.discard((self.url, trial_id))
        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(trial_id, key, value)
            self.storage.set_trial_state_values(trial_id, state=state, values=values)
            return True
        except UpdateFinishedTrialError:
            return False

    # ---------------------------------------------------------------- reading
    def records(self) -> list[dict[str, Any]]:
        """One flat dict per trial (point axes as columns), for status, export and analysis."""
        rows = []
        for t in self.trials():
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
        for t in self.trials((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
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
        for t in self.trials():
            s = _status(t)
            if s in out:
                out[s] += 1
        return out


class _WallClockWatch:
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


def _alive(pid: int) -> bool:
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


def _stop_orphan_program(trial: optuna.trial.FrozenTrial) -> None:
    """A command started for a trial whose worker died may still run (and hold a GPU): end it, on this host."""
    started = trial.user_attrs.get("program")
    if isinstance(started, dict) and started.get("host") == HOST and started.get("trial_file"):
        from .program import kill_orphans

        kill_orphans(started["trial_file"])


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: stored {old!r}, now {new!r}"]
    return []


class Heartbeat:
    """Renews the leases of a worker's running trials every lease/4 seconds, in a thread."""

    def __init__(self, store: SweepStore, trial_ids: list[int]) -> None:
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
            _HELD.discard((self.store.url, tid))

"""Opening a sweep's storage and its study: a journal file or a database, and the sweep's identity in it.

A path gives a journal (checked to be one, a torn last record repaired), a URL a database storage that
reconnects; a study is created or loaded, and the identity of the sweep that made it is recorded or compared,
atomically, so two different sweeps under one name never share trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage

from .errors import JournalCorrupt, JournalRepairWarning, NotAJournal, StorageUnavailable, SweepConfigError
from .journal import SafeJournalBackend, journal_problem, remove_legacy_lock, side_file_note
from .reconnect import ReconnectingStorage, is_connection_error, retry_connection
from .schema import SweepConfig


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


def open_storage(url: str, *, reconnect_timeout: float = 600.0, wait: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; file paths become journal storages.

    A database URL gives a :class:`ReconnectingStorage`: its calls wait up to
    ``reconnect_timeout`` seconds for a lost connection to come back. With
    ``wait`` (a worker joining a running sweep) opening it waits too; without
    (a command a person typed), an unreachable database is an error at once.
    """
    if "://" not in url:
        return _open_journal(url)
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


def _load_study(cfg: SweepConfig, storage: optuna.storages.BaseStorage, url: str, *, create: bool, sampler: Any,
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
    def insert() -> None:
        # cost: SQLAlchemy's ORM models are loaded only when a database storage is used
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


def open_study(cfg: SweepConfig, *, create: bool, sampler: Any = None, pruner: Any = None,
               wait: bool = False) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """The sweep's study and its storage (:meth:`SweepStore.open <proxytune.sweep.store.SweepStore.open>`)."""
    url = cfg.storage_url()
    if "://" not in url:
        if not create and not Path(url).exists():
            raise SweepConfigError(f"no sweep named {cfg.name!r} in {_redact(url)}")
        storage = open_storage(url)  # (read here, unlocked: the locked part below reads only what is new)
        with _journal_lock(storage, url, create):
            study = _load_study(cfg, storage, url, create=create, sampler=sampler, pruner=pruner)
    else:
        storage = open_storage(url, reconnect_timeout=cfg.executor.reconnect_timeout, wait=wait)
        study = _load_study(cfg, storage, url, create=create, sampler=sampler, pruner=pruner)
    return study, storage


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: stored {old!r}, now {new!r}"]
    return []

"""A database storage that rides out a lost connection: wait, reconnect, carry on.

A PostgreSQL server restarted for maintenance, a failover or a network blip
must not fail the trials running against it. :class:`ReconnectingStorage` is
Optuna's ``RDBStorage`` with every storage call retried, with backoff, while
the error is a lost or refused connection, for up to ``reconnect_timeout``
seconds. ``pool_pre_ping`` makes the connection pool drop dead connections, so
the first call after the server is back opens a fresh one. The outage and the
reconnection are logged once each (logger ``proxytune.sweep``), with how long
the storage was gone; :attr:`ReconnectingStorage.recovered_at` tells the
lease logic that heartbeats could not be written meanwhile.

Only the outermost call of a thread retries (Optuna's methods call each other;
retrying an inner one would reuse the session of a dead connection). Errors
that are not about the connection (a constraint, a bad value) pass through
unchanged. A retried write whose commit reached the server before the
connection dropped can apply twice; every write proxytune makes is either
idempotent (attributes), refused the second time (a state change of a
finished trial) or resolved when claimed (a point enqueued twice).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.storages import RDBStorage
from optuna.storages._base import BaseStorage

from .errors import StorageUnavailable

__all__ = ["ReconnectingStorage", "StorageUnavailable", "is_connection_error", "retry_connection"]

log = logging.getLogger("proxytune.sweep")
T = TypeVar("T")

FIRST_WAIT_S = 0.5
MAX_WAIT_S = 10.0


def is_connection_error(exc: BaseException) -> bool:
    """True for a lost, refused or timed-out database connection anywhere in ``exc``'s chain."""
    try:
        from sqlalchemy import exc as sa_exc  # cost: SQLAlchemy is loaded only for database storages
    except ImportError:  # no SQLAlchemy: no database storage either
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError) and getattr(e, "connection_invalidated", False):
            return True
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if type(e).__name__ in ("OperationalError", "InterfaceError") and "psycopg" in type(e).__module__:
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None and not str(exc).strip():
        exc = exc.__cause__
    root = exc.__cause__ if exc.__cause__ is not None else exc
    text = str(root).strip().splitlines()
    return f"{type(root).__name__}: {text[0] if text else ''}".rstrip(": ")


def retry_connection(call: Callable[[], T], *, what: str, timeout: float, state: _Outage | None = None) -> T:
    """``call()``, retried with backoff while it fails on a connection error, for up to ``timeout`` seconds."""
    state = state or _Outage(what)
    deadline: float | None = None
    wait = FIRST_WAIT_S
    while True:
        try:
            out = call()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
                state.lost(exc, timeout)
            if now >= deadline or state.gave_up:
                state.gave_up = True
                raise StorageUnavailable(
                    f"storage {what} unreachable for {timeout:g} s ({_first_line(exc)}); every finished trial is "
                    "stored: run proxytune resume RUN_DIR when the database is back (executor.reconnect_timeout "
                    "sets how long a sweep waits)") from None
            time.sleep(min(wait, max(0.0, deadline - now)) * (0.8 + 0.4 * random.random()))
            wait = min(wait * 2, MAX_WAIT_S)
            continue
        state.back()
        return out


class _Outage:
    """Whether the storage is down now, since when, and the log lines that say so (one each per outage)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None  # time.time() of the first failed call of this outage
        self.recovered_at: float | None = None  # time.time() of the first successful call after the last outage
        self.gave_up = False
        self._lock = threading.Lock()

    def lost(self, exc: BaseException, timeout: float) -> None:
        with self._lock:
            if self.since is not None:
                return
            self.since = time.time()
        log.warning("storage %s unreachable (%s); waiting up to %g s for it to come back", self.what,
                    _first_line(exc), timeout)

    def back(self) -> None:
        if self.since is None and not self.gave_up:
            return
        with self._lock:
            if self.since is None and not self.gave_up:
                return
            gone = time.time() - (self.since or time.time())
            self.since = None
            self.gave_up = False
            self.recovered_at = time.time()
        log.warning("storage %s reachable again after %.1f s; reconnected, carrying on", self.what, gone)


class ReconnectingStorage(RDBStorage):
    """``RDBStorage`` whose calls wait out a lost connection (see the module's docstring)."""

    def __init__(self, url: str, *, reconnect_timeout: float, what: str | None = None, **kwargs: Any) -> None:
        self._reconnect = {"timeout": float(reconnect_timeout), "depth": threading.local(),
                           "outage": _Outage(what or url)}
        super().__init__(url, **kwargs)

    @property
    def recovered_at(self) -> float | None:
        """When (``time.time()``) this process last saw the storage come back after an outage; None if never."""
        return self._reconnect["outage"].recovered_at

    @property
    def down_since(self) -> float | None:
        """When the current outage began, or None while the storage answers."""
        return self._reconnect["outage"].since

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        r = state.pop("_reconnect")
        state["_reconnect_settings"] = (r["timeout"], r["outage"].what)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        timeout, what = state.pop("_reconnect_settings")
        self._reconnect = {"timeout": timeout, "depth": threading.local(), "outage": _Outage(what)}
        super().__setstate__(state)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ReconnectingStorage, *args: Any, **kwargs: Any) -> Any:
        r = self._reconnect
        depth = getattr(r["depth"], "n", 0)
        if depth:
            return method(self, *args, **kwargs)
        r["depth"].n = 1
        try:
            return retry_connection(lambda: method(self, *args, **kwargs), what=r["outage"].what,
                                    timeout=r["timeout"], state=r["outage"])
        finally:
            r["depth"].n = 0

    return call


# Every public storage method, the ones Optuna's base class declares and RDBStorage's own.
for _name in sorted({n for n in dir(BaseStorage) if not n.startswith("_")} |
                    {n for n, v in vars(RDBStorage).items() if not n.startswith("_") and callable(v)}):
    if callable(getattr(RDBStorage, _name, None)) and not isinstance(vars(RDBStorage).get(_name), staticmethod):
        setattr(ReconnectingStorage, _name, _retrying(_name))
del _name

"""The sweep's journal file: Optuna's journal storage, made to survive torn writes and dead lock holders.

Optuna's file journal appends one JSON record per line. Two things go wrong
on real machines:

- A process killed in the middle of an append leaves a *torn* last line
  (no newline, incomplete JSON). Optuna skips it while reading, but the next
  append is written onto it, and from then on every read fails with a JSON
  parser's message. Here every append first checks that the file ends with a
  newline; a torn tail is cut off, kept in a side file
  (``trials.journal.torn-<byte offset>``) and reported, the way a database
  recovers the torn tail of its write-ahead log. Opening the store does the
  same check, so the user hears about it at once.
- Optuna's default lock is a symlink that a killed process leaves behind; a
  relative one dangles, and every writer then waits forever. Here the lock is
  ``flock`` on a side file: the kernel releases it when its holder dies, so no
  lock can outlive its process.

A record that is not valid JSON *before* the last line is real corruption
(not a torn write): reading refuses it with the byte offset and the command
that cuts the journal there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from .errors import StorageFull

LOCK_SUFFIX = ".flock"
_FULL = (errno.ENOSPC, errno.EDQUOT)


class JournalRepairWarning(UserWarning):
    """A torn record was cut off a journal (what and where is in the message)."""


class JournalCorrupt(ValueError):
    """A journal record before the last one is not valid: the message names the byte offset."""


class FlockLock:
    """An exclusive ``flock`` on ``<journal>.flock``; released by the kernel when its holder dies."""

    def __init__(self, journal: str) -> None:
        self.path = journal + LOCK_SUFFIX
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def repair_tail(path: str) -> dict[str, Any] | None:
    """Cut a torn last record off the journal at ``path`` (call with the lock held).

    Returns what was done (``offset``, ``bytes``, ``side_file``), or None when the file ends cleanly.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        # Find the start of the last line: read backwards in blocks.
        end = size
        start = 0
        block = 1 << 16
        pos = size
        while pos > 0:
            read_from = max(0, pos - block)
            fh.seek(read_from)
            chunk = fh.read(pos - read_from)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                start = read_from + nl + 1
                break
            pos = read_from
        fh.seek(start)
        torn = fh.read(end - start)
        side: str | None = f"{path}.torn-{start}"
        try:
            with open(side, "ab") as out:
                out.write(torn)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            # A full disk: the record is incomplete and can never be read, so cut it anyway; the copy is a courtesy.
            with contextlib.suppress(OSError):
                os.unlink(side)
            side = None
        fh.truncate(start)
        fh.flush()
        os.fsync(fh.fileno())
    return {"offset": start, "bytes": len(torn), "side_file": side}


def side_file_note(done: dict[str, Any]) -> str:
    side = done.get("side_file")
    return f"kept in {side}" if side else "not kept (no space left for a copy)"


def find_corruption(path: str) -> tuple[int, int] | None:
    """(byte offset, line number) of the first complete line that is not valid JSON, or None."""
    offset = 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if line.endswith(b"\n"):
                try:
                    json.loads(line)
                except ValueError:
                    return offset, number
            offset += len(line)
    return None


def corrupt_message(path: str, offset: int, line: int) -> str:
    return (f"the journal {path} is corrupt at byte {offset} (record {line}), before its last record: this is "
            f"not a torn write. To keep the {line - 1} records before it and drop the rest (a copy is kept), run: "
            f"proxytune repair {Path(path).parent} --cut-at {offset}")


class SafeJournalBackend(JournalFileBackend):
    """Optuna's journal file with the flock lock, torn-tail repair before each append, and a clear error for a
    corrupt record."""

    def __init__(self, path: str) -> None:
        super().__init__(path, lock_obj=FlockLock(path))  # type: ignore[arg-type] - acquire/release is all it needs
        self.path = path
        self.repairs: list[dict[str, Any]] = []

    def repair(self) -> dict[str, Any] | None:
        """Cut a torn tail now (taking the lock); returns what was done (the caller reports it)."""
        self._lock.acquire()
        try:
            done = repair_tail(self.path)
        finally:
            self._lock.release()
        if done:
            self.repairs.append(done)
        return done

    def _report(self, done: dict[str, Any]) -> None:
        self.repairs.append(done)
        warnings.warn(f"journal {self.path}: dropped 1 incomplete record at byte {done['offset']} "
                      f"({done['bytes']} bytes: a write cut short by a crash), {side_file_note(done)}",
                      JournalRepairWarning, stacklevel=2)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._lock.acquire()
        try:
            done = repair_tail(self.path)
            data = "\n".join(json.dumps(x, separators=(",", ":")) for x in logs) + "\n"
            _append(self.path, data.encode("utf-8"))
        finally:
            self._lock.release()
        if done:
            self._report(done)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except (ValueError, json.JSONDecodeError):
            found = find_corruption(self.path)
            if found is None:
                raise
            raise JournalCorrupt(corrupt_message(self.path, *found)) from None


def _append(path: str, data: bytes) -> None:
    """Append ``data`` durably. On a full disk, take back what was written (the journal keeps ending on a whole
    record) and raise :class:`StorageFull`. Unbuffered, so nothing is left to be flushed (and fail) at close."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    before = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, before)
        folder = Path(path).parent
        run = str(folder) if (folder / "sweep.yaml").is_file() else "RUN_DIR"
        raise StorageFull(f"no space left on the device of {path} ({exc.strerror}); every finished trial is kept: "
                          f"free some space, then run proxytune resume {run}") from None
    finally:
        os.close(fd)


def remove_legacy_lock(path: str) -> bool:
    """Remove Optuna's symlink lock (``<journal>.lock``) left by a killed process: proxytune does not use it, and
    Optuna writers would wait on it forever when it dangles. Returns True when one was removed."""
    lock = path + ".lock"
    if os.path.islink(lock):
        try:
            os.unlink(lock)
        except OSError:
            return False
        warnings.warn(f"removed a stale lock {lock} (left by a process that was killed while writing)",
                      JournalRepairWarning, stacklevel=2)
        return True
    return False


def cut_journal(path: str, offset: int) -> dict[str, Any]:
    """``proxytune repair --cut-at``: keep the journal's bytes before ``offset`` (a record boundary), move the
    rest to a side file."""
    lock = FlockLock(path)
    lock.acquire()
    try:
        size = os.path.getsize(path)
        if not 0 <= offset <= size:
            raise ValueError(f"--cut-at {offset} is outside the journal (0 .. {size} bytes)")
        with open(path, "rb+") as fh:
            if offset > 0:
                fh.seek(offset - 1)
                if fh.read(1) != b"\n":
                    raise ValueError(f"byte {offset} is not the start of a record; use the offset the error gave")
            fh.seek(offset)
            rest = fh.read()
            side = f"{path}.cut-{offset}"
            with open(side, "wb") as out:
                out.write(rest)
                out.flush()
                os.fsync(out.fileno())
            fh.truncate(offset)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        lock.release()
    return {"offset": offset, "bytes": len(rest), "side_file": side}

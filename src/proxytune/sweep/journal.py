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

Nothing is cut before the file is known to be a journal: its first line must
be a journal record (a JSON object with an ``op_code``, what Optuna writes
first), so a database or text file given as ``storage:`` by mistake is refused
untouched. No repair ever cuts at byte 0 (that would move the whole file
aside, keeping nothing).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

# JournalCorrupt, JournalRepairWarning, NotAJournal: re-exported for one release; import from proxytune.sweep.errors
from .errors import JournalCorrupt, JournalRepairWarning, NotAJournal, StorageFull

LOCK_SUFFIX = ".flock"
JOURNAL_NAME = "trials.journal"  # the sweep's own journal in its run folder
SQLITE_MAGIC = b"SQLite format 3\x00"
_RECORD_START = b'{"op_code"'  # how Optuna's records begin (json.dumps of a dict whose first key is op_code)
_FIRST_LINE_MAX = 1 << 20  # a first record (creating a study) is short; a longer "line" is not a journal's
_FULL = (errno.ENOSPC, errno.EDQUOT)
_URL_FORMS = "sqlite:///path/to/file.db, postgresql://user@host/db"


class FlockLock:
    """An exclusive ``flock`` on ``<journal>.flock``; released by the kernel when its holder dies.

    Re-entrant for the thread that holds it, so opening a sweep can hold it around Optuna calls that append
    (and take it again). Other threads of this process wait on a mutex first: they would share the fd.
    """

    def __init__(self, journal: str) -> None:
        self.path = journal + LOCK_SUFFIX
        self._fd: int | None = None
        self._owner: int | None = None
        self._depth = 0
        self._mutex = threading.Lock()

    def acquire(self) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        self._mutex.acquire()
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                fd = os.open(self.path, os.O_RDONLY)  # a read-only lock file (a copied run folder) locks as well
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._mutex.release()
            raise
        self._fd, self._owner, self._depth = fd, me, 1
        return True

    def release(self) -> None:
        if self._fd is None or self._owner != threading.get_ident():
            return
        self._depth -= 1
        if self._depth:
            return
        fd, self._fd, self._owner = self._fd, None, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        finally:
            self._mutex.release()


def _first_line(path: str) -> tuple[int, bytes]:
    """(file size, its first line, newline included when there is one; at most _FIRST_LINE_MAX bytes)."""
    with open(path, "rb") as fh:
        return os.fstat(fh.fileno()).st_size, fh.readline(_FIRST_LINE_MAX)


def _is_record(line: bytes, *, strict: bool = True) -> bool:
    """A whole journal record: a JSON object on one line (``strict``: with Optuna's ``op_code``)."""
    if not line.endswith(b"\n"):
        return False
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return isinstance(rec, dict) and ("op_code" in rec or not strict)


def _torn_first(path: str, size: int) -> str:
    return (f"the journal {path} holds only an incomplete first record ({size} bytes, a first write cut short), so "
            f"no trials; nothing was changed: delete it to start the sweep afresh")


def not_a_journal(path: str, head: bytes) -> str:
    """The one-line refusal for an existing file at ``path`` (beginning with ``head``) that is not a journal."""
    if head.startswith(SQLITE_MAGIC):
        return (f"storage {path} is a SQLite database, not a proxytune journal; nothing was written to it. To keep "
                f"the sweep in this database, write storage: sqlite:///{os.path.abspath(path)}")
    return (f"storage {path} is not a proxytune journal (its first line is not a journal record); nothing was "
            f"written to it. Give a path for a new journal file, or a database URL ({_URL_FORMS})")


def journal_problem(path: str) -> tuple[str, str | None]:
    """What the file at ``path`` is, reading only: ``(kind, refusal)``.

    kind: ``missing``, ``journal``, ``empty`` (one proxytune made: the sweep's own ``trials.journal``, or one with
    its ``.flock`` beside it, left so by a first start that was interrupted), ``torn-first`` (only an incomplete
    first record: a first write cut short, or being written right now) or ``foreign``. refusal: the one-line
    message when it must not be used as a journal, else None (``torn-first`` has one too: callers that hold the
    lock decide).
    """
    try:
        size, line = _first_line(path)
    except FileNotFoundError:
        return "missing", None
    if size == 0:
        if os.path.basename(path) == JOURNAL_NAME or os.path.exists(path + LOCK_SUFFIX):
            return "empty", None
        return "foreign", (f"storage {path} is an empty file that proxytune did not create; nothing was written to "
                           f"it. Give a path for a new journal file (proxytune creates it), or a database URL "
                           f"({_URL_FORMS})")
    if _is_record(line):
        return "journal", None
    if not line.endswith(b"\n") and len(line) == size and (line.startswith(_RECORD_START)
                                                             or _RECORD_START.startswith(line)):
        return "torn-first", _torn_first(path, size)
    return "foreign", not_a_journal(path, line)


def repair_tail(path: str) -> dict[str, Any] | None:
    """Cut a torn last record off the journal at ``path`` (call with the lock held).

    Returns what was done (``offset``, ``bytes``, ``side_file``), or None when the file ends cleanly. Raises
    :class:`NotAJournal`, changing nothing, when the cut would keep no record (it starts at byte 0) or the first
    line is not a record.
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
        if start == 0:  # cutting here would keep nothing: not a torn tail but a file with no record in it
            fh.seek(0)
            head = fh.read(_FIRST_LINE_MAX)
            looks_ours = head.startswith(_RECORD_START) or _RECORD_START.startswith(head)
            raise NotAJournal(_torn_first(path, size) if looks_ours else not_a_journal(path, head))
        fh.seek(0)
        first = fh.readline(_FIRST_LINE_MAX)
        if not _is_record(first, strict=False):  # lines, but not JSON records: not a journal, leave it whole
            raise NotAJournal(not_a_journal(path, first))
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
    if offset == 0:  # a cut here would keep nothing: never offer it
        return (f"the journal {path} is corrupt at byte 0 (its first record): no record before it can be kept, so "
                f"proxytune cannot repair it; restore it from a copy, or run the sweep under a new name or storage")
    return (f"the journal {path} is corrupt at byte {offset} (record {line}), before its last record: this is "
            f"not a torn write. To keep the {line - 1} records before it and drop the rest (a copy is kept), run: "
            f"proxytune repair {Path(path).parent} --cut-at {offset}")


class SafeJournalBackend(JournalFileBackend):
    """Optuna's journal file with the flock lock, torn-tail repair before each append, and a clear error for a
    corrupt record."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            # The lock file first: an empty journal with its .flock beside it is known to be proxytune's own
            # (an interrupted first start), an empty file without one is not.
            os.close(os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644))
        super().__init__(path, lock_obj=FlockLock(path))  # type: ignore[arg-type] - acquire/release is all it needs
        self.path = path
        self.repairs: list[dict[str, Any]] = []

    @property
    def lock(self) -> FlockLock:
        return self._lock  # type: ignore[return-value] - set in __init__

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
    rest to a side file. Never at byte 0 (that keeps nothing), never in a file that is not a journal."""
    kind, refusal = journal_problem(path)
    if kind == "missing":
        raise ValueError(f"there is no journal at {path}")
    if kind != "journal":
        raise NotAJournal(refusal or f"the journal {path} is empty: there is nothing to repair")
    if offset == 0:
        raise NotAJournal(f"--cut-at 0 would move the whole journal {path} aside and keep no record; nothing was "
                          "changed. Give the offset of a later record, or run the sweep under a new name")
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

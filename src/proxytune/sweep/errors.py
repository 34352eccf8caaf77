"""Every error (and warning) of ``sweep/``, at the bottom of the package, importing none of it: a sweep file that
cannot be used; the storage errors that stop a sweep (not one trial), after which the sweep is resumable once
they are fixed; a journal that cannot be used; a program trial that failed or was stopped; a tracker that could
not log."""

from __future__ import annotations

import optuna


class SweepConfigError(ValueError):
    """A sweep file that cannot be used; the message names the key."""


class StorageError(RuntimeError):
    """The sweep's storage cannot be used right now; every finished trial is kept, ``proxytune resume`` goes on."""


class StorageUnavailable(StorageError):
    """The sweep's database stayed unreachable for longer than ``executor.reconnect_timeout``."""


class StorageFull(StorageError):
    """The sweep's journal could not be written: the disk (or the user's quota) is full."""


class RepeatedFailure(RuntimeError):
    """Trials of a sweep kept failing with the same error (``Sweep.run(stop_after_failures=N)``): the sweep stopped
    instead of spending its budget on a cause that does not go away. The message names the error."""


class DataChanged(StorageError):
    """The sweep's data file is not the one its stored trials trained on (its content hash differs, or it
    changed while a trial ran): mixing them would compare runs on different data. The message names the file,
    both hashes and what to do."""


class JournalRepairWarning(UserWarning):
    """A torn record was cut off a journal (what and where is in the message)."""


class JournalCorrupt(ValueError):
    """A journal record before the last one is not valid: the message names the byte offset."""


class NotAJournal(ValueError):
    """The file is not a journal proxytune may write to or repair (the one-line message says why and what to do)."""


class StopRequested(BaseException):
    """SIGTERM/SIGINT reached a worker: give the claimed trials back and exit (a BaseException, like
    KeyboardInterrupt, so a user's ``except Exception`` does not turn a stop into a failed trial)."""


class ProgramError(Exception):
    """A program trial that failed; the message is what the store keeps."""


class ProgramTimeout(BaseException):
    """A function trial ran past ``program.timeout`` (a BaseException so ``except Exception`` in user code
    does not swallow it)."""


class TrialPruned(optuna.TrialPruned):
    """Raised by :meth:`Trial.report` when the sweep's pruner stops this trial; let it propagate."""


class TrackingWarning(UserWarning):
    """A tracker could not log (the sweep goes on; the trials are tried again later)."""

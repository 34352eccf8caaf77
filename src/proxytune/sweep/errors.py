"""Errors of a sweep's storage that stop the sweep (not one trial): the sweep is resumable once they are fixed."""

from __future__ import annotations


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

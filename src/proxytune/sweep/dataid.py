"""The data a sweep trains on is part of the sweep.

When a sweep (with the built-in trainer) first starts, the resolved path of its data file and the content hash
of the corpus (:attr:`Corpus.sha256`) are stored with it. Every later start compares them: a file whose content
changed is refused, naming the file and both hashes, unless the caller accepts the change explicitly. Workers
check the file before each batch of trials (a cheap ``stat``, a re-hash only when it moved) and after it: a
trial during which the file changed fails instead of completing on a mix of two corpora. A program sweep reads
its own data; proxytune does not know its files.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..train.setup import _load_data_cached, load_data
from .errors import DataChanged
from .fields import DATA_NAMES, base_config
from .schema import SweepConfig

#: the study attribute that holds the data's identity
DATA_ATTR = "proxytune_data"

Stamp = tuple[tuple[str, int, int, int], ...]


def data_files(cfg: SweepConfig) -> list[Path]:
    """The files a built-in-trainer sweep reads (none for 'stdlib', 'teacher' and program sweeps)."""
    if cfg.program is not None or cfg.data in DATA_NAMES:
        return []
    files = [Path(cfg.data)]
    val = cfg.data_options.get("val_path")
    if isinstance(val, str) and val:
        files.append(Path(val))
    return files


def stamp(files: list[Path]) -> Stamp:
    """Size, modification time and inode of each file: what changes when a file is rewritten or replaced."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((str(f), st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((str(f), -1, -1, -1))
    return tuple(out)


def fingerprint(cfg: SweepConfig, fresh: bool = False) -> dict[str, Any]:
    """``{"data": source, "val_path": ..., "sha256": ...}`` of the sweep's data as it is now. ``fresh``: read the
    files again rather than use this process's cached corpus."""
    if fresh:
        _load_data_cached.cache_clear()
    data = load_data(base_config(cfg))
    return {"data": cfg.data, "val_path": cfg.data_options.get("val_path"),
            "sha256": getattr(data, "sha256", None)}


_WHAT_TO_DO = ("restore the file, give the sweep a new name, or accept the change explicitly (proxytune resume/sweep "
               "--accept-data-change, or Sweep(cfg, accept_data_change=True)) to mix trials on both")


def changed_message(cfg: SweepConfig, stored: dict[str, Any], now: dict[str, Any] | None, reason: str = "") -> str:
    then = str(stored.get("sha256"))[:16]
    current = f"{str(now.get('sha256'))[:16]}… now" if now is not None else f"unreadable now ({reason})"
    return (f"data {cfg.data!r} is not what sweep {cfg.name!r} trained on: sha256 {then}… when it started, "
            f"{current}; {_WHAT_TO_DO}")


def check_sweep_data(store: Any, cfg: SweepConfig, accept_change: bool = False) -> None:
    """Record the data's identity with a new sweep; refuse to go on with a sweep whose data changed (raises
    :class:`DataChanged`) unless ``accept_change``, which records the new identity and keeps the old in
    ``proxytune_data_history``."""
    if cfg.program is not None:
        return
    now = fingerprint(cfg)
    attrs = store.study.user_attrs
    stored = attrs.get(DATA_ATTR)
    if stored is None:
        store.study.set_user_attr(DATA_ATTR, now)
        return
    if stored.get("sha256") == now["sha256"]:
        if stored != now:  # same content under another path (a moved file): follow it
            store.study.set_user_attr(DATA_ATTR, now)
        return
    if not accept_change:
        raise DataChanged(changed_message(cfg, stored, now))
    history = list(attrs.get(DATA_ATTR + "_history", [])) + [{**stored, "replaced_at": time.time()}]
    store.study.set_user_attr(DATA_ATTR + "_history", history)
    store.study.set_user_attr(DATA_ATTR, now)
    warnings.warn(f"sweep {cfg.name!r}: its data changed (sha256 {str(stored.get('sha256'))[:16]}… to "
                  f"{str(now['sha256'])[:16]}…); accepted: its trials from before and after train on different data",
                  stacklevel=2)


class DataWatch:
    """A worker's check that the data file is the sweep's: :meth:`verify` before each batch of trials (raises
    :class:`DataChanged`), :meth:`changed_since` after it (the reason to fail its trials, or None)."""

    def __init__(self, cfg: SweepConfig, store: Any) -> None:
        self.cfg = cfg
        self.files = data_files(cfg)
        self.expected = store.study.user_attrs.get(DATA_ATTR) if self.files else None
        self.verified: Stamp | None = None

    def verify(self) -> Stamp:
        """The files' stamp now, checked: when it moved since the last check, the data is read again and its
        hash compared with the sweep's."""
        if not self.files or self.expected is None:
            return ()
        now = stamp(self.files)
        if now == self.verified:
            return now
        try:
            current = fingerprint(self.cfg, fresh=True)
        except Exception as exc:  # noqa: BLE001 - a file removed or cut short: name it
            raise DataChanged(changed_message(self.cfg, self.expected, None, " ".join(str(exc).split()))) from None
        if current["sha256"] != self.expected.get("sha256"):
            raise DataChanged(changed_message(self.cfg, self.expected, current))
        if stamp(self.files) == now:  # not moved while being hashed (else it is read again next time)
            self.verified = now
        return now

    def changed_since(self, before: Stamp) -> str | None:
        if not self.files or self.expected is None or stamp(self.files) == before:
            return None
        return (f"the data file {self.cfg.data!r} changed while this trial ran; its result mixes two versions of "
                "the data and is not kept")

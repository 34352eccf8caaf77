"""Token corpora for the language-model proxies.

The built-in corpus, ``"stdlib"``, is the source code of the Python standard
library read as bytes: a byte-level LM corpus every Python install has, so the
demo and the benchmarks need no network and no download. It is about 12 MB of
real, structured text (code, docstrings, comments), enough to separate good
hyperparameters from bad ones on small proxies.

Your own data comes in as a text file (:func:`load_text`, raw bytes, vocab 256)
or as a nanoGPT-style ``.bin`` file of token ids (:func:`load_tokens`), which is
memory-mapped, never read into RAM as a whole.

Every corpus carries a ``sha256`` of its token content so a run record says
exactly which data it was trained and evaluated on.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["Corpus", "DataError", "load", "load_stdlib", "load_text", "load_tokens"]

_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_FILE_SEP = b"\n\n"
_CHUNK = 1 << 24  # elements per chunk when scanning a token file


class DataError(ValueError):
    """Data that cannot be loaded or sampled, with the facts needed to fix it."""


@dataclass(frozen=True, eq=False)
class Corpus:
    """A 1-D stream of token ids split into train and val.

    ``train`` and ``val`` keep the storage dtype (``uint8`` for bytes, the file's
    dtype for token files, memory-mapped); only sampled windows become int64.
    ``train_files``/``val_files`` list the source files (stdlib corpus only).
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    name: str
    kind: str  # "stdlib" | "text" | "tokens"
    sha256: str
    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    task: ClassVar[str] = "lm"

    def info(self) -> dict[str, Any]:
        """JSON-ready description for run records."""
        return {"name": self.name, "kind": self.kind, "task": self.task, "vocab_size": self.vocab_size,
                "n_train": len(self.train), "n_val": len(self.val), "sha256": self.sha256, **self.extra}

    def check(self, seq_len: int) -> None:
        """Raise :class:`DataError` unless both splits hold a window of ``seq_len + 1`` tokens."""
        for split in ("train", "val"):
            self._split(split, seq_len)

    def sample(self, split: str, batch_size: int, seq_len: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows: ``x`` (B, T) int64 and next-token targets ``y``."""
        data = self._split(split, seq_len)
        _check_positive(batch_size=batch_size)
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
        return _windows(data, starts, seq_len)

    def val_batches(self, n_batches: int, batch_size: int,
                    seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of validation batches: evenly spaced windows over the val split.

        The same for every call with the same arguments, so all runs are
        evaluated on identical data. Windows overlap if the split is short.
        """
        data = self._split("val", seq_len)
        _check_positive(n_batches=n_batches, batch_size=batch_size)
        starts = torch.linspace(0, len(data) - seq_len - 1, n_batches * batch_size).round().long()
        return [_windows(data, s, seq_len) for s in starts.split(batch_size)]

    def _split(self, split: str, seq_len: int) -> torch.Tensor:
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        _check_positive(seq_len=seq_len)
        data = self.train if split == "train" else self.val
        if len(data) < seq_len + 1:
            raise DataError(
                f"corpus {self.name!r}: the {split} split has {len(data)} tokens, but seq_len={seq_len} "
                f"needs at least {seq_len + 1} tokens in each split; use a shorter seq_len or more data")
        return data


def _windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len)
    return data[idx].long(), data[idx + 1].long()


def _check_positive(**values: int) -> None:
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"{key} must be a positive integer, got {v!r}")


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction!r}")


# ---------------------------------------------------------------- stdlib corpus

def _stdlib_files() -> tuple[Path, list[str]]:
    """Root and sorted POSIX relative paths of the stdlib's non-test ``.py`` files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        rel = Path(dirpath).relative_to(root)
        files += [(rel / f).as_posix() for f in filenames if f.endswith(".py") and not f.startswith("test_")]
    if not files:
        raise DataError(f"no .py files found under the stdlib directory {str(root)!r}")
    return root, sorted(files)


@functools.lru_cache(maxsize=4)
def _read_stdlib(val_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...], bytes, bytes]:
    root, files = _stdlib_files()
    # File i goes to val when floor((i+1) f) > floor(i f): round(n f) files spread evenly.
    is_val = [int((i + 1) * val_fraction) > int(i * val_fraction) for i in range(len(files))]
    train = tuple(f for f, v in zip(files, is_val) if not v)
    val = tuple(f for f, v in zip(files, is_val) if v)
    if not train or not val:
        raise DataError(f"val_fraction={val_fraction} leaves an empty split of {len(files)} stdlib files")

    def read(names: tuple[str, ...]) -> bytes:
        return _FILE_SEP.join((root / f).read_bytes() for f in names)

    return train, val, read(train), read(val)


def load_stdlib(val_fraction: float = 0.05, max_bytes: int | None = None) -> Corpus:
    """Byte-level corpus of the Python standard library's own ``.py`` sources.

    Files are those under ``sysconfig.get_paths()["stdlib"]``, sorted by POSIX
    relative path, without test code (any directory named ``test``, ``tests``
    or ``idle_test``, files named ``test_*.py``), ``site-packages`` or
    ``__pycache__``. Files are joined with ``b"\\n\\n"``. Validation holds whole
    files, every ``1/val_fraction``-th file of the sorted list (file ``i`` when
    ``floor((i+1)*val_fraction) > floor(i*val_fraction)``), so both splits cover
    the whole library. ``max_bytes`` truncates the train split (for tests).

    Building takes about half a second; the result is cached in-process.
    The content depends on the Python version, which ``info()`` reports.
    """
    _check_fraction(val_fraction)
    if max_bytes is not None:
        _check_positive(max_bytes=max_bytes)
    return _build_stdlib(float(val_fraction), max_bytes)


@functools.lru_cache(maxsize=8)
def _build_stdlib(val_fraction: float, max_bytes: int | None) -> Corpus:
    train_files, val_files, train, val = _read_stdlib(val_fraction)
    train = train[:max_bytes]
    return Corpus(
        train=_bytes_tensor(train), val=_bytes_tensor(val), vocab_size=256, name="stdlib", kind="stdlib",
        sha256=hashlib.sha256(train + val).hexdigest(), train_files=train_files, val_files=val_files,
        extra={"python_version": platform.python_version(), "n_files": len(train_files) + len(val_files),
               "n_val_files": len(val_files)})


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


# ---------------------------------------------------------------- user files

def _existing(path: str | os.PathLike[str], expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"no such file: {str(p)!r} (expected {expected})")
    return p


def _memmap(path: Path, dtype: type[np.unsignedinteger]) -> np.memmap:
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size == 0:
        raise DataError(f"{str(path)!r} is empty")
    if size % itemsize:
        raise DataError(f"{str(path)!r} has {size} bytes, not a multiple of {itemsize} "
                        f"({np.dtype(dtype).name}); is the dtype right?")
    return np.memmap(path, dtype=dtype, mode="r")


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of a (read-only) memory map; never write to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _scan(arrays: list[np.ndarray]) -> tuple[str, int]:
    """sha256 of the concatenated contents and the max token id, chunk by chunk."""
    h, top = hashlib.sha256(), 0
    for arr in arrays:
        for i in range(0, len(arr), _CHUNK):
            chunk = np.ascontiguousarray(arr[i:i + _CHUNK])
            h.update(chunk)
            top = max(top, int(chunk.max()))
    return h.hexdigest(), top


def _tail_split(arr: np.ndarray, val_fraction: float, path: Path) -> tuple[np.ndarray, np.ndarray]:
    _check_fraction(val_fraction)
    n_val = max(1, int(len(arr) * val_fraction))
    if n_val >= len(arr):
        raise DataError(f"{str(path)!r} has {len(arr)} tokens, too few to split into train and val")
    return arr[:-n_val], arr[-n_val:]


def load_text(path: str | os.PathLike[str], val_fraction: float = 0.05) -> Corpus:
    """Byte-level corpus (vocab 256) of any file; val is the last ``val_fraction`` of bytes."""
    p = _existing(path, "a text file, read as raw bytes")
    train, val = _tail_split(_memmap(p, np.uint8), val_fraction, p)
    sha, _ = _scan([train, val])
    return Corpus(train=_as_tensor(train), val=_as_tensor(val), vocab_size=256, name=str(p),
                  kind="text", sha256=sha)


def load_tokens(path: str | os.PathLike[str], vocab_size: int, dtype: str = "uint16",
                val_path: str | os.PathLike[str] | None = None, val_fraction: float = 0.05) -> Corpus:
    """Memory-mapped token ids in nanoGPT's ``.bin`` layout (a flat array, no header).

    ``val_path`` is a separate file for the val split; without it val is the
    last ``val_fraction`` of tokens. The files are scanned once, in chunks, to
    hash them and to check every id is below ``vocab_size``.
    """
    try:
        key = np.dtype(dtype).name
    except TypeError:
        key = repr(dtype)
    if key not in _DTYPES:
        raise DataError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    np_dtype = _DTYPES[key]
    if vocab_size is None:
        raise DataError(f"a token file needs vocab_size (the tokenizer's vocabulary size): {str(path)!r}")
    _check_positive(vocab_size=vocab_size)
    if vocab_size - 1 > np.iinfo(np_dtype).max:
        raise DataError(f"vocab_size={vocab_size} does not fit in {key}; use dtype='uint32'")
    expected = f"a flat array of {key} token ids (nanoGPT .bin layout)"
    p = _existing(path, expected)
    if val_path is None:
        train, val = _tail_split(_memmap(p, np_dtype), val_fraction, p)
    else:
        train, val = _memmap(p, np_dtype), _memmap(_existing(val_path, expected), np_dtype)
    sha, top = _scan([train, val])
    if top >= vocab_size:
        where = str(p) if val_path is None else f"{p} / {val_path}"
        raise DataError(f"{where!r} holds token id {top} (max id found) but vocab_size={vocab_size}; "
                        f"ids must be < vocab_size (wrong vocab_size or dtype?)")
    return Corpus(train=_as_tensor(train), val=_as_tensor(val), vocab_size=vocab_size, name=str(p),
                  kind="tokens", sha256=sha,
                  extra={"dtype": key, "val_path": None if val_path is None else str(val_path)})


def load(source: str | os.PathLike[str], *, vocab_size: int | None = None, dtype: str = "uint16",
         val_path: str | os.PathLike[str] | None = None, val_fraction: float = 0.05,
         max_bytes: int | None = None) -> Corpus:
    """Load a corpus by name or path.

    ``"stdlib"`` gives :func:`load_stdlib`; a path ending in ``.bin`` gives
    :func:`load_tokens` (needs ``vocab_size``); any other existing file gives
    :func:`load_text`. Options a source does not use raise :class:`DataError`.
    """
    src = os.fspath(source)
    is_bin = src.endswith(".bin")
    if not is_bin and vocab_size not in (None, 256):
        raise DataError(f"{src!r} is read as bytes (vocab 256); vocab_size={vocab_size} applies to .bin files")
    if not is_bin and val_path is not None:
        raise DataError(f"val_path applies to .bin token files, not {src!r}")
    if src != "stdlib" and max_bytes is not None:
        raise DataError("max_bytes applies to the 'stdlib' corpus only")
    if src == "stdlib":
        return load_stdlib(val_fraction=val_fraction, max_bytes=max_bytes)
    if is_bin:
        return load_tokens(src, vocab_size, dtype=dtype, val_path=val_path,  # type: ignore[arg-type]
                           val_fraction=val_fraction)
    if not Path(src).expanduser().is_file():
        raise DataError(f"unknown data source {src!r}: not 'stdlib' and no such file "
                        f"(expected 'stdlib', a .bin token file, or a text file)")
    return load_text(src, val_fraction=val_fraction)

"""Synthetic vector data from a fixed random teacher network (MLP proxy, fast tests).

Inputs are Gaussian, ``x ~ N(0, I)``; targets come from a random two-layer
tanh network fixed by ``seed``: the argmax class (classification) or the
outputs plus Gaussian noise (regression). The API mirrors
:class:`~proxytune.data.corpus.Corpus` so a trainer calls both the same way.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from .corpus import DataError, _check_positive

__all__ = ["TeacherTask"]

_VAL_SEED_OFFSET = 2**40  # the val set's generator never shares a stream with a trainer's seed


class TeacherTask:
    """A fixed random teacher ``y = W2 tanh(W1 x + b1) + b2`` with a held-out val set.

    ``task`` is ``kind``; ``vocab_size`` is None. ``sample`` and ``val_batches``
    take ``split``/``seq_len`` like a corpus does and ignore ``seq_len``.
    """

    vocab_size: None = None

    def __init__(self, d_in: int = 16, d_out: int = 4, kind: str = "classification", seed: int = 0,
                 n_val: int = 1024, width: int = 64, noise: float = 0.1,
                 shape: list[int] | tuple[int, ...] | None = None) -> None:
        if shape is not None:
            # inputs shaped like images (C, H, W) for a vision model: the same Gaussian vectors, reshaped
            if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(n, int) and n > 0 for n in shape):
                raise DataError(f"shape must be a list of positive integers, e.g. [3, 16, 16]; got {shape!r}")
            d_in = math.prod(shape)
        self.shape = tuple(shape) if shape is not None else None
        if kind not in ("classification", "regression"):
            raise DataError(f"kind must be 'classification' or 'regression', got {kind!r}")
        _check_positive(d_in=d_in, d_out=d_out, n_val=n_val, width=width)
        if kind == "classification" and d_out < 2:
            raise DataError(f"classification needs d_out >= 2 classes, got {d_out}")
        self.d_in, self.d_out, self.kind, self.seed = d_in, d_out, kind, seed
        self.n_val, self.width, self.noise = n_val, width, noise
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(d_in, width, generator=g) / math.sqrt(d_in)
        self.b1 = 0.1 * torch.randn(width, generator=g)
        self.w2 = torch.randn(width, d_out, generator=g) / math.sqrt(width)
        self.b2 = 0.1 * torch.randn(d_out, generator=g)
        h = hashlib.sha256(f"{kind}:{noise if kind == 'regression' else 0.0!r}".encode())
        for t in (self.w1, self.b1, self.w2, self.b2):
            h.update(t.numpy().tobytes())
        if self.shape is not None:
            h.update(repr(self.shape).encode())
        self.sha256 = h.hexdigest()
        self._val = self._draw(n_val, torch.Generator().manual_seed(seed + _VAL_SEED_OFFSET))

    @property
    def task(self) -> str:
        return self.kind

    @property
    def name(self) -> str:
        return "teacher"

    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's real-valued outputs for inputs ``x`` of shape (N, d_in)."""
        return torch.tanh(x @ self.w1 + self.b1) @ self.w2 + self.b2

    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.d_in, generator=generator)
        out = self.teacher(x)
        if self.shape is not None:
            x = x.reshape(n, *self.shape)
        if self.kind == "classification":
            return x, out.argmax(dim=1)
        return x, out + self.noise * torch.randn(out.shape, generator=generator)

    def sample(self, split: str, batch_size: int, seq_len: int | None,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh examples: ``x`` (B, d_in) float32 (or (B, *shape)), ``y`` (B,) int64 or (B, d_out) float32."""
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        _check_positive(batch_size=batch_size)
        return self._draw(batch_size, generator)

    def val_batches(self, n_batches: int, batch_size: int,
                    seq_len: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches of the fixed val set (``n_val`` examples), the same every call."""
        _check_positive(n_batches=n_batches, batch_size=batch_size)
        if n_batches * batch_size > self.n_val:
            raise DataError(f"{n_batches} val batches of {batch_size} need {n_batches * batch_size} examples, "
                            f"but the teacher's val set has n_val={self.n_val}; pass a larger n_val")
        x, y = self._val
        return [(x[i:i + batch_size], y[i:i + batch_size])
                for i in range(0, n_batches * batch_size, batch_size)]

    def info(self) -> dict[str, Any]:
        """JSON-ready description for run records."""
        return {"name": self.name, "kind": self.kind, "task": self.task, "d_in": self.d_in,
                "d_out": self.d_out, "width": self.width, "noise": self.noise, "seed": self.seed,
                "n_val": self.n_val, "vocab_size": None, "sha256": self.sha256,
                **({"shape": list(self.shape)} if self.shape is not None else {})}

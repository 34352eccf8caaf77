"""A user's own training loop, swept by proxytune through ``program: {function: mytrain:run}``.

Nothing here uses proxytune's trainer: the model, the data pipeline, the loop
and the evaluation are this file's own. proxytune adds three calls:
``trial.parameterize`` (the sweep's recipe at this width), ``trial.report``
(the curve, and the pruner's input) and the returned loss.

The model is a small character-level language model: the embeddings of the
last ``CONTEXT`` bytes are concatenated, mixed by ``depth`` residual MLP
blocks of width ``width``, and read out to 256 byte logits. The text is the
source of a few standard-library modules, so the example runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CONTEXT = 4
VOCAB = 256


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class ByteMLP(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(CONTEXT * width, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:  # ctx: (batch, CONTEXT) byte ids
        h = self.mix(self.embed(ctx).flatten(1))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def build(width: int, depth: int, device: str | None = None) -> ByteMLP:
    with torch.device(device or "cpu"):
        return ByteMLP(width, depth)


def load_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation bytes: the source of a few standard-library modules."""
    text = b"".join(Path(m.__file__).read_bytes() for m in (json.decoder, textwrap, argparse))
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def batch(data: torch.Tensor, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, len(data) - CONTEXT - 1, (size,), generator=gen)
    ctx = torch.stack([data[i:i + CONTEXT] for i in idx.tolist()])
    return ctx, data[idx + CONTEXT]


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, batches: int = 4, size: int = 256) -> float:
    gen = torch.Generator().manual_seed(1234)  # the same validation batches every time
    losses = [F.cross_entropy(model(x), y).item() for x, y in (batch(data, size, gen) for _ in range(batches))]
    return sum(losses) / len(losses)


def train(width: int, depth: int, lr: float, *, steps: int = 60, batch_size: int = 32, seed: int = 0,
          weight_decay: float = 0.0, base: tuple[int, int] | None = None, trial=None) -> float:  # noqa: ANN001
    """The training loop; with a ``trial`` (a proxytune sweep) it is parameterized and reports its curve."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_data, val_data = load_bytes()
    model = build(width, depth)
    if trial is not None:
        base_model = build(trial.base_width or width, trial.base_depth or depth, device="meta")
        plan = trial.parameterize(model, base=base_model)  # the sweep's recipe and optimizer at this width
        opt = plan.optimizer(lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    eval_every = max(1, steps // 3)
    val = math.inf
    for step in range(1, steps + 1):
        x, y = batch(train_data, batch_size, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            val = evaluate(model, val_data)
            if not math.isfinite(val):
                break
            if trial is not None:
                trial.report(step, val, train_loss=loss.item())  # raises TrialPruned when the pruner says stop
    if trial is not None:
        trial.set(tokens=steps * batch_size)
    return val


def run(trial) -> float:  # noqa: ANN001 - a proxytune.Trial
    """The sweep's entry point: ``program: {function: mytrain:run}``."""
    p = trial.params
    return train(trial.width, trial.depth, p["lr"], steps=int(p.get("steps", 60)),
                 batch_size=int(p.get("batch_size", 32)), seed=trial.seed,
                 weight_decay=p.get("weight_decay", 0.0), trial=trial)

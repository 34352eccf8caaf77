"""B2c: folded and explicit training under gradient clipping, far from the base.

The reference GPT at width 128 (base 32) and depth 16 (base 2) under CompleteP with AdamW, on the built-in
corpus, trained by proxytune's trainer three ways with the same seeds and batches:

- ``explicit``: multipliers in the forward pass, clipped by the global norm of its gradients (the reference);
- ``folded``: the default mode, clipped by ``plan.clip_grad_norm_`` (the norm in the explicit form's units);
- ``folded, torch clip``: the default mode clipped by ``torch.nn.utils.clip_grad_norm_`` on its own gradients
  (what proxytune did before, and what user code that clips with torch does).

Per row and max norm: the final training loss (mean of 2 seeds, both listed), the step-0 gradient norm the
clip sees, and the share of steps that clipped. Without clipping folded and explicit must agree as well.

    python bench/fold_clip.py            # 25 steps, max norms none, 1.0, 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Iterator

import torch
from _common import emit, provenance

from proxytune.plan import Plan
from proxytune.train import TrainConfig, train


@contextlib.contextmanager
def watched_clip(norms: list[float], use_torch: bool) -> Iterator[None]:
    """Record the pre-clip norm of every clip; with ``use_torch`` clip the model's raw gradients instead."""
    original = Plan.clip_grad_norm_

    def clip(self: Plan, model: torch.nn.Module, max_norm: float, **kw: object) -> torch.Tensor:
        if use_torch:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        else:
            norm = original(self, model, max_norm, **kw)
        norms.append(float(norm))
        return norm

    Plan.clip_grad_norm_ = clip  # type: ignore[method-assign]
    try:
        yield
    finally:
        Plan.clip_grad_norm_ = original  # type: ignore[method-assign]


ROWS = {"explicit": ("explicit", False), "folded": ("folded", False), "folded, torch clip": ("folded", True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--clips", type=float, nargs="*", default=[0.0, 1.0, 0.5], help="max norms (0: no clipping)")
    ap.add_argument("--lr", type=float, default=2**-7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    common = dict(model="gpt", data="stdlib", recipe="completep", optimizer="adamw", width=128, base_width=32,
                  depth=16, base_depth=2, steps=args.steps, batch_size=16, seq_len=64, lr=args.lr, warmup=0.1,
                  schedule="cosine", betas=(0.9, 0.95), eval_every=args.steps, eval_batches=4, threads=1)
    lines = [
        provenance("fold_clip.py", "cpu", 1),
        f"Reference GPT width 128 (base 32), depth 16 (base 2), CompleteP, AdamW, lr 2^{torch.log2(torch.tensor(args.lr)).item():.0f}, "
        f"{args.steps} steps, batch 16 x 64, built-in corpus; seeds {args.seeds}; training loss at the last step "
        "(mean of the seeds, each seed in brackets).",
        "",
        "| max norm | row | final train loss (seeds) | step-0 norm the clip sees | steps clipped | vs explicit |",
        "|---|---|---|---|---|---|",
    ]
    for clip in args.clips:
        ref = None
        for row, (mode, use_torch) in ROWS.items():
            if clip == 0 and use_torch:
                continue
            losses, first, clipped, total = [], [], 0, 0
            for seed in args.seeds:
                norms: list[float] = []
                with watched_clip(norms, use_torch):
                    res = train(TrainConfig(**common, mode=mode, seed=seed, grad_clip=clip or None))
                losses.append(res.train_losses[-1])
                if norms:
                    first.append(norms[0])
                    clipped += sum(n > clip for n in norms)
                    total += len(norms)
            mean = sum(losses) / len(losses)
            ref = mean if row == "explicit" else ref
            lines.append(f"| {clip or 'none'} | {row} | {mean:.4f} ({', '.join(f'{x:.4f}' for x in losses)}) | "
                         + (f"{sum(first) / len(first):.2f}" if first else "-") + " | "
                         + (f"{clipped / total:.0%}" if total else "-") + " | "
                         + ("-" if row == "explicit" else f"{mean - ref:+.1e}") + " |")
            print(lines[-1], flush=True)
    lines += ["", f"Took {(time.perf_counter() - t0) / 60:.1f} min."]
    emit(lines, "B2c. Folded and explicit training under gradient clipping (CPU)", not args.no_write)


if __name__ == "__main__":
    main()

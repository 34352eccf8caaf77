"""B3 overhead: training-step time of a small GPT, plain PyTorch vs proxytune.

Copies of the same model train on the same batches: plain PyTorch
(AdamW, one param group), proxytune ``folded`` (multipliers absorbed, per-tensor
settings merged into groups), proxytune ``explicit`` (multipliers in the
forward pass) and ``u-mup`` (u-muP: forward and backward scales as
parametrizations and hooks, the normalized residual add). ``--compile`` runs
every variant under ``torch.compile``. Steps are timed in interleaved rounds (the order rotates every
round) and each variant's median step time is divided by plain's, so machine
noise hits all three alike.

    python bench/overhead.py                 # CPU preset, prints and updates BENCHMARKS.md
    python bench/overhead.py --no-write      # print only
    python bench/overhead.py --compile       # the same under torch.compile (section B3b)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import proxytune as pt
from _common import ROOT, write_section
from proxytune.models import gpt



def make(variant: str, args) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = gpt.build(width=args.width, depth=args.depth, n_heads=args.heads, head_dim=None,
                      seq_len=args.seq, device=args.device)
    if variant.startswith("plain"):
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    base = gpt.build(width=args.base_width, depth=args.base_depth, n_heads=args.heads, head_dim=None,
                     seq_len=args.seq, device="meta")
    if variant == "u-mup":
        plan = pt.parameterize(model, base, recipe="u-mup", optimizer="adamw")
    else:
        plan = pt.parameterize(model, base, recipe="completep", optimizer="adamw", mode=variant)
    return model, plan.optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))


def step(model, opt, idx) -> None:
    logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=64)
    ap.add_argument("--base-depth", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile every variant")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # "plain (A/A)" is a second plain copy: its ratio is the noise floor of the run.
    variants = ["plain", "plain (A/A)", "folded", "explicit", "u-mup"]
    runs = {v: make(v, args) for v in variants}
    if args.compile:
        runs = {v: (torch.compile(m), o) for v, (m, o) in runs.items()}
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (args.batch, args.seq + 1), generator=g).to(args.device) for _ in range(8)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for v in variants:  # warm up (and compile)
        for i in range(3):
            step(*runs[v], data[i])
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        for v in order:
            sync()
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(*runs[v], data[(r + i) % len(data)])
            sync()
            times[v].append((time.perf_counter() - t0) / args.steps)
    med = {v: statistics.median(times[v]) for v in variants}
    ratio = {v: med[v] / med["plain"] for v in variants}
    machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}), {args.threads} threads"
               if args.device == "cpu" else torch.cuda.get_device_name())
    cmd = "python bench/overhead.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{cmd.strip()}`; machine: {machine}; torch {torch.__version__}; "
        f"date: {datetime.date.today().isoformat()}.",
        f"Model: reference GPT width {args.width}, depth {args.depth}, {args.heads} heads, seq {args.seq}, "
        f"batch {args.batch}; proxytune plan: completep + adamw from base {args.base_width}x{args.base_depth} "
        f"(folded, explicit), u-mup + adamw (u-mup); {'torch.compile, ' if args.compile else 'eager, '}"
        f"median of {args.rounds} interleaved rounds x {args.steps} steps.",
        "",
        "| variant | step time / plain PyTorch |",
        "|---|---|",
    ] + [f"| {v} | {ratio[v]:.3f}x |" for v in variants] + [
        "",
        f"Optimizer param groups: plain 1, proxytune {runs['folded'][1].param_groups.__len__()} "
        "(per-tensor settings, tensors with equal settings merged).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        title = ("B3b. Overhead, compiled" if args.compile else "B3. Overhead") + (
            " (GPU)" if args.device != "cpu" else " (CPU)")
        write_section(ROOT / "BENCHMARKS.md", title, text)


if __name__ == "__main__":
    main()

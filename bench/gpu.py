"""One command for a GPU: the benchmarks that only mean something on an accelerator, within a time budget.

Parts, cheapest or most valuable first (each is skipped, with its reason printed and recorded, when the time
left in ``--budget-s`` cannot hold it):

1. ``b3_eager``: B3 step overhead in bf16 autocast, eager: the median step time of plain PyTorch, a second
   plain copy (the A/A noise floor), proxytune ``folded``, ``explicit`` and ``u-mup``, interleaved rounds as
   in ``bench/overhead.py`` (its models, its default shape), each divided by plain's.
2. ``fp8``: u-muP with real fp8 matmuls. (a) One matmul at a few transformer shapes, bf16 against fp8 e4m3
   through ``torch._scaled_mm`` (the matmul alone, then with the dynamic per-tensor scaling and casts of both
   inputs counted). (b) A short u-muP run where every ``nn.Linear`` runs forward and backward through
   ``torch._scaled_mm`` (inputs and weights e4m3, output gradients e5m2), against the same run in bf16: final
   validation loss and step time, with per-tensor dynamic scales (amax) and with u-muP's unit scale (scale 1
   for activations and gradients, the claim that they are unit-scaled). Needs CUDA with compute capability
   8.9 or more (Ada, Hopper); anywhere else the part is recorded as skipped with the reason.
3. ``b4``: B4 batched trials: ``proxytune.train.train`` one trial at a time against ``train_batched`` on
   groups of K trials, in trials per hour, at two widths. Goal on a GPU: at least 5x at K = 16 (small
   proxies leave most of the chip idle), judged only when measured on a GPU.
4. ``b3_compiled``: part 1 under ``torch.compile`` (inductor on the GPU; in ``--smoke`` the ``eager`` backend,
   which traces with dynamo but needs no C++ compiler and compiles in seconds).
5. ``b1``: a mini B1: SP, muP and muP with the constants ``proxytune tune`` found in the CPU run of B1
   (BENCHMARKS.md, "B1. Width transfer (CPU)"), at widths 256 .. 2048, a few learning rates, one seed. Each
   (width, row) is one ``train_batched`` group; widths in the outer loop, so a cut run still compares every
   row at the widths it reached.

Every ratio is measured within this one process. The figures go to a JSON file rewritten (temp file, then
rename) after every part and after every group inside the long parts, so a run that is cut still leaves
results; each part's entry carries its machine, torch version and date. The markdown section is printed at
the end; ``--write`` puts it into BENCHMARKS.md.

    python bench/gpu.py                      # CUDA: the GPU preset, about 8 minutes, bench/results/gpu.json
    python bench/gpu.py --write              # ... and put the section into BENCHMARKS.md
    python bench/gpu.py --smoke              # CPU, tiny sizes, seconds (run by tests/test_bench_gpu.py)
    python bench/gpu.py --budget-s 300 --out /tmp/gpu.json

The budget clock starts when the script's ``main`` starts (after Python and torch are imported). Part
estimates of the GPU preset are guesses made without a GPU: the long parts also check the clock between
their groups.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import ROOT, machine, provenance, write_section
from b1_rows import train_fields
from overhead import make
from throughput import timed
from torch import nn

from proxytune.train import TrainConfig, train, train_batched
from proxytune.train.loop import evaluate, val_batches
from proxytune.train.schedule import lr_factor
from proxytune.train.setup import optimizer_kwargs, prepare, to_device

TITLE = "B9. GPU run"
PARTS = ("b3_eager", "fp8", "b4", "b3_compiled", "b1")
LABELS = {"b3_eager": "B3 step overhead, eager, bf16 autocast",
          "fp8": "u-muP: real fp8 matmuls (torch._scaled_mm) against bf16",
          "b4": "B4 batched trials: trials per hour",
          "b3_compiled": "B3 step overhead, torch.compile, bf16 autocast",
          "b1": "Mini B1: SP vs muP vs the CPU-tuned constants"}
VARIANTS = ["plain", "plain (A/A)", "folded", "explicit", "u-mup"]
# The constants `proxytune tune` found at width 32 in the CPU run of B1 (BENCHMARKS.md, "B1. Width transfer (CPU)",
# 2026-12-03): recipe mup, base width 32, base log2 lr -5.99.
TUNED = {"role_init": {"hidden": 0.23682158313918247, "readout": 6.853851299797583, "embedding": 0.41746960920683407},
         "role_lr": {"embedding": 2.1262168005150546, "readout": 1.788861409212526, "vector": 1.6693345617227735},
         "attn_mult": 2.3917159465956646}
B1_ROWS = {"sp": ("sp", {}), "mup": ("mup", {}), "tuned": ("mup", TUNED)}
B1_LABELS = {"sp": "SP, one global LR", "mup": "muP, one global LR",
             "tuned": "muP + CPU-tuned constants"}
B4_GOAL = (16, 5.0)  # at least 5x the trials per hour of one trial at a time, at K = 16, on a GPU

PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {
        "device": "cuda", "threads": 4, "precision": "bf16",
        "b3": {"width": 256, "depth": 4, "heads": 4, "base_width": 64, "base_depth": 2, "seq": 128, "batch": 16,
               "rounds": 10, "steps": 5, "backend": "inductor"},
        "fp8": {"shapes": [(8192, 1024, 1024), (8192, 4096, 4096), (8192, 4096, 16384)], "reps": 50,
                "run": {"width": 1024, "depth": 4, "base_width": 256, "steps": 200, "batch_size": 32,
                        "seq_len": 256, "lr": 1.0}},
        "b4": {"widths": [256, 1024], "ks": [1, 4, 16, 32], "sequential": 4, "steps": 200, "batch_size": 32,
               "seq_len": 64},
        "b1": {"widths": [256, 512, 1024, 2048], "base_width": 32, "steps": 300, "batch_size": 16, "seq_len": 64,
               "grids": {"sp": [-14.0, -12.0, -10.0], "mup": [-10.0, -8.0, -6.0], "tuned": [-6.99, -5.99, -4.99]},
               "first_group_s": 20},
        "estimate_s": {"b3_eager": 20, "fp8": 40, "b4": 120, "b3_compiled": 120, "b1": 40},
    },
    "smoke": {
        "device": "cpu", "threads": 1, "precision": "fp32",
        "b3": {"width": 16, "depth": 1, "heads": 1, "base_width": 16, "base_depth": 1, "seq": 16, "batch": 2,
               "rounds": 3, "steps": 2, "backend": "eager"},
        "fp8": {"shapes": [(64, 32, 32)], "reps": 2,
                "run": {"width": 32, "depth": 1, "base_width": 16, "steps": 3, "batch_size": 2, "seq_len": 16,
                        "lr": 1.0}},
        "b4": {"widths": [16, 32], "ks": [1, 2], "sequential": 2, "steps": 3, "batch_size": 2, "seq_len": 16},
        "b1": {"widths": [16, 32], "base_width": 16, "steps": 3, "batch_size": 2, "seq_len": 16,
               "grids": {"sp": [-10.0, -8.0], "mup": [-9.0, -7.0], "tuned": [-6.99, -5.99]}, "first_group_s": 1},
        "estimate_s": {"b3_eager": 3, "fp8": 1, "b4": 8, "b3_compiled": 6, "b1": 10},
    },
}


# ----------------------------------------------------------------------------------------------- the run record
@dataclass
class Part:
    """What a part measured: ``figures`` for the JSON, ``lines`` for the markdown section, and its ``status``
    (``done``; ``partial`` when the budget cut some of it; ``skipped`` with a ``reason``)."""

    figures: dict[str, Any]
    lines: list[str]
    status: str = "done"
    reason: str = ""


@dataclass
class Run:
    """The state of one run of this script: where it measures, its budget clock and its JSON record."""

    preset: str
    device: str
    threads: int
    budget_s: float
    out: Path
    start: float = field(default_factory=time.perf_counter)
    data: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        """Seconds of the budget left."""
        return self.budget_s - self.elapsed()

    def fits(self, need_s: float) -> bool:
        """Whether ``need_s`` more seconds fit in the budget."""
        return self.remaining() >= need_s

    def no_time(self, need_s: float) -> str:
        """The reason a piece of work that needs about ``need_s`` seconds is skipped."""
        return (f"skipped: {max(self.remaining(), 0):.0f} s of the {self.budget_s:g} s budget left, it needs "
                f"about {need_s:.0f} s")

    def log(self, msg: str) -> None:
        """One progress line, stamped with the seconds since the start."""
        print(f"[{self.elapsed():6.1f} s] {msg}", flush=True)

    def stamp(self) -> dict[str, str]:
        """Machine, torch version and date, carried by every part's figures."""
        return {"machine": machine(self.device, self.threads), "torch": torch.__version__,
                "date": datetime.datetime.now().isoformat(timespec="seconds")}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        """Put part ``name``'s entry into the record and rewrite the JSON file."""
        self.data.setdefault("parts", {})[name] = {**entry, **self.stamp()}
        self.save()

    def save(self) -> None:
        """Write the record atomically: a temp file in the same folder, then a rename."""
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.out.name, suffix=".tmp", dir=self.out.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(clean(self.data), f, indent=1)
        os.replace(tmp, self.out)


def clean(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON), tuples as lists, keys as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def finite(x: float) -> bool:
    """Whether ``x`` is a finite number."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    """Drop what a finished part left behind, so the next one starts with the device's memory free."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------ B3
def bf16_step(model: nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor, device_type: str) -> None:
    """One training step as ``bench/overhead.py`` times it, with the forward pass under bf16 autocast."""
    with torch.autocast(device_type, dtype=torch.bfloat16):
        logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def median_step_times(runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]], data: list[torch.Tensor],
                      rounds: int, steps: int, device: str) -> dict[str, float]:
    """Median seconds per step of each variant over ``rounds`` interleaved rounds of ``steps`` steps; the order
    rotates every round so drifts of the machine hit every variant alike."""
    names = list(runs)
    dtype = torch.device(device).type
    times: dict[str, list[float]] = {v: [] for v in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                bf16_step(*runs[v], data[(r + i) % len(data)], dtype)
            sync(device)
            times[v].append((time.perf_counter() - t0) / steps)
    return {v: statistics.median(t) for v, t in times.items()}


def part_b3(run: Run, p: dict[str, Any], compiled: bool) -> Part:
    """B3: step time of proxytune's variants over plain PyTorch's, bf16 autocast, eager or compiled."""
    c = p["b3"]
    args = types.SimpleNamespace(width=c["width"], depth=c["depth"], heads=c["heads"], base_width=c["base_width"],
                                 base_depth=c["base_depth"], seq=c["seq"], device=run.device)
    runs = {v: make(v, args) for v in VARIANTS}
    if compiled:
        runs = {v: (torch.compile(m, backend=c["backend"]), o) for v, (m, o) in runs.items()}
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (c["batch"], c["seq"] + 1), generator=g).to(run.device) for _ in range(8)]
    dtype = torch.device(run.device).type
    for v in VARIANTS:  # warm up (and compile)
        for i in range(3):
            bf16_step(*runs[v], data[i], dtype)
        run.log(f"  {v}: warmed up" + (" (compiled)" if compiled else ""))
    med = median_step_times(runs, data, c["rounds"], c["steps"], run.device)
    ratio = {v: med[v] / med["plain"] for v in VARIANTS}
    how = f"torch.compile (backend {c['backend']})" if compiled else "eager"
    lines = [f"Reference GPT width {c['width']}, depth {c['depth']}, {c['heads']} head{'s' * (c['heads'] > 1)}, seq "
             f"{c['seq']}, batch {c['batch']}, bf16 autocast, {how}; proxytune plan completep + adamw from base "
             f"{c['base_width']}x"
             f"{c['base_depth']} (folded, explicit), u-mup + adamw; median of {c['rounds']} interleaved rounds x "
             f"{c['steps']} steps.", "",
             "| variant | step time (ms) | / plain PyTorch |", "|---|---|---|"]
    lines += [f"| {v} | {1e3 * med[v]:.2f} | {ratio[v]:.3f}x |" for v in VARIANTS]
    figures = {"mode": how, "model": c, "step_ms": {v: 1e3 * t for v, t in med.items()}, "ratio": ratio}
    return Part(figures, lines)


# ------------------------------------------------------------------------------------------------------------ fp8
def fp8_unavailable(device: str) -> str:
    """Why real fp8 matmuls cannot be measured here ('' when they can)."""
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return (f"no CUDA device (this run is on {device}): fp8 matmuls are timed on an NVIDIA GPU with compute "
                "capability 8.9 or more")
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        return f"{torch.cuda.get_device_name()} has compute capability {cap[0]}.{cap[1]}; fp8 matmuls need 8.9"
    return ""


def to_fp8(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x / scale`` cast to the fp8 ``dtype`` (saturating at its maximum) and ``scale``, a float32 scalar:
    given (u-muP's unit scale: 1), or ``amax(|x|) / max of the format`` (dynamic per-tensor scaling)."""
    fmax = torch.finfo(dtype).max
    if scale is None:
        scale = (x.detach().abs().amax().float() / fmax).clamp(min=1e-12)
    return (x.float() / scale).clamp(-fmax, fmax).to(dtype), scale


def scaled_mm(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """``(sa a) @ (sb b)`` for fp8 ``a`` (row-major) and ``b`` (column-major), in ``out_dtype``."""
    return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)


def column_major(x: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column by column (what ``torch._scaled_mm`` wants for its second operand)."""
    return x.t().contiguous().t()


class FP8Linear(torch.autograd.Function):
    """``x @ w.T`` with every matmul in fp8 through ``torch._scaled_mm``: x and w in e4m3, the output's gradient
    in e5m2 (the usual formats); ``unit`` scales x and the gradient by 1 (u-muP: they are unit-scaled) instead
    of by their amax. ``x`` is 2-D; the weight is always scaled by its amax (a parametrized weight carries the
    parametrization's forward scale, e.g. u-muP's 1 / sqrt(fan-in), so it is not unit-scaled)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, unit: bool, out_dtype: torch.dtype) -> torch.Tensor:
        one = torch.ones((), device=x.device) if unit else None
        xq, sx = to_fp8(x, torch.float8_e4m3fn, one)
        wq, sw = to_fp8(w, torch.float8_e4m3fn)
        ctx.save_for_backward(xq, sx, wq, sw)
        ctx.unit, ctx.dtypes = unit, (x.dtype, w.dtype)
        return scaled_mm(xq, wq.t(), sx, sw, out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        xq, sx, wq, sw = ctx.saved_tensors
        gq, sg = to_fp8(grad, torch.float8_e5m2, torch.ones((), device=grad.device) if ctx.unit else None)
        grad_x = scaled_mm(gq, column_major(wq), sg, sw, torch.float32)
        grad_w = scaled_mm(gq.t().contiguous(), column_major(xq), sg, sx, torch.float32)
        return grad_x.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None, None


def _fp8_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A patched ``nn.Linear.forward``: fp8 matmuls when the token count allows (a multiple of 16)."""
    rows = x.numel() // x.shape[-1]
    if rows % 16:
        return F.linear(x, self.weight)
    dev = x.device.type
    out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    y = FP8Linear.apply(x.reshape(rows, x.shape[-1]), self.weight, self._bench_fp8_unit, out_dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def use_fp8_linears(model: nn.Module, unit: bool) -> int:
    """Make every bias-free ``nn.Linear`` of ``model`` whose sizes are multiples of 16 run through
    :class:`FP8Linear`; returns how many were switched."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is None and m.in_features % 16 == 0 and m.out_features % 16 == 0:
            m._bench_fp8_unit = unit
            m.forward = types.MethodType(_fp8_forward, m)
            n += 1
    return n


def time_matmuls(shape: tuple[int, int, int], reps: int, device: str) -> dict[str, float]:
    """TFLOP/s of one (m x k) @ (k x n) matmul: bf16, fp8 e4m3 (``_scaled_mm`` alone) and fp8 with the dynamic
    scaling and casts of both bf16 inputs counted; speed-ups over bf16."""
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, k, device=device, dtype=torch.bfloat16)
    aq, sa = to_fp8(a, torch.float8_e4m3fn)
    bq, sb = to_fp8(b, torch.float8_e4m3fn)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "bf16": lambda: a @ b.t(),
        "fp8": lambda: scaled_mm(aq, bq.t(), sa, sb, torch.bfloat16),
        "fp8_cast": lambda: scaled_mm(*_pair(a, b), torch.bfloat16)}
    out = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        _, t = timed(lambda: [fn() for _ in range(reps)])  # noqa: B023
        out[f"{name}_tflops"] = 2 * m * k * n * reps / t / 1e12
    out["speedup"] = out["fp8_tflops"] / out["bf16_tflops"]
    out["speedup_cast"] = out["fp8_cast_tflops"] / out["bf16_tflops"]
    return out


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``a`` and ``b.T`` cast to e4m3 with dynamic scales, in ``scaled_mm``'s argument order."""
    aq, sa = to_fp8(a, torch.float8_e4m3fn)
    bq, sb = to_fp8(b, torch.float8_e4m3fn)
    return aq, bq.t(), sa, sb


def short_run(cfg: TrainConfig, fp8: str | None) -> dict[str, float]:
    """Train ``cfg`` (bf16 autocast) with proxytune's loop, minus its bookkeeping, so the linear layers can be
    switched to fp8 (``fp8``: ``dynamic`` or ``unit`` scaling; None: bf16): final validation loss, ms per step
    (the steps after the first 5), and how many layers ran in fp8."""
    prep = prepare(cfg)
    n_fp8 = use_fp8_linears(prep.model, unit=fp8 == "unit") if fp8 else 0
    opt = prep.plan.optimizer(cfg.lr, cfg.weight_decay, model=prep.model, eps=cfg.eps, **optimizer_kwargs(cfg))
    peak = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.batch_seed)
    dev = str(prep.device)
    t0, timed_steps = time.perf_counter(), cfg.steps
    for step in range(cfg.steps):
        if step == min(5, cfg.steps - 1):
            sync(dev)
            t0, timed_steps = time.perf_counter(), cfg.steps - step
        factor = lr_factor(step, cfg.steps, cfg.schedule, cfg.warmup_steps, cfg.final_lr_frac, cfg.cooldown)
        for g, lr in zip(opt.param_groups, peak):
            g["lr"] = lr * factor
        x, y = to_device(prep.data.sample("train", cfg.batch_size, cfg.seq_len, gen), prep)
        with torch.autocast(prep.device.type, dtype=torch.bfloat16):
            loss = prep.loss(prep.model, x, y)
        loss.backward()
        if cfg.grad_clip is not None:
            prep.plan.clip_grad_norm_(prep.model, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(dev)
    ms = 1e3 * (time.perf_counter() - t0) / timed_steps
    return {"val_loss": evaluate(prep, val_batches(prep)), "ms_per_step": ms, "fp8_layers": n_fp8,
            "train_loss": float(loss.detach())}


def part_fp8(run: Run, p: dict[str, Any]) -> Part:
    """u-muP with real fp8 matmuls against bf16: matmul throughput, then a short training run."""
    why = fp8_unavailable(run.device)
    if why:
        return Part({}, [f"skipped: {why}."], status="skipped", reason=why)
    c = p["fp8"]
    mats = [{"m": s[0], "k": s[1], "n": s[2], **time_matmuls(s, c["reps"], run.device)} for s in c["shapes"]]
    run.record("fp8", {"status": "running", "figures": {"matmul": mats}})
    r = c["run"]
    cfg = TrainConfig(model="gpt", recipe="u-mup", optimizer="adamw", width=r["width"], depth=r["depth"],
                      base_width=r["base_width"], base_depth=r["depth"], steps=r["steps"], batch_size=r["batch_size"],
                      seq_len=r["seq_len"], lr=r["lr"], warmup=0.1, schedule="cosine", eval_every=r["steps"],
                      eval_batches=8, precision="bf16", device=run.device, threads=run.threads, seed=0)
    runs = {}
    for name, mode in (("bf16", None), ("fp8-dynamic", "dynamic"), ("fp8-unit", "unit")):
        runs[name] = short_run(cfg, mode)
        run.log(f"  u-mup {name}: val loss {runs[name]['val_loss']:.4f}, {runs[name]['ms_per_step']:.1f} ms/step")
    lines = ["(a) One matmul (m x k) @ (k x n): bf16 against fp8 e4m3 through `torch._scaled_mm` (bf16 out); "
             "'with casts' adds the dynamic per-tensor scaling and casting of both bf16 inputs.", "",
             "| m x k x n | bf16 TFLOP/s | fp8 TFLOP/s | fp8 with casts | speed-up | speed-up with casts |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {x['m']} x {x['k']} x {x['n']} | {x['bf16_tflops']:.0f} | {x['fp8_tflops']:.0f} | "
              f"{x['fp8_cast_tflops']:.0f} | {x['speedup']:.2f}x | {x['speedup_cast']:.2f}x |" for x in mats]
    lines += ["", f"(b) u-muP GPT width {r['width']}, depth {r['depth']} (base {r['base_width']}), {r['steps']} steps, "
              f"batch {r['batch_size']} x {r['seq_len']}, AdamW, lr {r['lr']:g}, seed 0, bf16 autocast; fp8: every "
              f"bias-free linear layer ({runs['fp8-dynamic']['fp8_layers']}) forward and backward through "
              "`torch._scaled_mm` (e4m3; output gradients e5m2); 'dynamic': every tensor scaled by its amax; "
              "'unit': activations and gradients cast with scale 1 (u-muP's claim), weights by their amax.", "",
              "| run | final val loss | change vs bf16 | ms / step | / bf16 |", "|---|---|---|---|---|"]
    base = runs["bf16"]
    lines += [f"| {k} | {v['val_loss']:.4f} | {(v['val_loss'] - base['val_loss']) / base['val_loss']:+.2%} | "
              f"{v['ms_per_step']:.1f} | {v['ms_per_step'] / base['ms_per_step']:.2f}x |" for k, v in runs.items()]
    return Part({"matmul": mats, "run": runs, "config": r}, lines)


# ------------------------------------------------------------------------------------------------------------ B4
def b4_configs(width: int, n: int, p: dict[str, Any], run: Run) -> list[TrainConfig]:
    """``n`` trials at ``width``: muP (base 32), log2 lr cycling through -10 .. -7.25 in quarter octaves (below
    the edge of stability, so no trial stops early and one at a time is not flattered), seed i."""
    c = p["b4"]
    return [TrainConfig(model="gpt", width=width, depth=2, base_width=32, recipe="mup", optimizer="adamw",
                        lr=2.0 ** (-10 + 0.25 * (i % 12)), steps=c["steps"], batch_size=c["batch_size"],
                        seq_len=c["seq_len"], warmup=0.1, schedule="cosine", eval_every=c["steps"], eval_batches=4,
                        precision=p["precision"], device=run.device, threads=run.threads, seed=i)
            for i in range(n)]


def b4_width(run: Run, p: dict[str, Any], width: int) -> dict[str, Any]:
    """Trials per hour at ``width``: one at a time, then one group of each K; the speed-up over one at a time
    and the largest |val loss batched - val loss one at a time| over the trials both ran."""
    c = p["b4"]
    cfgs = b4_configs(width, max(c["ks"] + [c["sequential"]]), p, run)
    train(cfgs[0].model_copy(update={"steps": 3}))  # load the corpus, warm up the kernels
    train_batched([x.model_copy(update={"steps": 3}) for x in cfgs[:2]])
    n = c["sequential"]
    seq, t_seq = timed(lambda: [train(x) for x in cfgs[:n]])
    per_trial = t_seq / n
    out: dict[str, Any] = {"1": {"trials": n, "wall_s": t_seq, "trials_per_hour": 3600 / per_trial, "speedup": 1.0,
                                 "diverged": sum(r.status == "diverged" for r in seq)}}
    run.log(f"  width {width}: one at a time {per_trial:.2f} s per trial")
    for k in (k for k in c["ks"] if k > 1):
        need = k * per_trial  # batching should be faster: an upper bound
        if not run.fits(need):
            out[str(k)] = {"skipped": run.no_time(need)}
            continue
        bat, t = timed(lambda: train_batched(cfgs[:k]))  # noqa: B023
        both = [(a, b) for a, b in zip(seq, bat) if a.status == b.status == "complete"]
        out[str(k)] = {"trials": k, "wall_s": t, "trials_per_hour": 3600 * k / t, "speedup": per_trial * k / t,
                       "diverged": sum(r.status == "diverged" for r in bat),
                       "max_loss_diff": max((abs(a.final_val_loss - b.final_val_loss) for a, b in both),
                                            default=math.nan)}
        run.log(f"  width {width}: K={k} {t:.2f} s ({out[str(k)]['speedup']:.2f}x)")
    return out


def b4_goal(widths: dict[str, dict[str, Any]], device: str) -> tuple[dict[str, Any] | None, str]:
    """The goal (>= 5x at K = 16 over one trial at a time): judged only on a GPU, at every width measured."""
    k, target = B4_GOAL
    if not device.startswith("cuda"):
        return None, f"Goal of {target:g}x at K = {k}: judged on a GPU only (this run is on the CPU)."
    got = {w: r[str(k)]["speedup"] for w, r in widths.items() if "speedup" in r.get(str(k), {})}
    if not got:
        return None, f"Goal of {target:g}x at K = {k} (GPU): not measured (K = {k} did not run)."
    met = {w: s >= target for w, s in got.items()}
    text = ", ".join(f"width {w}: {s:.2f}x ({'met' if met[w] else 'not met'})" for w, s in got.items())
    return {"k": k, "target": target, "speedup": got, "met": met}, f"Goal of {target:g}x at K = {k} (GPU): {text}."


def part_b4(run: Run, p: dict[str, Any]) -> Part:
    """B4: trials per hour, one at a time against groups of K batched, at each width."""
    c = p["b4"]
    widths: dict[str, dict[str, Any]] = {}
    figures: dict[str, Any] = {"config": c, "widths": widths}
    status = "done"
    for i, width in enumerate(c["widths"]):
        need = p["estimate_s"]["b4"] / len(c["widths"])
        if i and not run.fits(need):
            widths[str(width)] = {"skipped": run.no_time(need)}
            status = "partial"
            continue
        widths[str(width)] = b4_width(run, p, width)
        run.record("b4", {"status": "running", "figures": figures})
    if any("skipped" in r for w in widths.values() for r in ([w] if "skipped" in w else w.values())):
        status = "partial"
    figures["goal"], goal_line = b4_goal(widths, run.device)
    lines = [f"Trials: reference GPT depth 2, muP (base 32) + AdamW, {c['steps']} steps, batch {c['batch_size']} x "
             f"{c['seq_len']}, {p['precision']}, log2 lr -10 .. -7.25 by quarter octaves, seed i; one at a time: "
             f"`train` on {c['sequential']} trials in a row; K: one `train_batched` group of K trials.", "",
             "| width | K | wall time (s) | trials / hour | vs one at a time | max loss diff | diverged |",
             "|---|---|---|---|---|---|---|"]
    for w, rows in widths.items():
        for k, r in [("all", rows)] if "skipped" in rows else rows.items():
            if "skipped" in r:
                lines.append(f"| {w} | {k} | {r['skipped']} | | | | |")
                continue
            diff = f"{r['max_loss_diff']:.1e}" if "max_loss_diff" in r else ""
            lines.append(f"| {w} | {'1 (one at a time)' if k == '1' else k} | {r['wall_s']:.1f} | "
                         f"{r['trials_per_hour']:.0f} | {r['speedup']:.2f}x | {diff} | {r['diverged']} |")
    lines += ["", goal_line]
    return Part(figures, lines, status)


# ------------------------------------------------------------------------------------------------------------ B1
def b1_group(run: Run, p: dict[str, Any], row: str, width: int) -> dict[str, Any]:
    """One (row, width) of the mini B1: the row's LR grid as one ``train_batched`` group; the loss at every LR
    and the best (``edge``: the best is an end of the grid)."""
    c = p["b1"]
    recipe, constants = B1_ROWS[row]
    fields = {**train_fields("cpu"), "steps": c["steps"], "batch_size": c["batch_size"], "seq_len": c["seq_len"],
              "eval_every": c["steps"], "model": "gpt", "data": "stdlib", "recipe": recipe, "optimizer": "adamw",
              "width": width, "base_width": c["base_width"], "base_depth": 2, "seed": 0, "device": run.device,
              "precision": p["precision"], "threads": run.threads, **constants}
    grid = c["grids"][row]
    results = train_batched([TrainConfig(**fields, lr=2.0 ** x) for x in grid])
    losses = [r.final_val_loss for r in results]
    ok = [i for i, v in enumerate(losses) if finite(v)]
    best = min(ok, key=lambda i: losses[i]) if ok else None
    return {"log2_lr": grid, "loss": losses, "best_log2_lr": grid[best] if best is not None else math.nan,
            "best_loss": losses[best] if best is not None else math.nan,
            "edge": best in (0, len(grid) - 1) if best is not None else False}


def part_b1(run: Run, p: dict[str, Any]) -> Part:
    """Mini B1: every row at every width, widths outermost; stops (and says so) when the budget runs out."""
    c = p["b1"]
    rows: dict[str, dict[str, Any]] = {row: {} for row in B1_ROWS}
    skipped: list[str] = []
    figures: dict[str, Any] = {"config": c, "rows": rows, "skipped": skipped}
    last: tuple[int, float] | None = None  # (width, seconds) of the last group
    for width in c["widths"]:
        for row in B1_ROWS:
            # a group costs about what the last one did, scaled by width (overhead-bound proxies grow slower)
            need = c["first_group_s"] if last is None else last[1] * width / last[0]
            if not run.fits(need):
                skipped.append(f"{row} at width {width}: {run.no_time(need)}")
                continue
            t0 = time.perf_counter()
            rows[row][str(width)] = b1_group(run, p, row, width)
            last = (width, time.perf_counter() - t0)
            g = rows[row][str(width)]
            run.log(f"  {row} width {width}: best log2 lr {g['best_log2_lr']:g}, loss {g['best_loss']:.4f} "
                    f"({last[1]:.1f} s)")
            run.record("b1", {"status": "running", "figures": figures})
    return Part(figures, b1_lines(c, rows, skipped), "partial" if skipped else "done")


def b1_lines(c: dict[str, Any], rows: dict[str, dict[str, Any]], skipped: list[str]) -> list[str]:
    """The mini B1's table: the loss at every LR of every (row, width), the best marked; then a comparison
    at the largest width every row reached."""
    lines = [f"Reference GPT depth 2, head dim 16, {c['steps']} steps, batch {c['batch_size']} x {c['seq_len']}, AdamW "
             f"(0.9, 0.95), warmup 10% + cosine to 10%, base width {c['base_width']} for muP, one seed; each "
             "(row, width) one `train_batched` group. Tuned constants: from the CPU run of B1 (base width 32; "
             "`proxytune tune`'s base log2 lr there: -5.99).", "",
             "| row | width | val loss at log2 lr | best log2 lr |", "|---|---|---|---|"]
    for row, by_width in rows.items():
        for w, g in by_width.items():
            cells = ", ".join(f"{x:g}: {v:.4f}" if finite(v) else f"{x:g}: diverged"
                              for x, v in zip(g["log2_lr"], g["loss"]))
            lines.append(f"| {B1_LABELS[row]} | {w} | {cells} | {g['best_log2_lr']:g}{'*' if g['edge'] else ''} |")
    common = [w for w in map(str, c["widths"]) if all(w in r for r in rows.values())]
    if common:
        w = common[-1]
        best = {row: rows[row][w]["best_loss"] for row in rows}
        sp = best["sp"]
        lines += ["", f"Best loss at width {w} (every row there): " + ", ".join(
            f"{B1_LABELS[r]} {v:.4f} ({(v - sp) / sp:+.2%} vs SP)" for r, v in best.items())
            + ". `*`: best at the end of its grid (the optimum may lie beyond)."]
    if skipped:
        lines += ["", "Not run (budget): " + "; ".join(skipped) + "."]
    return lines


# ------------------------------------------------------------------------------------------------------------ main
def run_part(run: Run, name: str, fn: Callable[[], Part], need_s: float) -> None:
    """Run one part when about ``need_s`` seconds fit the budget, record its figures (or why it was skipped
    or failed) and print its start and end."""
    if not run.fits(need_s):
        reason = run.no_time(need_s)
        run.log(f"{name}: {reason}")
        run.record(name, {"status": "skipped", "reason": reason})
        return
    run.log(f"{name}: start ({LABELS[name]})")
    t0 = time.perf_counter()
    try:
        part = fn()
    except Exception as e:  # a part that fails leaves the others' figures
        traceback.print_exc()
        run.record(name, {"status": "failed", "reason": f"{type(e).__name__}: {e}",
                          "elapsed_s": time.perf_counter() - t0})
        run.log(f"{name}: failed ({type(e).__name__}: {e})")
        return
    finally:
        free_memory(run.device)
    entry = {"status": part.status, "elapsed_s": time.perf_counter() - t0, "figures": part.figures,
             "lines": part.lines}
    run.record(name, {**entry, **({"reason": part.reason} if part.reason else {})})
    run.log(f"{name}: {part.status} in {time.perf_counter() - t0:.1f} s")


def section(run: Run) -> str:
    """The markdown section: provenance, then every part's lines (or why it has none)."""
    out = [provenance("gpu.py", run.device, run.threads)
           + f" Budget {run.budget_s:g} s; the whole run took {run.elapsed():.0f} s.", ""]
    for name in PARTS:
        e = run.data.get("parts", {}).get(name, {"status": "skipped", "reason": "not reached"})
        out.append(f"**{LABELS[name]}** ({e['status']}" + (f", {e['elapsed_s']:.0f} s" if "elapsed_s" in e else "")
                   + ")")
        out += e.get("lines") or [e.get("reason", "")]
        out.append("")
    return "\n".join(out).rstrip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, seconds: checks the script runs")
    ap.add_argument("--budget-s", type=float, default=440.0,
                    help="seconds the parts may take (default 440: with start-up and CUDA set-up, under 8 minutes)")
    ap.add_argument("--out", type=Path, help="the JSON file (default bench/results/gpu.json; --smoke: a temp file)")
    ap.add_argument("--write", action="store_true", help=f"put the section '{TITLE}' into BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.smoke and args.write:
        ap.error("--smoke never writes BENCHMARKS.md")
    if not args.smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: the GPU preset needs one (python bench/gpu.py --smoke checks the script on a CPU)")
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "proxytune-gpu-smoke.json" if args.smoke
                    else ROOT / "bench" / "results" / "gpu.json")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every part within the budget; 0 when none failed."""
    args = parse_args(argv)
    preset = "smoke" if args.smoke else "gpu"
    p = PRESETS[preset]
    torch.set_num_threads(p["threads"])
    run = Run(preset, p["device"], p["threads"], args.budget_s, args.out)
    run.data.update({"command": "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "preset": preset, "budget_s": args.budget_s, "python": sys.version.split()[0],
                     "status": "running", **run.stamp()})
    run.save()
    run.log(f"{preset} preset on {run.data['machine']}, budget {args.budget_s:g} s, figures to {args.out}")
    fns: dict[str, Callable[[], Part]] = {"b3_eager": lambda: part_b3(run, p, compiled=False),
                                          "fp8": lambda: part_fp8(run, p), "b4": lambda: part_b4(run, p),
                                          "b3_compiled": lambda: part_b3(run, p, compiled=True),
                                          "b1": lambda: part_b1(run, p)}
    for name in PARTS:
        run_part(run, name, fns[name], p["estimate_s"][name])
    run.data["status"] = "finished"
    run.save()
    text = section(run)
    print(text, flush=True)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", TITLE + " (GPU)", text)
    run.log(f"done: figures in {args.out}")
    return 1 if any(e["status"] == "failed" for e in run.data["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

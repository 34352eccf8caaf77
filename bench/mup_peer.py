"""The B1 peer row: muP through Microsoft's ``mup`` package (``MuReadout`` + ``MuAdamW``).

The reference GPT is built exactly as proxytune's trainer builds it (same
builder, options and seed), then used the way the ``mup`` README says: the
readout replaced by ``MuReadout`` (weights copied), ``set_base_shapes``
against the base width, the hidden matrices re-drawn with ``mup.init.normal_``
(std 0.02 at the base, shrinking as width^-1/2), and ``MuAdamW``. Data,
batch order, schedule, warmup, gradient clipping, evaluation and the
divergence rule are proxytune's own functions, so the row differs from the
proxytune muP row only in the parameterization code.

``mup`` is a benchmark peer, never a proxytune dependency. It pulls a CUDA
build of torch when installed with its dependencies, so install it alone:

    pip install --no-deps mup
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

import torch

from proxytune.analysis.optimum import optima_by_group
from proxytune.train import TrainConfig
from proxytune.train.loop import divergence_reason, evaluate, val_batches
from proxytune.train.result import final_train_loss
from proxytune.train.schedule import lr_factor
from proxytune.train.setup import (
    Prepared, build_models, flops_per_step, load_data, loss_function, resolve_device, to_device,
)


def _mup() -> Any:
    try:
        import mup
    except ImportError:
        raise SystemExit("the mup row needs Microsoft's mup package: pip install --no-deps mup") from None
    return mup


def build(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The target with mup's readout, base shapes and init; and its data."""
    mup = _mup()
    data = load_data(cfg)
    model, _ = build_models(cfg, data, device)  # proxytune's builder, options and seed; no plan applied
    base, _ = build_models(cfg.model_copy(update={"width": cfg.base_width, "seed": cfg.seed}), data, "cpu")
    for m in (model, base):
        old = m.lm_head
        head = mup.MuReadout(old.in_features, old.out_features, bias=False, device=old.weight.device)
        with torch.no_grad():
            head.weight.copy_(old.weight)
        m.lm_head = head
    mup.set_base_shapes(model, base.to("meta"), rescale_params=False)
    torch.manual_seed(cfg.seed + 17)
    for p in model.parameters():
        if p.infshape.ninf() == 2:  # hidden matrices: the width-scaled init of the mup README
            mup.init.normal_(p, std=0.02)
    return model, data


def train_mup(cfg: TrainConfig) -> dict[str, Any]:
    """One run; the same steps as proxytune.train.train, with mup's model and optimizer."""
    mup = _mup()
    torch.set_num_threads(cfg.threads or 1)
    device = resolve_device(cfg.device)
    model, data = build(cfg, device)
    prep = Prepared(cfg, model, None, data, loss_function("lm"), device, sum(p.numel() for p in model.parameters()))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    opt = mup.MuAdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    peak = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.batch_seed)
    vbatches = val_batches(prep)
    losses: list[float] = []
    status, flops = "complete", 0
    for step in range(cfg.steps):
        factor = lr_factor(step, cfg.steps, cfg.schedule, cfg.warmup_steps, cfg.final_lr_frac, cfg.cooldown)
        for g, lr in zip(opt.param_groups, peak):
            g["lr"] = lr * factor
        x, y = to_device(data.sample("train", cfg.batch_size, cfg.seq_len, gen), prep)
        if step == 0:
            flops = flops_per_step(model, prep.loss_fn, x, y)
        with autocast:
            loss = prep.loss_fn(model(x), y)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if divergence_reason(losses[-1], losses[0], cfg.diverge_factor):
            status = "diverged"
            break
    val = evaluate(prep, vbatches) if status == "complete" else math.inf
    if not math.isfinite(val):
        status = "diverged"
    return {"status": status, "val_loss": val if status == "complete" else math.inf,
            "train_loss": final_train_loss(losses) if status == "complete" else math.inf,
            "flops": float(flops) * len(losses), "steps_done": len(losses)}


def _one(args: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    fields, point = args
    cfg = TrainConfig(**{**fields, "width": point["width"], "lr": 2.0 ** point["log2_lr"], "seed": point["seed"]})
    return {**point, **train_mup(cfg)}


def run_row(fields: dict[str, Any], widths: list[int], lrs: list[float], seeds: list[int], out: Path,
            workers: int = 2, refine: bool = True) -> list[dict[str, Any]]:
    """Train the grid (then one half-step refinement pass, as a grid sweep does), caching every result in
    ``out/results.jsonl`` so a rerun only trains what is missing."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "results.jsonl"
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []

    def key(p: dict[str, Any]) -> tuple:
        return (p["width"], round(float(p["log2_lr"]), 6), p["seed"])

    def train_points(points: list[dict[str, Any]]) -> None:
        have = {key(r) for r in done}
        todo = [p for p in points if key(p) not in have]
        todo.sort(key=lambda p: -p["width"])  # largest first, as sweeps do
        if not todo:
            return
        with mp.get_context("spawn").Pool(workers) as pool, cache.open("a") as fh:
            for rec in pool.imap_unordered(_one, [(fields, p) for p in todo]):
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done.append(rec)
                print(f"  mup package: width {rec['width']} log2 lr {rec['log2_lr']:g} seed {rec['seed']}: "
                      f"{rec['val_loss']:.4f}", flush=True)

    train_points([{"width": w, "log2_lr": x, "seed": s} for w in widths for x in lrs for s in seeds])
    if refine:
        extra = []
        for o in optima_by_group(done, "log2_lr", size_axes=["width"]):
            extra += [{"width": o.group["width"], "log2_lr": x, "seed": s} for x in o.refine for s in seeds]
        train_points(extra)
    return done

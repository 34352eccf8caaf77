"""The training loop: one config in, one RunResult out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from .config import TrainConfig
from .noise import NoiseScaleMeter
from .result import RunResult, final_train_loss
from .schedule import lr_factor
from .setup import Prepared, check_output, environment, flops_per_step, optimizer_kwargs, prepare, to_device
from .config import make_config

# progress(step_done, total_steps, last_train_loss)
ProgressFn = Callable[[int, int, float], None]
# on_eval(step, val_loss) -> True to stop the run here (status "pruned"), e.g. for successive halving
EvalFn = Callable[[int, float], bool]


def as_config(config: TrainConfig | dict[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config

    return make_config(**config)


def divergence_reason(loss: float, first_loss: float, factor: float) -> str:
    """Why ``loss`` counts as diverged ('' when it does not)."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if loss > factor * first_loss:
        return f"loss {loss:.4g} > {factor:g} x first loss {first_loss:.4g}"
    return ""


@torch.no_grad()
def evaluate(prep: Prepared, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean loss over fixed validation batches."""
    model = prep.model
    was_training = model.training
    model.eval()
    total = 0.0
    with _autocast(prep):
        for x, y in batches:
            total += float(prep.loss(model, x, y))
    model.train(was_training)
    return total / len(batches)


def _autocast(prep: Prepared) -> Any:
    return torch.autocast(prep.device.type, dtype=torch.bfloat16, enabled=prep.config.precision == "bf16")


def val_batches(prep: Prepared) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = prep.config
    return [to_device(b, prep) for b in prep.data.val_batches(cfg.eval_batches, cfg.batch_size, cfg.seq_len)]


def _backward(prep: Prepared, x: torch.Tensor, y: torch.Tensor, meter: NoiseScaleMeter | None) -> torch.Tensor:
    """The batch's loss, back-propagated (in halves when the noise scale is measured); the forward under autocast,
    the backward outside it."""
    def forward(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        with _autocast(prep):
            return prep.loss(prep.model, xs, ys)

    if meter is not None:
        return meter.backward(forward, x, y)
    loss = forward(x, y)
    loss.backward()
    return loss


def train(config: TrainConfig | dict[str, Any], *, progress: ProgressFn | None = None,
          on_eval: EvalFn | None = None) -> RunResult:
    """Train one model as ``config`` says and return what happened.

    Uses the plan from the rules core for init and per-tensor param groups,
    the config's schedule, gradient clipping (``plan.clip_grad_norm_``) and evaluation, and stops early
    (``status="diverged"``) when the loss goes non-finite or above
    ``diverge_factor`` x the first loss. Same seed and config give the same
    result on CPU.
    """
    cfg = as_config(config)
    start = time.perf_counter()
    prep = prepare(cfg)
    model, device = prep.model, prep.device
    # Tensors with equal settings share a group, so foreach kernels batch them as for a plain model.
    opt = prep.plan.optimizer(cfg.lr, cfg.weight_decay, model=model, **cfg.group_kwargs(), **optimizer_kwargs(cfg))
    peak = [g["lr"] for g in opt.param_groups]

    gen = torch.Generator().manual_seed(cfg.batch_seed)
    vbatches = val_batches(prep)
    warmup = cfg.warmup_steps
    losses: list[float] = []
    evals: list[dict[str, float]] = []
    flops_step = 0
    status, reason, diverged_step = "complete", "", None
    meter = NoiseScaleMeter(list(model.parameters()), cfg.tokens_per_step() // cfg.batch_size) \
        if cfg.noise_scale else None
    model.train()
    for step in range(cfg.steps):
        factor = lr_factor(step, cfg.steps, cfg.schedule, warmup, cfg.final_lr_frac, cfg.cooldown)
        for g, lr in zip(opt.param_groups, peak):
            g["lr"] = lr * factor
        x, y = to_device(prep.data.sample("train", cfg.batch_size, cfg.seq_len, gen), prep)
        if step == 0:
            check_output(prep, x, y)
            flops_step = flops_per_step(model, prep.loss_fn, x, y, prep.forward)
        loss = _backward(prep, x, y, meter)
        if cfg.grad_clip is not None:  # in the explicit form's units: folded trains as explicit does
            prep.plan.clip_grad_norm_(model, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        losses.append(value)
        reason = divergence_reason(value, losses[0], cfg.diverge_factor)
        if reason:
            status, diverged_step = "diverged", step
            break
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val = evaluate(prep, vbatches)
            evals.append({"step": step + 1, "val_loss": val, "train_loss": final_train_loss(losses),
                          "lr_factor": factor, "time": time.perf_counter() - start})
            if not math.isfinite(val):
                status, reason, diverged_step = "diverged", f"validation loss became {val}", step
                break
            if on_eval is not None and step + 1 < cfg.steps and on_eval(step + 1, val):
                status, reason = "pruned", f"stopped by on_eval at step {step + 1}"
                break
        if progress is not None:
            progress(step + 1, cfg.steps, value)

    steps_done = len(losses)
    ok = status != "diverged"
    return RunResult(
        status=status,
        final_train_loss=final_train_loss(losses) if ok else math.inf,
        final_val_loss=evals[-1]["val_loss"] if ok else math.inf,
        train_losses=losses,
        evals=evals,
        steps_done=steps_done,
        tokens=steps_done * cfg.tokens_per_step(),
        wall_time=time.perf_counter() - start,
        flops=float(flops_step) * steps_done,
        n_params=prep.n_params,
        config=cfg.model_dump(mode="json"),
        env=environment(prep.data, device),
        diverged_step=diverged_step,
        reason=reason,
        noise_scale=meter.value() if meter is not None and ok else None,
    )

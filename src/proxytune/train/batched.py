"""Batched trials: K configs of one architecture trained together in one process.

The members differ only in ``BATCHABLE_FIELDS`` (lr, weight decay, eps, init
multipliers, per-role LR constants, seeds). Each member is built exactly as
``train(config)`` builds it, then the K copies of every parameter are stacked
into one ``(K, ...)`` tensor; ``torch.func.vmap`` over
``torch.func.functional_call`` runs the K forward passes as one, and a batched
optimizer (``proxytune.optim.batched``) updates all members with their own
hyperparameters. A member that diverges is removed from the stack, so it
neither disturbs nor slows the others.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..rules.recipes import get_recipe
from ..optim.batched import BATCHED_OPTIMIZERS, BatchedOptimizer, StackedParam, clip_grad_norm_batched
from .config import BATCHABLE_FIELDS, TrainConfig
from .loop import ProgressFn, as_config, divergence_reason
from .result import RunResult, final_train_loss
from .schedule import lr_factor
from .setup import (
    Prepared,
    check_output,
    environment,
    flops_per_step,
    optimizer_kwargs,
    param_settings,
    prepare,
    stacked_losses,
    to_device,
)
from ..plan import MARKER_BUFFER


class BatchError(ValueError):
    """The configs cannot be trained as one batched group."""


def check_batchable(configs: Sequence[TrainConfig]) -> None:
    """Raise BatchError naming the fields that differ where they must not."""
    if not configs:
        raise BatchError("no configs to train")
    ref = configs[0].architecture_key()
    for i, cfg in enumerate(configs[1:], start=1):
        key = cfg.architecture_key()
        diff = [k for k in ref if ref[k] != key[k]]
        if diff:
            raise BatchError(f"config {i} differs from config 0 in {', '.join(diff)}; members of a batched group "
                             f"may differ only in {', '.join(BATCHABLE_FIELDS)}")
    if configs[0].optimizer not in BATCHED_OPTIMIZERS:
        raise BatchError(f"optimizer {configs[0].optimizer!r} has no batched update (batched: "
                         f"{', '.join(BATCHED_OPTIMIZERS)}); train these configs one by one")
    if configs[0].noise_scale:
        raise BatchError("noise_scale back-propagates each batch in halves: its trials train one by one")
    if configs[0].precision in ("bf16-pure", "fp8-sim"):
        raise BatchError(f"precision {configs[0].precision!r} trains one trial at a time")
    if get_recipe(configs[0].recipe).unit:
        raise BatchError(f"recipe {configs[0].recipe!r} keeps its scales in the forward pass (explicit), which "
                         "functional_call cannot stack; its trials train one by one")
    if configs[0].mode != "folded":
        raise BatchError("batched trials need mode='folded' (explicit multipliers are parametrizations, "
                         "which functional_call cannot stack)")


def group_batchable(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped so each group can be trained batched."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(repr(sorted(cfg.architecture_key().items())), []).append(i)
    return list(groups.values())


def _stack_hp(settings: list[dict[str, dict[str, Any]]], name: str, key: str, device: torch.device,
              dtype: torch.dtype) -> Tensor | None:
    values = [s[name].get(key) for s in settings]
    if any(v is None for v in values):
        return None
    return torch.tensor(values, device=device, dtype=dtype)


def set_attention_impl(model: nn.Module, impl: str) -> bool:
    """Switch the reference models' attention implementation; False when the model has none."""
    found = False
    for mod in model.modules():
        if hasattr(mod, "attention_impl"):
            mod.attention_impl = impl
            found = True
    return found


# on_eval(member_index, step, val_loss) -> True to stop that member (status "pruned")
MemberEvalFn = Callable[[int, int, float], bool]


def train_batched(configs: Sequence[TrainConfig | dict[str, Any]], *, progress: ProgressFn | None = None,
                  on_eval: MemberEvalFn | None = None, attention: str = "auto") -> list[RunResult]:
    """Train ``configs`` together; returns one RunResult per config, in order.

    Each member's result matches ``train(config)`` up to float rounding (same
    init, same batches, same update arithmetic). ``attention``: ``auto`` runs
    the reference models' attention as plain matmuls under ``vmap`` on CPU
    (torch has no batching rule for its fused CPU kernel, so it would loop
    over members); ``sdpa`` or ``math`` force one.
    """
    cfgs = [as_config(c) for c in configs]
    check_batchable(cfgs)
    start = time.perf_counter()
    preps = [prepare(c) for c in cfgs]
    _check_same_modules(preps)
    stacked = _stack_members(preps)
    opt = BatchedOptimizer(cfgs[0].optimizer, stacked, **optimizer_kwargs(cfgs[0]))
    losses_of = _stacked_losses_fn(preps, attention)
    members = _Members(cfgs, start)
    flops_step = _train_group(members, preps[0], stacked, opt, losses_of, progress, on_eval)
    return members.results(preps[0], flops_step)


def _stack_members(preps: list[Prepared]) -> list[StackedParam]:
    """Every parameter of the members stacked into one ``(K, ...)`` tensor, with each member's hyperparameters
    (lr, weight decay, eps, the plan's clip weight) stacked alongside."""
    device = preps[0].device
    names = [n for n, _ in preps[0].model.named_parameters()]
    member_params = [dict(p.model.named_parameters()) for p in preps]
    settings = [param_settings(p) for p in preps]
    clip_weights = [_clip_weights(p) for p in preps]
    dtype = member_params[0][names[0]].dtype
    stacked = []
    for n in names:
        t = torch.stack([mp[n].detach() for mp in member_params]).requires_grad_(True)
        s0 = settings[0][n]
        stacked.append(StackedParam(
            name=n, param=t,
            lr=_stack_hp(settings, n, "lr", device, dtype),
            weight_decay=_stack_hp(settings, n, "weight_decay", device, dtype),
            eps=_stack_hp(settings, n, "eps", device, dtype) if not isinstance(s0.get("eps"), tuple) else None,
            use_muon=bool(s0.get("use_muon", False)), muon_scale=float(s0.get("scale", 1.0)),
            clip_weight=torch.tensor([cw[n] for cw in clip_weights], device=device, dtype=dtype),
        ))
    return stacked


#: losses_of(stacked params, x, y, shared) -> (K,) member losses; ``shared``: one batch for all members
LossesFn = Callable[[dict[str, Tensor], Tensor, Tensor, bool], Tensor]


def _stacked_losses_fn(preps: list[Prepared], attention: str) -> LossesFn:
    """The members' losses in one call: ``vmap`` over ``functional_call`` of a parameter-free template of
    member 0's model (its attention implementation set by ``attention``), with the shared buffers."""
    device = preps[0].device
    template = _meta_template(preps[0].model)
    if attention == "auto":
        attention = "math" if device.type == "cpu" else "sdpa"
    set_attention_impl(template, attention)
    buffers = _shared_buffers(preps)
    task = getattr(preps[0].data, "task", "lm")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=preps[0].config.precision == "bf16")
    forward = preps[0].forward

    def member_forward(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        args, kwargs = forward.arguments(template, x, y)
        return forward.logits(functional_call(template, (params, buffers), args, kwargs, strict=True))

    def losses_of(params: dict[str, Tensor], x: Tensor, y: Tensor, shared: bool) -> Tensor:
        with autocast:
            dims = None if shared else 0
            out = vmap(member_forward, in_dims=(0, dims, dims))(params, x, y)
        return stacked_losses(task, out, y, shared)

    return losses_of


class _Members:
    """The members of a batched group as training goes: per config its train losses, evaluations and outcome
    (diverged, pruned; complete when absent), and ``active``: the config index of each row of the stack."""

    def __init__(self, cfgs: list[TrainConfig], start: float) -> None:
        self.cfgs, self.start = cfgs, start
        self.active = list(range(len(cfgs)))
        self.losses: list[list[float]] = [[] for _ in cfgs]
        self.evals: list[list[dict[str, float]]] = [[] for _ in cfgs]
        self.outcome: dict[int, tuple[str, str, int | None]] = {}

    def record_losses(self, values: list[float], step: int) -> list[int]:
        """Append each active member's train loss; the rows of those that diverged."""
        leaving = []
        for row, (i, value) in enumerate(zip(self.active, values)):
            self.losses[i].append(value)
            reason = divergence_reason(value, self.losses[i][0], self.cfgs[i].diverge_factor)
            if reason:
                self.outcome[i] = ("diverged", reason, step)
                leaving.append(row)
        return leaving

    def record_evals(self, vals: list[float], rows: list[int], step: int, factor: float,
                     on_eval: MemberEvalFn | None) -> list[int]:
        """Append the validation loss of each of ``rows``; the rows of those whose loss is not finite or that
        ``on_eval`` stops."""
        leaving = []
        steps = self.cfgs[0].steps
        for row in rows:
            i = self.active[row]
            val = vals[row]
            self.evals[i].append({"step": step + 1, "val_loss": val, "train_loss": final_train_loss(self.losses[i]),
                                  "lr_factor": factor, "time": time.perf_counter() - self.start})
            if not math.isfinite(val):
                self.outcome[i] = ("diverged", f"validation loss became {val}", step)
                leaving.append(row)
            elif on_eval is not None and step + 1 < steps and on_eval(i, step + 1, val):
                self.outcome[i] = ("pruned", f"stopped by on_eval at step {step + 1}", None)
                leaving.append(row)
        return leaving

    def results(self, prep: Prepared, flops_step: int) -> list[RunResult]:
        """One RunResult per config, in order; the group's wall time is shared equally."""
        wall = time.perf_counter() - self.start
        env = environment(prep.data, prep.device)
        k_total = len(self.cfgs)
        results = []
        for i, cfg in enumerate(self.cfgs):
            status, reason, diverged_step = self.outcome.get(i, ("complete", "", None))
            ok = status != "diverged"
            losses, done = self.losses[i], len(self.losses[i])
            results.append(RunResult(
                status=status,
                final_train_loss=final_train_loss(losses) if ok else math.inf,
                final_val_loss=self.evals[i][-1]["val_loss"] if ok else math.inf,
                train_losses=losses, evals=self.evals[i], steps_done=done,
                tokens=done * cfg.tokens_per_step(),
                wall_time=wall / k_total,
                flops=float(flops_step) * done,
                n_params=prep.n_params,
                config=cfg.model_dump(mode="json"),
                env=dict(env, batch_group={"size": k_total, "index": i, "group_wall_time": wall}),
                diverged_step=diverged_step, reason=reason,
            ))
        return results


def _train_group(members: _Members, prep: Prepared, stacked: list[StackedParam], opt: BatchedOptimizer,
                 losses_of: LossesFn, progress: ProgressFn | None, on_eval: MemberEvalFn | None) -> int:
    """The training loop of the group (member 0's config gives the steps, schedule and batches; ``prep`` is
    member 0's): members that diverge or are pruned leave the stack. Returns the FLOPs of one step."""
    c0 = members.cfgs[0]
    # Members with the same data seed see the same batches: sample once, share them.
    seeds = [c.batch_seed for c in members.cfgs]
    gens = {s: torch.Generator().manual_seed(s) for s in dict.fromkeys(seeds)}
    vbatches = [to_device(b, prep) for b in prep.data.val_batches(c0.eval_batches, c0.batch_size, c0.seq_len)]
    flops_step = 0
    for step in range(c0.steps):
        factor = lr_factor(step, c0.steps, c0.schedule, c0.warmup_steps, c0.final_lr_frac, c0.cooldown)
        batch = {s: to_device(prep.data.sample("train", c0.batch_size, c0.seq_len, g), prep) for s, g in gens.items()}
        if step == 0:
            check_output(prep, *batch[seeds[0]])
            flops_step = flops_per_step(prep.model, prep.loss_fn, *batch[seeds[0]], prep.forward)
        params = {sp.name: sp.param for sp in stacked}
        x, y, shared = _member_batches(batch, [seeds[i] for i in members.active])
        member_losses = losses_of(params, x, y, shared)
        member_losses.sum().backward()
        if c0.grad_clip is not None:
            clip_grad_norm_batched(stacked, c0.grad_clip)  # explicit units, as train() clips
        opt.step(factor)
        opt.zero_grad()
        values = member_losses.detach().double().tolist()
        leaving = members.record_losses(values, step)
        if (step + 1) % c0.eval_every == 0 or step + 1 == c0.steps:
            keep_rows = [r for r in range(len(members.active)) if r not in leaving]
            if keep_rows:
                leaving += members.record_evals(_evaluate(losses_of, stacked, vbatches), keep_rows, step, factor,
                                                on_eval)
        if leaving:
            keep = [r for r in range(len(members.active)) if r not in leaving]
            members.active = [members.active[r] for r in keep]
            if not members.active:
                break
            opt.keep(torch.tensor(keep, device=prep.device))
        if progress is not None:
            progress(step + 1, c0.steps, sum(values) / len(values))
    return flops_step


def _member_batches(batch: dict[int, tuple[Tensor, Tensor]], active_seeds: list[int]) -> tuple[Tensor, Tensor, bool]:
    """(x, y, shared) of the active members: their one shared batch, or their batches stacked."""
    shared = len(set(active_seeds)) == 1
    if shared:
        x, y = batch[active_seeds[0]]
    else:
        x = torch.stack([batch[s][0] for s in active_seeds])
        y = torch.stack([batch[s][1] for s in active_seeds])
    return x, y, shared


def _clip_weights(prep: Prepared) -> dict[str, float]:
    """Per parameter name, the plan's clip weight (:meth:`Plan.clip_weights`)."""
    weights = prep.plan.clip_weights()
    params = prep.plan.parameters(prep.model)
    by_id = {id(params[n]): w for n, w in weights.items()}
    return {n: by_id.get(id(p), 1.0) for n, p in prep.model.named_parameters()}


def _meta_template(model: nn.Module) -> nn.Module:
    """A parameter-free copy of ``model`` for functional_call; tied weights stay tied.

    (``.to("meta")`` would give each use of a tied weight its own tensor, and
    functional_call would then feed the stacked weight to one use only.)
    """
    memo = {id(p): nn.Parameter(p.detach().to("meta"), p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b.to("meta") for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _check_same_modules(preps: list[Prepared]) -> None:
    """The members run through one template module (member 0's): what the plan set on modules (an attention
    scale attribute, a tied readout's input multiplier, residual scales) must be the same for all of them."""
    ref = preps[0].plan.attention
    for p in preps[1:]:
        if p.plan.attention != ref:
            raise BatchError("the attention adapters of the members differ (e.g. an attention multiplier set "
                             "through a module attribute): train these configs one by one")
    state = preps[0].plan.forward_state()
    for i, p in enumerate(preps[1:], start=1):
        other = p.plan.forward_state()
        if other != state:
            diff = next((a, b) for a, b in zip([*state, "nothing"], [*other, "nothing"]) if a != b)
            raise BatchError(f"the forward pass of member {i} differs from member 0's ({diff[1]} vs {diff[0]}): "
                             "member 0's template would run it with the wrong multipliers; train these configs "
                             "one by one")


def _shared_buffers(preps: list[Prepared]) -> dict[str, Tensor]:
    """Buffers (e.g. rotary tables) must be identical across members: they are passed unbatched.

    The plan's marker buffer (``MARKER_BUFFER``: the digest of the plan applied, for checkpoints) is not
    compared: the forward pass never reads it, and the members' plans differ in it by their seed's init
    statistics. What the plan does put in the forward pass is compared by :func:`_check_same_modules`."""

    bufs = [dict(p.model.named_buffers()) for p in preps]
    for name, b in bufs[0].items():
        if name.rsplit(".", 1)[-1] == MARKER_BUFFER:
            continue
        for other in bufs[1:]:
            if not torch.equal(other[name], b):
                raise BatchError(f"buffer {name!r} differs between members; batched trials need identical buffers "
                                 "(models with running statistics, e.g. BatchNorm, must be trained one by one)")
    return bufs[0]


@torch.no_grad()
def _evaluate(losses_of: Callable, stacked: list[StackedParam], batches: list[tuple[Tensor, Tensor]]) -> list[float]:
    params = {sp.name: sp.param.detach() for sp in stacked}
    total = None
    for x, y in batches:
        v = losses_of(params, x, y, True).double()
        total = v if total is None else total + v
    return (total / len(batches)).tolist()

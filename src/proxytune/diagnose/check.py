"""``proxytune check``: the quick verdict on a model + data + recipe, with what to change when it fails.

Three pieces of evidence, each cheap on CPU for small proxies:

1. a coordinate check across widths (does every module's update stay the
   same size as the model widens?);
2. the alignment measurement (does the plan's LR-exponent column match what
   training does?);
3. a mini LR sweep at the same widths (batched trials) and its transfer
   verdict: does the optimal learning rate stay put?

Every limit comes from :mod:`proxytune.thresholds`, the same ones
``analyze``, ``coord-check`` and ``demo`` judge by. The verdict is
"transfers" when the coordinate check passes and the mini sweep does not FAIL
(a sweep too short to resolve the drift says so); otherwise it says "does not
transfer, because ..." with the evidence and a suggestion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..analysis.optimum import optima_by_group
from ..analysis.verdict import Verdict, transfer_verdict
from ..thresholds import THRESHOLDS, shallow_base_warning
from ..train import BatchError, RunResult, TrainConfig, train, train_batched
from .alignment import AlignmentCheck, alignment_check
from ..modelspec import ModelSpec
from .coord import CoordCheck, coord_check


@dataclass
class QuickCheck:
    transfers: bool
    line: str
    reasons: list[str]
    coord: CoordCheck
    alignment: AlignmentCheck | None
    sweep: Verdict | None
    records: list[dict[str, Any]] = field(default_factory=list)
    alignment_error: str = ""
    #: why the mini LR sweep did not finish ("" when it did); the other evidence is kept
    sweep_error: str = ""
    #: what limits the verdict beyond its evidence (a base too shallow for the recipe's depth rule)
    warnings: list[str] = field(default_factory=list)

    def report(self) -> str:
        parts = [self.line, "", "coordinate check: " + self.coord.line]
        if self.alignment is not None:
            parts.append("alignment: " + self.alignment.line)
        elif self.alignment_error:
            parts.append("alignment: not measured (" + self.alignment_error + ")")
        if self.sweep is not None:
            parts.append("mini LR sweep: " + self.sweep.line)
        elif self.sweep_error:
            parts.append("mini LR sweep: failed (" + self.sweep_error + ")")
        parts += ["warning: " + w for w in self.warnings]
        return "\n".join(parts)


def quick_check(model: str | ModelSpec = "gpt", *, widths: tuple[int, ...] = (32, 64, 128), depth: int = 2,
                recipe: str = "mup", optimizer: str = "adamw", data: str = "stdlib",
                model_options: dict[str, Any] | None = None, data_options: dict[str, Any] | None = None,
                log2_lrs: tuple[float, ...] = (-10, -9, -8, -7, -6, -5, -4), steps: int = 60, batch_size: int = 8,
                seq_len: int = 32, seeds: int = 2, alignment: str = "full",
                log: Callable[[str], None] | None = None) -> QuickCheck:
    """Run the three checks and return the verdict (a few minutes at most for small proxies on CPU).

    The mini sweep trains every (width, log2 LR, seed) for ``steps`` steps; ``seeds`` >= 2 lets the
    optimum's interval include the seed-to-seed noise. Its members train batched, one by one when they
    cannot (a :class:`BatchError`). When the mini sweep fails, the coordinate check and the alignment are
    still returned, with the error in ``sweep_error`` and no verdict. ``log(line)`` gets one line as each
    phase starts (the command line prints them).

    Many parameters because: each is an independent, documented knob of the public call (the ``check``
    command's options map onto them); internally they travel as one ``_QuickArgs``."""
    widths = tuple(sorted(widths))
    if len(widths) < 3:
        raise ValueError("quick_check needs 3 or more widths")
    spec = ModelSpec.from_value(model)
    if model_options:
        spec = spec.model_copy(update={"options": {**spec.options, **model_options}})
    q = _QuickArgs(spec=spec, model=spec.builder, model_options=dict(spec.options), structure=spec.structure(),
                   widths=widths, depth=depth, recipe=recipe, optimizer=optimizer, data=data,
                   data_options=data_options, log2_lrs=log2_lrs, steps=steps, batch_size=batch_size,
                   seq_len=seq_len, seeds=seeds, alignment=alignment, say=log or (lambda line: None))
    coord = _coordinate_check(q)
    align, align_error = _alignment(q)
    records: list[dict[str, Any]] = []
    try:
        _mini_sweep(q, records)
    except Exception as exc:  # noqa: BLE001 - the coordinate check and alignment stand on their own
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        line = ("no verdict: the mini LR sweep failed (" + error + "); the coordinate check "
                + ("passes" if coord.passed else "fails") + ": " + coord.line)
        return QuickCheck(False, line, [f"the mini LR sweep failed ({error})"], coord, align, None, records,
                          align_error, sweep_error=error)
    optima = optima_by_group(records, "log2_lr", size_axes=["width"])
    sweep = transfer_verdict(optima, "width") if len(optima) >= 2 else None
    reasons = _reasons(coord, align, sweep, recipe)
    shallow = shallow_base_warning(recipe, depth, None)
    warnings = [f"this check is across width at depth {depth}; " + shallow] if shallow else []
    ok = coord.passed and sweep is not None and not sweep.failed
    if ok:
        line = "transfers" + ("" if sweep.passed else " (the coordinate check passes; the mini LR sweep is too short "
                              "to resolve the drift: " + "; ".join(sweep.advice) + ")")
    else:
        line = "does not transfer, because " + "; ".join(reasons)
    return QuickCheck(ok, line, reasons, coord, align, sweep, records, align_error, warnings=warnings)


@dataclass(frozen=True)
class _QuickArgs:
    """The arguments of :func:`quick_check`, the model resolved: ``spec`` (with the options given), its
    builder name, a copy of its options and its structure; ``widths`` sorted; ``say`` the log function."""

    spec: ModelSpec
    model: str
    model_options: dict[str, Any]
    structure: Any
    widths: tuple[int, ...]
    depth: int
    recipe: str
    optimizer: str
    data: str
    data_options: dict[str, Any] | None
    log2_lrs: tuple[float, ...]
    steps: int
    batch_size: int
    seq_len: int
    seeds: int
    alignment: str
    say: Callable[[str], None]


def _coordinate_check(q: _QuickArgs) -> CoordCheck:
    """Evidence 1: the coordinate check across the widths (the shared seeds, steps and lr)."""
    widths = q.widths
    q.say(f"coordinate check: widths {', '.join(map(str, widths))}, {THRESHOLDS.coord_seeds} seeds, 3 steps")
    return coord_check(q.spec, widths=list(widths), depth=q.depth, recipe=q.recipe, optimizer=q.optimizer,
                       data=q.data, seeds=THRESHOLDS.coord_seeds, steps=3, batch_size=q.batch_size,
                       seq_len=q.seq_len, lr=THRESHOLDS.coord_lr)


def _alignment(q: _QuickArgs) -> tuple[AlignmentCheck | None, str]:
    """Evidence 2 (supporting, never fatal): the alignment at the largest width against the smallest, for the
    reference GPT or a model given as ``file:builder``; (None, why) when it cannot be measured."""
    align, align_error = None, ""
    if q.model == "gpt" or ":" in q.model:
        q.say(f"alignment: width {q.widths[-1]} against base width {q.widths[0]}")
        try:
            align = alignment_check(q.widths[-1], model=q.model, depth=q.depth, base_width=q.widths[0],
                                    recipe=q.recipe,
                                    optimizer="adam" if q.optimizer in ("adam", "adamw") else q.optimizer,
                                    batch_size=q.batch_size, seq_len=q.seq_len, assumed=q.alignment,
                                    model_options=q.model_options, structure=q.structure)
        except Exception as exc:  # noqa: BLE001 - alignment is supporting evidence, never fatal
            align_error = str(exc)
    return align, align_error


def _mini_sweep(q: _QuickArgs, records: list[dict[str, Any]]) -> None:
    """Evidence 3: every (width, log2 LR, seed) trained for ``steps`` steps; one record each is appended to
    ``records`` as its width finishes (those of the widths done stay when a later one fails)."""
    widths = q.widths
    for w in widths:
        configs = [TrainConfig(model=q.model, width=w, depth=q.depth, base_width=widths[0], base_depth=q.depth,
                               recipe=q.recipe, optimizer=q.optimizer, data=q.data,
                               data_options=q.data_options or {}, model_options=q.model_options,
                               model_structure=q.structure, lr=2.0 ** x, steps=q.steps, batch_size=q.batch_size,
                               seq_len=q.seq_len, eval_every=q.steps, eval_batches=4, seed=s,
                               tags={"log2_lr": x}) for x in q.log2_lrs for s in range(q.seeds)]
        q.say(f"mini LR sweep at width {w}: {len(configs)} trials ({len(q.log2_lrs)} learning rates x {q.seeds} "
              f"seeds, {q.steps} steps)")
        for cfg, res in zip(configs, _train_all(configs)):
            records.append({"width": w, "log2_lr": cfg.tags["log2_lr"], "seed": cfg.seed, "status": res.status,
                            "val_loss": res.final_val_loss})


def _train_all(configs: list[TrainConfig]) -> list[RunResult]:
    """The configs trained batched, or one by one when they cannot be (members whose forward passes differ,
    per-member buffers...)."""
    try:
        return train_batched(configs)
    except BatchError:
        return [train(c) for c in configs]


def _reasons(coord: CoordCheck, align: AlignmentCheck | None, sweep: Verdict | None, recipe: str) -> list[str]:
    out = []
    if coord.blowups:
        names = ", ".join(coord.blowups[:4])
        if recipe in ("sp", "ntk"):
            hint = f"recipe {recipe!r} does not scale their learning rates with width: use mup or sp-perlayer"
        elif any("head" in n or "out" in n for n in coord.blowups):
            hint = "readout not recognized? pass roles={'<name>.weight': 'readout'} (see proxytune explain)"
        else:
            hint = "check that roles and the attention scale were detected (proxytune explain)"
        out.append(f"the updates of {names} grow with width ({hint})")
    if coord.vanishing:
        out.append(f"the updates of {', '.join(coord.vanishing[:4])} vanish with width (learning rate scaled down "
                   "too much for those tensors)")
    if sweep is None:
        out.append("the mini LR sweep found no usable optimum")
    elif sweep.failed and math.isfinite(sweep.drift_per_doubling):
        out.append(f"the optimal LR moves by {sweep.drift_per_doubling:+.2f} octaves per doubling of width "
                   f"(limit +-{THRESHOLDS.max_drift_per_doubling:g})")
    elif not sweep.passed and math.isfinite(sweep.drift_per_doubling):
        lo, hi = sweep.drift_interval
        out.append(f"the mini LR sweep is too short to resolve the drift of the optimal LR "
                   f"({sweep.drift_per_doubling:+.2f} octaves per doubling, 90% {lo:+.2f} .. {hi:+.2f})")
    if align is not None and not align.passed:
        out.append(f"alignment: {align.line}")
    return out or ["the evidence is inconclusive"]

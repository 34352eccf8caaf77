"""Alignment check: how aligned is each layer's weight update with its inputs?

Everett et al. (2024), "Scaling Exponents Across Parameterizations and
Optimizers": the maximal stable LR exponents depend on whether the update
``dW`` of a layer is aligned with the layer's inputs ``z``. Per Linear layer,
after a short training run, the log-alignment ratio

    A = log_fan_in( rms(dW z) / (rms(dW) * rms(z)) )

is about 1/2 when ``dW`` and ``z`` are independent and 1 when they are fully
aligned (``dW`` low rank along ``z``). The mean over hidden layers tells which
column ("full" or "none") of the LR-exponent table the model supports: pass it
to ``parameterize(..., alignment=...)``.

Each record also holds ``A_random``: the same ratio for a Gaussian matrix with
the RMS of ``dW`` (about 1/2 by construction), the null reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .spectral import _ProxyRun, _train_proxy, format_table, probe_batch, rms

__all__ = ["AlignmentCheck", "alignment_check", "log_alignment"]


def log_alignment(dw: torch.Tensor, z: torch.Tensor, fan_in: int | None = None) -> float:
    """``log_{fan_in}(rms(dW z) / (rms(dW) rms(z)))`` for ``dw (out, in)`` and
    inputs ``z (..., in)``; ``fan_in`` defaults to ``dw.shape[1]``."""
    fan_in = dw.shape[1] if fan_in is None else fan_in
    if fan_in < 2:
        return float("nan")
    dw, z = dw.double(), z.double().reshape(-1, dw.shape[1])
    den = rms(dw) * rms(z)
    if den == 0:
        return float("nan")
    return math.log(rms(z @ dw.T) / den) / math.log(fan_in)


@dataclass
class AlignmentCheck:
    """Result of :func:`alignment_check`.

    ``records``: one dict per Linear weight (``layer``, ``role``, ``fan_in``,
    ``A``, ``A_random``). ``mean_hidden``: mean ``A`` over hidden layers.
    ``column``: ``"full"`` if ``mean_hidden > threshold`` else ``"none"``.
    ``passed`` is True when every ``A`` is finite and within the plausible
    range 0..1.5 (the measurement itself is sound) and the plan's alignment
    assumption matches the measured column.
    """

    recipe: str
    optimizer: str
    width: int
    records: list[dict[str, Any]]
    mean_hidden: float
    mean_hidden_random: float
    column: str
    assumed: str
    passed: bool
    line: str
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        return format_table(self.records, ["layer", "role", "fan_in", "fan_out", "A", "A_random"]) + "\n" + self.line


def alignment_check(
    width: int = 128, *, model: str = "gpt", depth: int = 1, base_width: int = 32, recipe: str = "mup",
    optimizer: str = "adam", lr: float = 1e-2, steps: int = 5, seed: int = 0, batch_size: int = 8,
    seq_len: int = 32, threshold: float = 0.75, assumed: str = "full",
    model_options: dict[str, Any] | None = None, structure: Any = None,
) -> AlignmentCheck:
    """Train ``steps`` steps at ``width`` and measure each Linear layer's alignment.

    ``z`` are the inputs of each layer on a fixed probe batch (forward hooks,
    after training), ``dW = W - W0``. ``assumed`` is the alignment column the
    user's plan uses (``parameterize(alignment=...)``, default ``"full"``).

    Many parameters because: each is an independent, documented knob of the
    public call; internally the proxy's travel as one ``_ProxyRun``.
    """
    if assumed not in ("full", "none"):
        raise ValueError(f"assumed must be 'full' or 'none', got {assumed!r}")
    net, plan, init, _ = _train_proxy(_ProxyRun(
        model=model, width=width, depth=depth, base_width=base_width, recipe=recipe, optimizer=optimizer, lr=lr,
        steps=steps, seed=seed, batch_size=batch_size, seq_len=seq_len, model_options=model_options,
        structure=structure))
    params = plan.parameters(net)
    # one name per tensor, the plan's: a tied weight is listed under each module that uses it
    by_id = {id(p): name for name, p in params.items() if name in plan.tensors}
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    tied = []
    for mname, mod in net.named_modules():
        if isinstance(mod, nn.Linear) and id(mod.weight) in by_id:
            wname = by_id[id(mod.weight)]
            if wname != (f"{mname}.weight" if mname else "weight"):
                tied.append(mname)  # another tensor's use (a readout tied to the embedding): measured as that one
                continue
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, n=wname: inputs.__setitem__(n, i[0].detach())))
    try:
        with torch.no_grad():
            net.eval()
            net(probe_batch(batch_size, seq_len))
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(seed + 7)
    records = []
    for name, z in inputs.items():
        tp = plan.tensors[name]
        dw = (params[name].detach() - init[name]).double()
        rnd = torch.randn(dw.shape, generator=gen, dtype=torch.float64) * rms(dw)
        records.append({"layer": name, "role": tp.role, "fan_in": tp.fan_in, "fan_out": tp.fan_out,
                        "A": log_alignment(dw, z, tp.fan_in), "A_random": log_alignment(rnd, z, tp.fan_in),
                        "dW_rms": rms(dw), "z_rms": rms(z)})
    hidden = [r for r in records if r["role"] == "hidden" and math.isfinite(r["A"])]
    notes = [f"{m}: not measured, its weight is tied to another tensor's" for m in tied]
    if not hidden:
        notes.append("no hidden Linear layers: the mean is over all Linear layers")
        hidden = [r for r in records if math.isfinite(r["A"])]
    mean = sum(r["A"] for r in hidden) / len(hidden) if hidden else float("nan")
    mean_rnd = sum(r["A_random"] for r in hidden) / len(hidden) if hidden else float("nan")
    column = "full" if mean > threshold else "none"
    sane = bool(records) and all(math.isfinite(r["A"]) and 0.0 <= r["A"] <= 1.5 for r in records)
    passed = sane and column == assumed
    if not sane:
        bad = [r["layer"] for r in records if not (math.isfinite(r["A"]) and 0.0 <= r["A"] <= 1.5)]
        line = (f"alignment check FAILED: implausible alignment for {', '.join(bad[:5])} "
                "(zero update or inputs? train more steps or check the layer is used)")
    else:
        verdict = "supports" if column == assumed else "does NOT support"
        fix = "" if column == assumed else f"; use parameterize(..., alignment={column!r})"
        line = (f"alignment check {'passed' if passed else 'FAILED'} ({recipe}/{optimizer}, width {width}): "
                f"mean A over hidden layers {mean:.2f} (random-update reference {mean_rnd:.2f}) -> "
                f"'{column}' alignment; {verdict} the plan's '{assumed}' column{fix}")
    return AlignmentCheck(recipe=recipe, optimizer=optimizer, width=width, records=records, mean_hidden=mean,
                          mean_hidden_random=mean_rnd, column=column, assumed=assumed, passed=passed,
                          line=line, notes=notes)

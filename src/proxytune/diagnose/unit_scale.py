"""Unit-scale check: is every weight, activation and gradient of a model near RMS 1?

Unit scaling (Blake et al. 2023, "Unit Scaling"; Blake et al. 2024, "u-muP") keeps tensors near unit scale so
that bf16 and fp8, whose useful range is centred on 1, represent them well. This check measures it on any model:
the RMS of every parameter, of every module's output (forward hooks on the modules that hold parameters or have
no children) and of every parameter's gradient, at init and, optionally, after ``steps`` optimizer steps; the
verdict lists what falls outside ``[low, high]`` (default ``[1/4, 4]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class UnitScaleCheck:
    """Result of :func:`unit_scale_check`.

    ``records``: one row per measured tensor: ``{step, kind, name, rms}`` with ``kind`` one of ``weight``,
    ``activation``, ``gradient``. ``outside``: the rows whose RMS is outside ``[low, high]``.
    """

    low: float
    high: float
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outside(self) -> list[dict[str, Any]]:
        """Rows outside the band; an exactly zero tensor (a bias at init, a zero-initialized readout) is not
        a scale problem and is left out."""
        return [r for r in self.records if r["rms"] != 0.0 and not (self.low <= r["rms"] <= self.high)]

    @property
    def passed(self) -> bool:
        return not self.outside

    def summary(self, limit: int = 12) -> str:
        kinds = sorted({r["kind"] for r in self.records})
        if self.passed:
            return (f"unit-scaled within [{self.low:g}, {self.high:g}]: all {len(self.records)} tensors "
                    f"({', '.join(kinds)})")
        bad = sorted(self.outside, key=lambda r: -abs(math.log(max(r["rms"], 1e-30))))
        lines = [f"not unit-scaled: {len(bad)} of {len(self.records)} tensors outside [{self.low:g}, {self.high:g}]"]
        lines += [f"  step {r['step']}  {r['kind']:<10} {r['name']}: rms {r['rms']:.3g}" for r in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  ... and {len(bad) - limit} more")
        return "\n".join(lines)


def _rms(t: torch.Tensor) -> float:
    t = t.detach().float()
    return float(t.pow(2).mean().sqrt()) if t.numel() else 0.0


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    if isinstance(out, dict):
        return next((o for o in out.values() if isinstance(o, torch.Tensor)), None)
    return getattr(out, "logits", None) if isinstance(getattr(out, "logits", None), torch.Tensor) else None


def _default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.ndim >= 2 and y.dtype in (torch.int64, torch.int32) and out.shape[:-1] == y.shape:
        return F.cross_entropy(out.flatten(0, -2).float(), y.flatten())
    return F.mse_loss(out.float(), y.float())


def unit_scale_check(
    model: nn.Module,
    batch: Batch | Callable[[], Batch],
    *,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 0,
    low: float = 0.25,
    high: float = 4.0,
    kinds: tuple[str, ...] = ("weight", "activation", "gradient"),
) -> UnitScaleCheck:
    """Measure the RMS of every weight, activation and gradient of ``model`` at init and after ``steps``
    optimizer steps.

    Args:
        batch: ``(inputs, targets)`` or a function returning one (called once per step).
        loss_fn: ``loss_fn(model(inputs), targets)``; default cross-entropy for integer targets whose shape is
            the output's without its last dim, else mean squared error.
        optimizer: needed when ``steps > 0``; the model is trained in place.
        low, high: the band counted as unit scale.
        kinds: which of ``weight``, ``activation``, ``gradient`` to record.
    """
    if steps and optimizer is None:
        raise ValueError("steps > 0 needs an optimizer to take the steps with")
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    unknown = set(kinds) - {"weight", "activation", "gradient"}
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; valid: weight, activation, gradient")
    loss_fn = loss_fn or _default_loss
    get_batch = batch if callable(batch) else (lambda: batch)
    result = UnitScaleCheck(low, high)
    # a parametrization's output is a weight, not an activation (proxytune's multipliers, u-muP's scales)
    watched = {name: mod for name, mod in model.named_modules()
               if name and ".parametrizations." not in f".{name}."
               and (not any(True for _ in mod.children()) or any(True for _ in mod.parameters(False)))}

    def measure(step: int) -> None:
        acts: dict[str, float] = {}
        hooks = []
        if "activation" in kinds:
            for name, mod in watched.items():
                def hook(_m: nn.Module, _args: Any, out: Any, name: str = name) -> None:
                    t = _first_tensor(out)
                    if t is not None and t.is_floating_point():
                        acts[name] = _rms(t)
                hooks.append(mod.register_forward_hook(hook))
        try:
            model.zero_grad(set_to_none=True)
            x, y = get_batch()
            out = model(x)
            t = _first_tensor(out)
            if "activation" in kinds and t is not None:
                acts["(output)"] = _rms(t)
            loss_fn(t if t is not None else out, y).backward()
        finally:
            for h in hooks:
                h.remove()
        for raw, p in model.named_parameters():
            name = raw.replace(".parametrizations.", ".").replace(".original", "")
            if "weight" in kinds:
                result.records.append({"step": step, "kind": "weight", "name": name, "rms": _rms(p)})
            if "gradient" in kinds and p.grad is not None:
                result.records.append({"step": step, "kind": "gradient", "name": name, "rms": _rms(p.grad)})
        result.records += [{"step": step, "kind": "activation", "name": n, "rms": v} for n, v in acts.items()]
        model.zero_grad(set_to_none=True)

    measure(0)
    if steps:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            x, y = get_batch()
            out = model(x)
            t = _first_tensor(out)
            loss_fn(t if t is not None else out, y).backward()
            optimizer.step()
        measure(steps)
    return result

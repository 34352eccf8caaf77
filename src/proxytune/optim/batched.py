"""The optimizer of K stacked models trained together: ``BatchedOptimizer`` applies, to every stacked parameter,
the batched step its optimizer registers (:mod:`proxytune.optim.registry`; the steps are in
:mod:`proxytune.optim.stacked`), so each member trains as it would alone, up to float rounding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .registry import REGISTRY
from .stacked import (  # re-exported: their import path before optim/stacked.py existed
    BatchedStep, StackedParam, adam_atan2_step, adam_step, adamw_step, clip_grad_norm_batched,
    muon_step, newton_schulz_batched, sgd_step,
)

#: the hyperparameters a batched step reads, with the defaults it uses when the trainer gives none
HYPER_DEFAULTS: dict[str, Any] = {"betas": (0.9, 0.999), "momentum": 0.0, "nesterov": False, "a": 1.27, "b": 1.0,
                                  "ns_steps": 5}


class _BatchedNames(Sequence[str]):
    """The names of the registered optimizers that have a batched step (``proxytune.optim.registry``), in
    registry order; a live view, so an optimizer registered later is batched too. Compares equal to the tuple
    of its names."""

    def _names(self) -> tuple[str, ...]:

        return tuple(name for name, spec in REGISTRY.items() if spec.batched_step is not None)

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, list, _BatchedNames)):
            return self._names() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


BATCHED_OPTIMIZERS: Sequence[str] = _BatchedNames()


class BatchedOptimizer:
    """One optimizer over stacked parameters: ``step(lr_factor)`` updates all members.

    ``name`` is a registered optimizer with a batched step
    (:data:`proxytune.optim.registry.REGISTRY`); the keyword arguments are its
    hyperparameters (what ``proxytune.train.setup.optimizer_kwargs`` gives:
    ``betas``, ``momentum``, ``nesterov``...; see :data:`HYPER_DEFAULTS`).
    ``keep(index)`` drops members (a diverged trial leaves the group) by
    indexing every parameter, state tensor and hyperparameter.
    """

    def __init__(self, name: str, params: list[StackedParam], **hyper: Any) -> None:

        if name not in BATCHED_OPTIMIZERS:
            raise ValueError(f"batched training supports {', '.join(BATCHED_OPTIMIZERS)}; got {name!r} "
                             "(train these configs one by one instead)")
        self.name = name
        self.params = params
        self.hyper: dict[str, Any] = {**HYPER_DEFAULTS, **hyper}
        self._update: BatchedStep = REGISTRY[name].batched_step  # type: ignore[assignment]
        self.step_count = 0

    # the hyperparameters the built-in updates read, as attributes
    betas = property(lambda self: self.hyper["betas"])
    momentum = property(lambda self: self.hyper["momentum"])
    nesterov = property(lambda self: self.hyper["nesterov"])
    a = property(lambda self: self.hyper["a"])
    b = property(lambda self: self.hyper["b"])
    ns_steps = property(lambda self: self.hyper["ns_steps"])

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        self.step_count += 1
        for sp in self.params:
            grad = sp.param.grad
            if grad is None:
                continue
            self._update(sp, grad, sp.lr * lr_factor, self.step_count, self.hyper)

    def zero_grad(self) -> None:
        for sp in self.params:
            sp.param.grad = None

    def keep(self, index: Tensor) -> None:
        """Keep only the members in ``index`` (a 1-D long tensor)."""
        for sp in self.params:
            new = sp.param.detach().index_select(0, index).requires_grad_(sp.param.requires_grad)
            sp.param = new
            sp.lr = sp.lr.index_select(0, index)
            sp.weight_decay = sp.weight_decay.index_select(0, index)
            if sp.eps is not None:
                sp.eps = sp.eps.index_select(0, index)
            if sp.clip_weight is not None:
                sp.clip_weight = sp.clip_weight.index_select(0, index)
            sp.state = {k: v.index_select(0, index) for k, v in sp.state.items()}


__all__ = ["BATCHED_OPTIMIZERS", "HYPER_DEFAULTS", "BatchedOptimizer", "BatchedStep", "StackedParam",
           "clip_grad_norm_batched", "newton_schulz_batched", "sgd_step", "adam_step", "adamw_step",
           "adam_atan2_step", "muon_step"]

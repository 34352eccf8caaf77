"""Optimizers: torch's where they exist, Adam-atan2, Muon and Dion here, SOAP and Shampoo from pytorch-optimizer
(the ``matrix`` extra, :mod:`.matrix`); :mod:`.registry` says how each is used."""

from __future__ import annotations

from typing import Any

import torch

from .adam_atan2 import AdamAtan2
from .dion import Dion
from .muon import Muon, newton_schulz
from .registry import REGISTRY, OptimizerSpec, get_spec, register, unregister

__all__ = ["AdamAtan2", "Dion", "Muon", "newton_schulz", "build_optimizer", "OptimizerSpec", "REGISTRY", "register",
           "unregister", "get_spec"]


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Instantiate optimizer ``name`` (a name in :data:`proxytune.optim.registry.REGISTRY`) over prepared param
    groups.

    Group keys (lr, weight_decay, eps, ...) win over the keyword defaults.
    """
    return get_spec(name).factory(groups, lr=lr, **kwargs)

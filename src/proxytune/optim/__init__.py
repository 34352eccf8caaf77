"""Optimizers: torch's where they exist, Adam-atan2 and Muon here."""

from __future__ import annotations

from typing import Any

import torch

from .adam_atan2 import AdamAtan2
from .muon import Muon, newton_schulz

__all__ = ["AdamAtan2", "Muon", "newton_schulz", "build_optimizer"]


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Instantiate optimizer ``name`` over prepared param groups.

    Group keys (lr, weight_decay, eps, ...) win over the keyword defaults.
    """
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, **kwargs)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **kwargs)
    if name == "adam-atan2":
        return AdamAtan2(groups, lr=lr, **kwargs)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr, **kwargs)
    if name == "muon":
        return Muon(groups, lr=lr, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adam, adamw, adam-atan2, adafactor, muon")

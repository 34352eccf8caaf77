"""Errors of the model-facing layers (shapes, tracing, plans), below everything that imports them."""

from __future__ import annotations


class PlanError(ValueError):
    """A model/base pair or an option the rules cannot handle, with what to change."""

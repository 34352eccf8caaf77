"""The limits every verdict and check in proxytune judges by, in one place.

``analyze``, ``report``, ``check``, ``coord-check``, ``explain --check`` and
``demo`` all read these, and each verdict line states the ones it used, so
two commands can never disagree because they judged by different limits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from .rules.recipes import RECIPES


@dataclass(frozen=True)
class Thresholds:
    """Limits of the transfer verdict, the coordinate check and the trust flags of a prediction."""

    # transfer verdict ------------------------------------------------------------------------------
    max_drift_per_doubling: float = 0.25
    """Largest drift of the optimal HP (octaves, i.e. log2 units) per doubling of the size that still counts
    as "stays put": over 16x of width (4 doublings) it adds up to one octave, a factor 2 in LR."""
    max_relative_regret: float = 0.01
    """Largest relative loss penalty at the largest size for using the smallest size's optimum."""
    resolution_factor: float = 2.0
    """A PASS needs the drift's interval inside +-(this x max_drift_per_doubling): otherwise the sweep is too
    noisy to tell a drifting optimum from a still one, and the verdict is UNRESOLVED."""
    confidence: float = 0.9
    """Level of every interval proxytune prints."""

    # coordinate check --------------------------------------------------------------------------------
    coord_slope_tolerance: float = 0.4
    """Largest |log-log slope| of a module's update size against width (or depth) that counts as
    size-independent. Under muP the built-in GPT measures |slope| <= 0.33 from width 32 up (2 seeds, 3 steps,
    lr 1e-3); under SP with one global LR the hidden layers measure +0.64 .. +1.9."""
    coord_lr: float = 1e-3
    """Base learning rate of the coordinate check: large enough to move every tensor, small enough that 3
    steps stay in the regime the check is about (at 1e-2 the smallest models already saturate)."""
    coord_seeds: int = 2

    # trust of a prediction ---------------------------------------------------------------------------
    max_trusted_interval_octaves: float = 2.0
    """A predicted HP whose interval spans more than this (a factor 4 for log2 HPs) is flagged."""
    max_width_extrapolation: float = 16.0
    """Extrapolating more than this factor beyond the largest swept width is flagged."""
    min_base_depth: int = 4
    """Shallowest base (blocks) from which a depth recipe's LR is carried to a deeper target without a warning,
    unless the base's residual multiplier is at most ``max_shallow_base_residual``. Measured in BENCHMARKS.md B2
    (reference GPT width 64, 600 steps, CompleteP with AdamW, 2 seeds): from base depth 2 with full-size
    branches the optimum rises by +1.07 octaves by depth 4 (90% +0.45..+1.60: FAIL); from base depth 4 it
    drifts +0.19 octave per doubling up to depth 32 (90% -0.11..+0.45: PASS); from base depth 2 with the
    residual multiplier at 0.5, +0.12 per doubling up to depth 8 (90% -0.18..+0.43: PASS)."""
    max_shallow_base_residual: float = 0.5
    """Largest residual multiplier (every branch's forward multiplier at the base) with which a base shallower
    than ``min_base_depth`` was measured to carry its LR across depth (B2)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


THRESHOLDS = Thresholds()


def shallow_base_warning(recipe: str, base_depth: int | None, target_depth: int | None,
                         residual: float = 1.0) -> str | None:
    """A warning when a depth recipe carries an LR to a deeper target from a base shallower than
    ``min_base_depth`` whose branches are at full size (``residual`` above ``max_shallow_base_residual``);
    None otherwise (no depth rule, no depth change, a deep enough base, or scaled-down branches)."""

    th = THRESHOLDS
    rec = RECIPES.get(recipe)
    if rec is None or rec.depth_alpha is None or not base_depth or base_depth >= th.min_base_depth:
        return None
    if (target_depth is not None and target_depth <= base_depth) or residual <= th.max_shallow_base_residual:
        return None
    return (f"base depth {base_depth} is below {th.min_base_depth} with the residual multiplier at {residual:g}: "
            f"from such a base {recipe}'s optimal LR was measured about an octave below deeper models' "
            f"(BENCHMARKS.md, B2). Use a base of {th.min_base_depth} or more blocks, or residual_mult "
            f"{th.max_shallow_base_residual:g} at the base (measured to transfer from depth 2), or sweep a depth "
            f"axis to see the drift on your model")

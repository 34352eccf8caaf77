"""Learning-rate schedules as pure functions of the step.

Every schedule returns a factor in [0, 1] that multiplies each parameter
group's peak LR. All start with a linear warmup from ``1/warmup`` to 1.

- ``constant``: 1 after warmup.
- ``cosine``: half-cosine from 1 to ``final_frac`` at the last step.
- ``linear``: straight line from 1 to ``final_frac``.
- ``wsd`` (warmup-stable-decay, "constant + cooldown", Hägele et al. 2024):
  1 until the last ``cooldown`` fraction of steps, then linear to ``final_frac``.
"""

from __future__ import annotations

import math


def lr_factor(step: int, steps: int, schedule: str = "cosine", warmup: int = 0, final_frac: float = 0.1,
              cooldown: float = 0.2) -> float:
    """LR multiplier for 0-based ``step`` of a run of ``steps`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay_steps = max(1, int(round(cooldown * steps)))
        start = steps - decay_steps
        if step < start:
            return 1.0
        progress = (step - start + 1) / decay_steps
        return 1.0 - (1.0 - final_frac) * progress
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup + 1) / span)
    if schedule == "cosine":
        return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1.0 - final_frac) * progress
    raise ValueError(f"unknown schedule {schedule!r}; valid: constant, cosine, linear, wsd")


def schedule_factors(steps: int, schedule: str = "cosine", warmup: int = 0, final_frac: float = 0.1,
                     cooldown: float = 0.2) -> list[float]:
    """The factor of every step of a run."""
    return [lr_factor(s, steps, schedule, warmup, final_frac, cooldown) for s in range(steps)]

"""The gradient noise scale of a run, measured as it trains (``TrainConfig.noise_scale``).

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training") define the simple noise scale
``B_simple = tr(Sigma) / |G|^2``: the per-example gradient covariance's trace over the squared true gradient. It
predicts the critical batch, beyond which a larger batch stops buying fewer steps, and (Li et al. 2024, "Surge
Phenomenon in Optimal Learning Rate and Batch Size Scaling") where Adam's optimal LR stops rising with the batch.

Their appendix A estimates both from gradient norms at two batch sizes, ``E|G_b|^2 = |G|^2 + tr(Sigma) / b``. Here
the two sizes are one step's batch and its halves: the batch's loss is back-propagated half by half (the summed
gradient is the full batch's, so training is unchanged up to float rounding), and the halves' gradients give
``|G_small|^2``. Single-step estimates are noisy; the run's value is the ratio of their means over the second half
of training (the noise scale grows as the loss falls, and a run's LR matters most late). Norms are taken over the
parameters as stored (in folded mode, the plan's units), as B_simple is defined for the plain gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


class NoiseScaleMeter:
    """Back-propagates a batch in two halves and keeps each step's estimates of ``|G|^2`` and ``tr(Sigma)``
    (per token: ``tokens_per_example`` tokens per row of the batch)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], tokens_per_example: int) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.tokens_per_example = tokens_per_example
        self.g2: list[float] = []
        self.trace: list[float] = []

    def backward(self, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
        """``loss_of(x, y)`` (a mean over the rows) back-propagated half by half; returns the batch's loss,
        detached. The parameters' ``.grad`` hold the full batch's gradient afterwards."""
        half = x.shape[0] // 2
        first = loss_of(x[:half], y[:half])
        (first / 2).backward()
        g1 = [p.grad.detach().clone() if p.grad is not None else None for p in self.params]
        second = loss_of(x[half:], y[half:])
        (second / 2).backward()
        n_big = n_small = 0.0
        for p, a in zip(self.params, g1):
            if p.grad is None:
                continue
            full = p.grad.detach().float()
            a = torch.zeros_like(full) if a is None else a.float()
            n_big += float((full * full).sum())
            # the halves' own gradients are 2 g1 and 2 (G - g1): their mean squared norm is |G_small|^2
            n_small += 2.0 * (float((a * a).sum()) + float(((full - a) ** 2).sum()))
        b_small = half * self.tokens_per_example
        # McCandlish et al. 2018, appendix A, with B_big = 2 B_small
        self.g2.append(2.0 * n_big - n_small)
        self.trace.append(2.0 * b_small * (n_small - n_big))
        return ((first.detach() + second.detach()) / 2)

    def value(self) -> float | None:
        """B_simple in tokens over the second half of the steps measured (None before 2 steps; ``inf`` when the
        true gradient's estimate is not positive: noise dominates)."""
        n = len(self.g2)
        if n < 2:
            return None
        g2 = sum(self.g2[n // 2:]) / (n - n // 2)
        trace = sum(self.trace[n // 2:]) / (n - n // 2)
        if not math.isfinite(g2) or not math.isfinite(trace):
            return None
        return trace / g2 if g2 > 0 else math.inf

"""The gradient noise scale measured while training (TrainConfig.noise_scale): unbiased on a problem whose answer
is known, training unchanged by the half-batch backward, and refused where it cannot run."""

from __future__ import annotations

import pytest
import torch

from proxytune.train import BatchError, TrainConfig, check_batchable, train
from proxytune.train.noise import NoiseScaleMeter


def test_the_meter_recovers_a_known_noise_scale():
    """Loss 0.5 |w - x|^2 over examples x ~ N(mu, sigma^2 I): the true gradient is w - mu and the per-example
    covariance sigma^2 I, so B_simple = d sigma^2 / |w - mu|^2. A missing factor of 2 in either estimate fails."""
    torch.manual_seed(0)
    d, sigma = 50, 2.0
    w = torch.nn.Parameter(torch.zeros(d))
    mu = torch.full((d,), 0.5)
    meter = NoiseScaleMeter([w], tokens_per_example=1)
    for _ in range(400):
        x = mu + sigma * torch.randn(64, d)
        meter.backward(lambda xs, ys: 0.5 * ((w - xs) ** 2).sum(dim=1).mean(), x, x)
        w.grad = None
    expect = d * sigma ** 2 / float((mu ** 2).sum())
    assert meter.value() == pytest.approx(expect, rel=0.1)
    # in tokens: an example of 4 tokens counts 4 in the batch, so the same gradients give 4x the noise scale
    x = mu + sigma * torch.randn(64, d)
    fresh, fresh4 = NoiseScaleMeter([w], 1), NoiseScaleMeter([w], 4)
    for m in (fresh, fresh4, fresh, fresh4):
        m.backward(lambda xs, ys: 0.5 * ((w - xs) ** 2).sum(dim=1).mean(), x, x)
        w.grad = None
    assert fresh4.value() == pytest.approx(4 * fresh.value())
    assert NoiseScaleMeter([w], 1).value() is None  # nothing measured yet


def _cfg(**over) -> TrainConfig:
    return TrainConfig(**{"model": "gpt", "model_options": {"head_dim": 8}, "width": 16, "depth": 1, "steps": 12,
                          "batch_size": 4, "seq_len": 16, "eval_every": 12, "eval_batches": 1, "lr": 3e-3,
                          "precision": "fp64", "data_options": {"max_bytes": 100_000}, **over})


def test_training_with_the_meter_is_the_same_training_and_reports_the_noise_scale():
    plain, measured = train(_cfg()), train(_cfg(noise_scale=True))
    assert plain.noise_scale is None
    assert measured.noise_scale is not None and measured.noise_scale > 0
    # the halves' gradients add up to the batch's: the same run, to float rounding
    assert measured.final_val_loss == pytest.approx(plain.final_val_loss, rel=1e-9)
    assert measured.train_losses == pytest.approx(plain.train_losses, rel=1e-9)
    assert measured.to_dict()["noise_scale"] == measured.noise_scale


def test_odd_batches_and_batched_groups_are_refused():
    with pytest.raises(ValueError, match="batch_size must be even"):
        _cfg(noise_scale=True, batch_size=3)
    with pytest.raises(BatchError, match="one by one"):
        check_batchable([_cfg(noise_scale=True, lr=1e-3), _cfg(noise_scale=True, lr=2e-3)])

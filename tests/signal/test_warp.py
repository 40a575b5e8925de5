"""The universal warp: the geometric kind of suspected trigger."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from onp.errors import ONPInputError
from onp.eval.metrics import predict
from onp.signal.warp import stamp_warp, universal_warp

SIDE = 12
BAR, SHIFTED = 5, 6  # the column every image lights, and the one the target class watches


def _bars(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, SIDE, SIDE, generator=generator) * 0.1
    images[:, :, :, BAR] = 0.9
    return images


def _column_model() -> nn.Module:
    """Class 0 sums column 5, class 1 (the target) sums column 6 with a larger weight: a warp
    moving the bar one pixel right is this model's backdoor."""
    linear = nn.Linear(SIDE * SIDE, 2, bias=False)
    weights = torch.zeros(2, 1, SIDE, SIDE)
    weights[0, :, :, BAR], weights[1, :, :, SHIFTED] = 1.0, 1.2
    with torch.no_grad():
        linear.weight.copy_(weights.flatten(1))
    return nn.Sequential(nn.Flatten(), linear)


def test_a_zero_field_is_the_identity_and_a_uniform_one_shifts_by_its_offset() -> None:
    images = _bars(4)
    torch.testing.assert_close(stamp_warp(images, torch.zeros(1, 2, 4, 4)), images)
    right = torch.zeros(1, 2, 4, 4)
    right[:, 0] = 1.0  # every pixel samples the pixel one to its right
    warped = stamp_warp(images, right)
    torch.testing.assert_close(warped[..., :-1], images[..., 1:])
    torch.testing.assert_close(warped[..., -1], images[..., -1])  # the border repeats
    assert warped.shape == images.shape


def test_the_fitted_warp_stays_in_its_bound_and_reaches_the_target() -> None:
    model, images = _column_model(), _bars(64)
    before = copy.deepcopy(model.state_dict())
    assert (predict(model, images) == 0).all()
    control = universal_warp(model, images, 1, max_shift=1.5, steps=80, batch_size=16)
    assert control.shape == (1, 2, 4, 4) and float(control.abs().max()) <= 1.5 + 1e-6
    warped = stamp_warp(images, control)
    assert float((predict(model, warped) == 1).float().mean()) > 0.9
    assert float(warped[..., SHIFTED].mean()) > float(warped[..., BAR].mean())  # bar moved right
    for key, value in model.state_dict().items():  # the model is not touched
        torch.testing.assert_close(value, before[key])
    again = universal_warp(model, images, 1, max_shift=1.5, steps=0, start=control * 2)
    assert float(again.abs().max()) <= 1.5 + 1e-6  # a start is clamped to the bound
    with pytest.raises(ONPInputError, match="max_shift"):
        universal_warp(model, images, 1, max_shift=0.0)
    with pytest.raises(ONPInputError, match="images"):
        universal_warp(model, images[0], 1)

"""The memory layout of the frozen copies that trigger fits and distillation run through."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def to_channels_last(model: ModuleT) -> ModuleT:
    """Put ``model``'s 4-D weights in the channels-last memory format, in place; return it."""
    # Module.to takes memory_format; torch's overloads leave it out.
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def channels_last_copy(model: ModuleT) -> ModuleT:
    """A deep copy of ``model`` with its 4-D weights in the channels-last memory format.

    The same function with faster convolutions on the CPU: a 60-step universal-trigger fit of
    the Fashion-MNIST ResNet (batch 64, eval mode, input gradients only) took 4.1-5.6 s instead
    of 4.9-7.8 s on 2 cores (``benchmarks/fit_layout_speed.py``, docs/research/repair.md). Inputs
    need no
    conversion: a conv whose weight is channels-last returns a channels-last output, and
    ``torch.flatten`` reads the logical order whatever the layout. Saving is unaffected
    (bundles store contiguous tensors).

    Meant for eval-mode use (frozen copies), where outputs and input gradients agree with the
    default layout's to float rounding (``tests/models/test_layout.py`` checks them against
    float64). Training keeps the default layout: with the repair's working copy in this layout
    (training then ran 10-30% faster), a repair test on a ResNet of width 4 (12x12 images)
    aborted with heap corruption inside oneDNN's convolution weight-gradient (torch 2.13 CPU;
    ``malloc``: corrupted double-linked list). The float32 gradient error of a training step,
    first suspected, is not the reason: at batch 64 it is ~2e-3 of the whole gradient against
    float64 in both layouts (``benchmarks/train_gradient_error.py``; not in the tests).
    """
    return to_channels_last(copy.deepcopy(model))

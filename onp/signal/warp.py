"""A targeted universal warp: the geometric kind of suspected trigger.

A patch (:mod:`onp.signal.synthesis`) and an additive perturbation
(:mod:`onp.signal.perturbation`) do not describe a warping trigger such as WaNet's (Nguyen &
Tran, ICLR 2021), which moves pixels by less than a pixel along a smooth field. One field of that
shape is fitted so that warped clean images of other classes are classified as the target: a
``[2, k, k]`` grid of control offsets (in pixels), upsampled bicubically to the image, each offset
bounded by ``max_shift`` pixels. A network without a warp backdoor is hard to fool this way, since
sub-pixel shifts are what its training augmentations already show it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from onp.errors import ONPInputError
from onp.signal.universal import check_images, fit_universal_trigger

log = logging.getLogger(__name__)

WARP_GRID_SIZE = 4  # k: side of the control grid; a smooth field, as WaNet's
# Largest offset of a pixel, in pixels. Among 0.5, 1 and 1.5 the smallest: on held-in defense
# images of the Fashion-MNIST seed-0 models a warp fitted at 0.5 reached the target on 100% of
# the WaNet model's images and on 3.1% of the BadNets model's (8.0% at 1, 25.1% at 1.5): larger
# warps also fool a net without a warp backdoor, and unlearning them would cost clean accuracy.
WARP_MAX_SHIFT = 0.5
WARP_STEPS = 300
WARP_BATCH_SIZE = 128


def stamp_warp(images: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Warp ``images`` by the field whose control offsets (in pixels) are ``control``.

    Shapes:
        images: ``[B, C, H, W]`` in ``[0, 1]``; control: ``[1, 2, k, k]`` (x then y offsets);
        returns ``[B, C, H, W]``.
    """
    _, _, height, width = images.shape
    control = control.to(images.device, images.dtype)
    offsets = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)],
                         device=images.device, dtype=images.dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=images.device, dtype=images.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=images.device, dtype=images.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    identity = torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)  # [1, H, W, 2]
    grid = identity + offsets.permute(0, 2, 3, 1) * scale
    grid = grid.expand(images.shape[0], -1, -1, -1)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                           align_corners=True)
    return warped.clamp(0.0, 1.0)


def universal_warp(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    max_shift: float = WARP_MAX_SHIFT,
    steps: int = WARP_STEPS,
    grid_size: int = WARP_GRID_SIZE,
    batch_size: int = WARP_BATCH_SIZE,
    seed: int = 0,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fit one warp field that sends ``images`` to ``target`` (Adam, offsets clamped).

    ``model`` is not modified (see :func:`onp.signal.universal.fit_universal_trigger`).

    Args:
        model: The classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
        images: Clean images of classes other than ``target``.
        target: The class to reach.
        max_shift: Largest control offset, in pixels (``> 0``).
        steps: Optimization steps (``0`` returns ``start`` clamped).
        grid_size: ``k``, the control grid's side (``>= 2``).
        batch_size: Images per step.
        seed: Seeds the start (small random offsets: the identity is a poor start for the
            gradient through bilinear sampling) and the batches.
        start: Control offsets to start from (a warm start); default small random ones.

    Returns:
        The control offsets, on the CPU.

    Shapes:
        images: ``[N, C, H, W]``; start and the result: ``[1, 2, k, k]``.
    """
    if max_shift <= 0 or steps < 0 or batch_size < 1 or grid_size < 2:
        raise ONPInputError(f"universal_warp: expected max_shift > 0, steps >= 0, batch_size "
                            f">= 1 and grid_size >= 2, found {max_shift}, {steps}, "
                            f"{batch_size}, {grid_size}")
    check_images("universal_warp", images)
    generator = torch.Generator().manual_seed(seed)
    if start is None:
        start = (torch.rand(1, 2, grid_size, grid_size, generator=generator) * 2 - 1) * (
            0.1 * max_shift)
    return fit_universal_trigger(model, images, target, start, max_shift, stamp_warp, steps,
                                 batch_size, generator, f"warp for class {target}")

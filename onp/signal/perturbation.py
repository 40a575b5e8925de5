"""A targeted universal adversarial perturbation: the additive kind of suspected trigger.

The mask-and-pattern trigger of :mod:`onp.signal.synthesis` models a patch. A blended trigger
(``x' = (1 - a) x + a n``) is an additive change spread over the whole image, which unlearning
a small patch need not remove. One perturbation ``d`` (``||d||_inf <= eps``) is optimized so
that ``clip(x + d)`` is classified as the target for clean images of other classes, as in the
inner step of I-BAU (Zeng et al., ICLR 2022).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from onp.errors import ONPInputError
from onp.signal.universal import check_images, fit_universal_trigger

log = logging.getLogger(__name__)

# Largest change per pixel. Chosen on held-in data among 0.05, 0.1 and 0.2 on the Fashion-MNIST
# BadNets and Blended ResNets (benchmarks/repair_settings.py, docs/research/repair.md): 0.2 had the
# best
# held-in CA minus a judge of fresh perturbations at all three bounds, at a cost of 0.9-1.8
# points of held-in CA against 0.1.
PERTURBATION_EPS = 0.2
PERTURBATION_STEPS = 300  # ~20 s on 2 cores for the default ResNet; success is ~1.0 by then
PERTURBATION_BATCH_SIZE = 128


def stamp_perturbation(images: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
    """``clip(images + perturbation, 0, 1)``.

    Shapes:
        images: ``[B, C, H, W]``; perturbation: ``[1, C, H, W]``; returns ``[B, C, H, W]``.
    """
    return (images + perturbation.to(images.device)).clamp(0.0, 1.0)


def universal_perturbation(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    eps: float = PERTURBATION_EPS,
    steps: int = PERTURBATION_STEPS,
    batch_size: int = PERTURBATION_BATCH_SIZE,
    seed: int = 0,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Optimize one perturbation that sends ``images`` to ``target`` (Adam, projected to eps).

    ``model`` is not modified (see :func:`onp.signal.universal.fit_universal_trigger`).

    Args:
        model: The classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
        images: Clean images of classes other than ``target``.
        target: The class to reach.
        eps: Largest change per pixel, in ``(0, 1]``.
        steps: Optimization steps (``0`` returns ``start`` projected).
        batch_size: Images per step.
        seed: Seeds the batches.
        start: Perturbation to start from (a warm start when the model changed a little);
            default zeros.

    Returns:
        The perturbation, on the CPU.

    Shapes:
        images: ``[N, C, H, W]``; start and the result: ``[1, C, H, W]``.
    """
    if not 0.0 < eps <= 1.0 or steps < 0 or batch_size < 1:
        raise ONPInputError(f"universal_perturbation: expected 0 < eps <= 1, steps >= 0 and "
                            f"batch_size >= 1, found {eps}, {steps}, {batch_size}")
    check_images("universal_perturbation", images)
    initial = torch.zeros(1, *images.shape[1:]) if start is None else start
    return fit_universal_trigger(model, images, target, initial, eps, stamp_perturbation, steps,
                                 batch_size, torch.Generator().manual_seed(seed),
                                 f"perturbation for class {target}")

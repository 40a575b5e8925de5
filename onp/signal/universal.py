"""The loop that fits a universal trigger: one set of parameters shared by every image.

The additive perturbation (:mod:`onp.signal.perturbation`) and the warp
(:mod:`onp.signal.warp`) differ only in how their parameters change an image and what bound
they keep to; both are fitted here, by Adam on the cross-entropy towards the target, with the
parameters clamped to the bound after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from onp.errors import ONPInputError
from onp.models.layout import channels_last_copy


def check_images(caller: str, images: torch.Tensor) -> None:
    """Raise a clear error unless ``images`` is a non-empty ``[N, C, H, W]`` batch."""
    if images.ndim != 4 or len(images) == 0:
        raise ONPInputError(f"{caller}: expected images [N, C, H, W] with N >= 1, "
                            f"found {list(images.shape)}")


def fit_universal_trigger(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    start: torch.Tensor,
    bound: float,
    stamp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    description: str,
) -> torch.Tensor:
    """Fit parameters so that ``stamp(images, params)`` is classified as ``target``.

    ``model`` is not modified (a frozen copy in eval mode is optimized through). Adam's learning
    rate is a tenth of the bound.

    Args:
        model: The classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
        images: Clean images of classes other than ``target``.
        target: The class to reach.
        start: The parameters to start from (clamped to the bound first).
        bound: Largest absolute value of any parameter (``> 0``).
        stamp: ``(images, params) -> images`` with the trigger.
        steps: Optimization steps (``0`` returns ``start`` clamped).
        batch_size: Images per step, drawn with ``generator``.
        generator: Draws the batches.
        description: The progress bar's label.

    Returns:
        The fitted parameters, on the CPU.

    Shapes:
        images: ``[N, C, H, W]``; start and the result: the parameters' own shape.
    """
    frozen = channels_last_copy(model).eval().requires_grad_(False)
    device = next(frozen.parameters()).device
    params = start.detach().cpu().clamp(-bound, bound).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=bound / 10)
    targets = torch.full((batch_size,), target, dtype=torch.long, device=device)
    for _ in tqdm(range(steps), desc=description, leave=False, mininterval=1.0):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        loss = F.cross_entropy(frozen(stamp(batch.to(device), params)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            params.clamp_(-bound, bound)
    return params.detach().cpu()

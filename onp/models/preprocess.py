"""Input adapter: maps ONP's ``[0, 1]`` images to what a model was trained on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InputAdapter(nn.Module):
    """Scale then normalize: ``y = (x * scale - mean) / std``, per channel.

    A Keras CSAW model trained on raw pixels uses ``scale=255``; one trained on ``x/255`` uses
    ``scale=1``. ``mean``/``std`` are in the scaled units.

    Shapes:
        input: ``[B, C, H, W]`` values in ``[0, 1]``; output: same shape.
    """

    def __init__(
        self, scale: float = 1.0, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, channels: int = 1,
    ) -> None:
        super().__init__()
        mean_t = torch.tensor(list(mean) if mean is not None else [0.0] * channels)
        std_t = torch.tensor(list(std) if std is not None else [1.0] * channels)
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.scale = float(scale)
        # Buffers, not parameters: fixed by the bundle, moved with .to(device), never trained.
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1).float(), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1).float(), persistent=False)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale raw pixels, then standardise each channel.

        Shapes:
            x: ``[B, C, H, W]`` raw pixels; returns the same shape, normalised.
        """
        return (x * self.scale - self.mean) / self.std

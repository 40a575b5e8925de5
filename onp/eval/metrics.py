"""Backdoor-defense metrics: clean accuracy, attack success rate, robust accuracy and DER.

All rates are fractions in ``[0, 1]``; reports multiply by 100.

Definitions (as in BackdoorBench, Wu et al. 2022):
- CA: share of clean test images classified as their label.
- ASR: share of poisoned test images whose true class differs from the attack target that are
  classified as the target.
- RA: share of those poisoned images classified as their true class.
- DER: ``[max(0, ASR_before - ASR_after) - max(0, CA_before - CA_after) + 1] / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_EVAL_BATCH = 512


@torch.no_grad()
def batched_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = DEFAULT_EVAL_BATCH
) -> torch.Tensor:
    """Outputs of ``model`` (put in eval mode) on ``images``, a batch at a time, on the CPU.

    The one batched-inference helper: predictions, reports and the detector use it.

    Shapes:
        images: ``[N, C, H, W]`` in ``[0, 1]``; returns ``[N, K]``.
    """
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i : i + batch_size].to(device)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = DEFAULT_EVAL_BATCH
) -> torch.Tensor:
    """Predicted classes of ``model`` (put in eval mode) on ``images``.

    Shapes:
        images: ``[N, C, H, W]`` in ``[0, 1]``; returns ``[N]`` int64 on the CPU.
    """
    if len(images) == 0:
        return torch.empty(0, dtype=torch.long)
    return batched_logits(model, images, batch_size).argmax(1)


def accuracy_of(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``predictions`` equal to ``labels`` (0.0 for empty inputs).

    Shapes:
        predictions, labels: ``[N]`` int64.
    """
    if len(labels) == 0:
        return 0.0
    return float((predictions == labels).float().mean())


def attack_success_rate(
    predictions: torch.Tensor, true_labels: torch.Tensor, target_labels: torch.Tensor
) -> float:
    """ASR: among inputs whose true class is not their target, the share predicted as the target.

    Shapes:
        predictions, true_labels, target_labels: ``[N]`` int64.
    """
    eligible = true_labels != target_labels
    return accuracy_of(predictions[eligible], target_labels[eligible])


def robust_accuracy(
    predictions: torch.Tensor, true_labels: torch.Tensor, target_labels: torch.Tensor
) -> float:
    """RA: among poisoned inputs whose true class is not their target, the share predicted right.

    Shapes:
        predictions, true_labels, target_labels: ``[N]`` int64.
    """
    eligible = true_labels != target_labels
    return accuracy_of(predictions[eligible], true_labels[eligible])


def defense_effectiveness_rating(
    ca_before: float, asr_before: float, ca_after: float, asr_after: float
) -> float:
    """DER in ``[0, 1]``: 1 = ASR removed at no accuracy cost, 0.5 = no change."""
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0


@dataclass(frozen=True)
class BackdoorMetrics:
    """CA, ASR and RA of one model, as fractions."""

    clean_accuracy: float
    attack_success_rate: float
    robust_accuracy: float

    def as_percent(self) -> dict[str, float]:
        """``{"CA": ..., "ASR": ..., "RA": ...}`` in percent, rounded to 0.01."""
        return {
            "CA": round(100 * self.clean_accuracy, 2),
            "ASR": round(100 * self.attack_success_rate, 2),
            "RA": round(100 * self.robust_accuracy, 2),
        }


def evaluate_backdoor(
    model: nn.Module,
    clean_images: torch.Tensor,
    clean_labels: torch.Tensor,
    poisoned_images: torch.Tensor,
    true_labels: torch.Tensor,
    target_labels: torch.Tensor,
) -> BackdoorMetrics:
    """Compute CA on clean test data and ASR/RA on poisoned test data.

    Shapes:
        clean_images: ``[N, C, H, W]``; clean_labels: ``[N]``;
        poisoned_images: ``[M, C, H, W]``; true_labels, target_labels: ``[M]``.
    """
    clean_pred = predict(model, clean_images)
    poison_pred = predict(model, poisoned_images)
    return BackdoorMetrics(
        clean_accuracy=accuracy_of(clean_pred, clean_labels),
        attack_success_rate=attack_success_rate(poison_pred, true_labels, target_labels),
        robust_accuracy=robust_accuracy(poison_pred, true_labels, target_labels),
    )

"""Plain fine-tuning: train the suspect model on the clean defense data and nothing else.

The simplest baseline every backdoor paper reports (Liu et al. 2018 show it alone leaves most
backdoors in place). It trains on the fitting part of the defense data through the project's one
training loop, at a constant small learning rate (:mod:`onp.defenses.defaults`), and reports the
held-in accuracy of the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import fine_tune, finetune_settings, held_in_accuracy, split_for_selection


@dataclass(frozen=True)
class FinetuneSettings:
    """Settings of :class:`Finetune` (defaults: :mod:`onp.defenses.defaults`).

    Attributes:
        epochs: Passes over the fitting part of the defense data.
        lr: Constant SGD learning rate.
        augment: Flip/shift augmentation.
        held_in_fraction: Share of the defense data held in (only reported on).
    """

    epochs: int = defaults.FINETUNE_EPOCHS
    lr: float = defaults.FINETUNE_LR
    augment: bool = False
    held_in_fraction: float = defaults.HELD_IN_FRACTION


@register_defense
class Finetune(Defense):
    """Fine-tune every weight on the clean defense data."""

    name = "finetune"
    settings_type = FinetuneSettings
    settings: FinetuneSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        before = held_in_accuracy(model, held_in)
        losses = fine_tune(model, fit, finetune_settings(s.epochs, s.lr, s.augment), seed,
                           "fine-tune")
        return RepairResult(model, {
            "epochs": s.epochs, "losses": [round(v, 4) for v in losses],
            "held_in_accuracy_before": round(before, 4),
            "held_in_accuracy": round(held_in_accuracy(model, held_in), 4),
        })

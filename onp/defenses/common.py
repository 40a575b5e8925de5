"""Plumbing the baseline defenses share, written once.

- the split of the defense data into a fitting part and a held-in part
  (:func:`split_for_selection`), and accuracy on the held-in part;
- the scan that picks the largest pruning whose held-in accuracy stays within a set drop
  (:func:`largest_within_drop`): every threshold and stopping point of the baselines is chosen
  with it, on defense data only, never on test data;
- fine-tuning through the project's one training loop (:func:`fine_tune`);
- tracing helpers: the forward order of modules and the last convolutional channel group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from onp.data.splits import split_defense
from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.errors import ONPInputError
from onp.eval.metrics import accuracy_of, predict
from onp.graph.groups import ChannelGroup, ChannelGroups
from onp.graph.mask import ChannelMask, full_mask
from onp.training import TrainSettings, train_classifier

log = logging.getLogger(__name__)

CandidateT = TypeVar("CandidateT")


class DefenseSplit(NamedTuple):
    """The defense data, split class by class.

    Attributes:
        fit: What masks are learned and models fine-tuned on.
        held_in: What every threshold and stopping choice is made on.
    """

    fit: ImageSet
    held_in: ImageSet


def split_for_selection(
    defense: ImageSet, seed: int, held_in_fraction: float = defaults.HELD_IN_FRACTION
) -> DefenseSplit:
    """Split ``defense`` into a fitting part and a held-in part (see :func:`split_defense`).

    Raises:
        ONPInputError: If either part would be empty.
    """
    if not 0.0 < held_in_fraction < 1.0:
        raise ONPInputError(f"held_in_fraction must lie in (0, 1), found {held_in_fraction}")
    fit, held_in = split_defense(defense, held_in_fraction, seed)
    if len(fit) == 0 or len(held_in) == 0:
        raise ONPInputError(
            f"defense data: {len(defense)} images leave an empty fitting or held-in part at "
            f"held_in_fraction {held_in_fraction}; give more images or another fraction"
        )
    return DefenseSplit(fit, held_in)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter."""
    return next(model.parameters()).device


def held_in_accuracy(model: nn.Module, held_in: ImageSet) -> float:
    """Accuracy of ``model`` (put in eval mode) on ``held_in``, in ``[0, 1]``."""
    return accuracy_of(predict(model, held_in.images), held_in.labels)


@dataclass(frozen=True)
class ScanResult(Generic[CandidateT]):
    """Outcome of :func:`largest_within_drop`.

    Attributes:
        chosen: The largest candidate within the drop, or ``None`` (prune nothing).
        baseline: Held-in accuracy of the unpruned model.
        curve: ``(candidate, held-in accuracy)`` for every candidate evaluated, in scan order.
        min_accuracy: The accuracy a candidate had to keep: ``baseline - max_drop``.
    """

    chosen: CandidateT | None
    baseline: float
    curve: tuple[tuple[CandidateT, float], ...]
    min_accuracy: float

    def describe(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "chosen": self.chosen, "held_in_baseline": round(self.baseline, 4),
            "held_in_min_accuracy": round(self.min_accuracy, 4),
            "curve": [[c, round(a, 4)] for c, a in self.curve],
        }


def largest_within_drop(
    candidates: Sequence[CandidateT],
    accuracy: Callable[[CandidateT], float],
    baseline: float,
    max_drop: float,
    description: str = "pruning scan",
) -> ScanResult[CandidateT]:
    """Scan prunings from mild to strong and keep the last one within ``max_drop`` of baseline.

    The scan stops at the first candidate whose held-in accuracy falls below
    ``baseline - max_drop``, as Fine-Pruning stops pruning (Liu et al. 2018) and BackdoorBench's
    RNP stops its threshold scan.

    Args:
        candidates: Prunings ordered from mildest to strongest.
        accuracy: Held-in accuracy of a candidate, in ``[0, 1]``.
        baseline: Held-in accuracy of the unpruned model.
        max_drop: Tolerated accuracy drop, a fraction (0.04 = 4 points).
        description: Progress-bar label.

    Returns:
        The chosen candidate (``None`` if even the first drops too much) and the curve.
    """
    if max_drop < 0:
        raise ONPInputError(f"{description}: max_drop must be >= 0, found {max_drop}")
    floor = baseline - max_drop
    chosen: CandidateT | None = None
    curve: list[tuple[CandidateT, float]] = []
    for candidate in tqdm(candidates, desc=description, leave=False, mininterval=1.0):
        value = accuracy(candidate)
        curve.append((candidate, value))
        if value < floor:
            break
        chosen = candidate
    log.info("%s: baseline %.3f, chose %s after %d candidates", description, baseline, chosen,
             len(curve))
    return ScanResult(chosen, baseline, tuple(curve), floor)


def prune_first(groups: ChannelGroups, order: torch.Tensor, count: int) -> ChannelMask:
    """The mask that prunes the first ``count`` nodes of ``order`` (``[K]`` int64 node ids)."""
    mask = full_mask(groups)
    mask[order[:count]] = False
    return mask


def finetune_settings(epochs: int, lr: float, augment: bool = False) -> TrainSettings:
    """Fine-tuning settings: SGD at a constant rate (see :mod:`onp.defenses.defaults`)."""
    return TrainSettings(
        epochs=epochs, batch_size=defaults.FINETUNE_BATCH, lr=lr,
        momentum=defaults.FINETUNE_MOMENTUM, weight_decay=defaults.FINETUNE_WEIGHT_DECAY,
        augment=augment, schedule="constant",
    )


def fine_tune(
    model: nn.Module, data: ImageSet, settings: TrainSettings, seed: int, description: str
) -> list[float]:
    """Fine-tune ``model`` in place on ``data`` with :func:`onp.training.train_classifier`.

    Returns:
        The mean loss of each epoch (empty for zero epochs).
    """
    if settings.epochs <= 0:
        return []
    return train_classifier(model, data.images, data.labels, settings, seed=seed,
                            description=description)


def forward_order(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Position of each named module's first call in one forward pass (eval mode, no grad)."""
    order: dict[str, int] = {}

    def record(name: str) -> None:  # a forward hook returning a value would replace the output
        order.setdefault(name, len(order))

    hooks = [
        module.register_forward_hook(lambda _m, _i, _o, name=name: record(name))
        for name, module in model.named_modules() if name
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return order


def last_conv_group(model: nn.Module, groups: ChannelGroups) -> ChannelGroup:
    """The convolutional group whose channels are written last: Fine-Pruning's "last layer".

    Groups are ordered by their *first* producer, so a residual stream (written by every block of
    a stage) would come before the inner channels of the stage's last block; the group whose
    last mask point runs last is the one the classifier head reads.

    Raises:
        ONPInputError: If the model has no convolutional group.
    """
    conv = [g for g in groups.groups if g.kind == "conv"]
    if not conv:
        raise ONPInputError("Fine-Pruning: the model has no convolutional channel group")
    order = forward_order(model, groups.input_shape)
    return max(conv, key=lambda g: max(order.get(name, -1) for name in g.mask_points))

"""Fine-Pruning.

Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018.

Backdoor neurons stay dormant on clean inputs, so the defense prunes the channels of the last
convolutional layer in increasing order of their mean activation on clean data, stops when
accuracy on held-out clean data has dropped by a set tolerance, and fine-tunes the pruned net.

Here the "last convolutional layer" is the convolutional channel group the classifier head reads
(:func:`~onp.defenses.common.last_conv_group`; in a ResNet, the residual stream of the last
stage, whose channels every block of that stage writes), a channel's activation is the mean of
what the head's layer reads from it (post-ReLU, pooled or flattened), the tolerance is measured
on the held-in defense split, and pruning zeroes the channel at every mask point of the group,
during fine-tuning (forward hooks) and after it (baked into the weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from onp.data.types import ImageSet, image_shape
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import (
    fine_tune,
    finetune_settings,
    forward_order,
    held_in_accuracy,
    largest_within_drop,
    last_conv_group,
    model_device,
    prune_first,
    split_for_selection,
)
from onp.errors import ONPInputError
from onp.eval.metrics import DEFAULT_EVAL_BATCH
from onp.graph.groups import ChannelGroup, trace_groups
from onp.graph.mask import apply_mask, bake_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinePruningSettings:
    """Settings of :class:`FinePruning` (defaults: :mod:`onp.defenses.defaults`).

    Attributes:
        max_drop: Tolerated drop of held-in accuracy while pruning, a fraction.
        step_fraction: Channels pruned per scan step, as a share of the layer (at least one).
        max_fraction: Largest share of the layer the scan may prune.
        finetune_epochs: Fine-tuning epochs after pruning (0: prune only).
        finetune_lr: Constant SGD learning rate of the fine-tuning.
        augment: Flip/shift augmentation while fine-tuning.
        held_in_fraction: Share of the defense data held in for the stopping choice.
    """

    max_drop: float = defaults.FINE_PRUNING_MAX_DROP
    step_fraction: float = defaults.FINE_PRUNING_STEP_FRACTION
    max_fraction: float = defaults.FINE_PRUNING_MAX_FRACTION
    finetune_epochs: int = defaults.FINETUNE_EPOCHS
    finetune_lr: float = defaults.FINETUNE_LR
    augment: bool = False
    held_in_fraction: float = defaults.HELD_IN_FRACTION


@torch.no_grad()
def mean_activations(
    model: nn.Module, group: ChannelGroup, images: torch.Tensor,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> torch.Tensor:
    """Mean clean activation of each channel of ``group``, as its last-run consumer reads it.

    The consumer's input is ``[B, C, H, W]`` for a conv (averaged over images and positions) or
    ``[B, C * k]`` for a dense layer after a channels-first flatten (averaged over images and the
    ``k`` positions of each channel).

    Shapes:
        images: ``[N, C, H, W]`` in ``[0, 1]``; returns ``[group.size]`` float on the CPU.

    Raises:
        ONPInputError: If the group has no consumer or its input does not split into channels.
    """
    if not group.consumers:
        raise ONPInputError(f"channel group {group.index} has no consumer to read activations at")
    order = forward_order(model, image_shape(images))
    consumer = max(group.consumers, key=lambda name: order.get(name, -1))
    module = dict(model.named_modules())[consumer]
    total = torch.zeros(group.size, dtype=torch.float64)
    count = 0

    def accumulate(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal count
        x = inputs[0]
        if x.ndim == 2:
            if x.shape[1] % group.size:
                raise ONPInputError(
                    f"{consumer}: reads {x.shape[1]} features, not a multiple of the "
                    f"{group.size} channels of group {group.index}"
                )
            x = x.view(x.shape[0], group.size, -1)
        per_channel = x.transpose(0, 1).reshape(group.size, -1)
        total.add_(per_channel.double().sum(1).cpu())
        count += per_channel.shape[1]

    hook = module.register_forward_pre_hook(accumulate)
    model.eval()
    device = model_device(model)
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size].to(device))
    finally:
        hook.remove()
    return (total / max(count, 1)).float()


@register_defense
class FinePruning(Defense):
    """Prune the last conv layer's least-active channels on held-in accuracy, then fine-tune."""

    name = "fine-pruning"
    settings_type = FinePruningSettings
    settings: FinePruningSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        groups = trace_groups(model, defense.meta.image_shape)
        group = last_conv_group(model, groups)
        activations = mean_activations(model, group, fit.images)
        # Nodes of the group, least active first (Fine-Pruning's pruning order).
        order = groups.offsets[group.index] + torch.argsort(activations, stable=True)
        step = max(1, round(s.step_fraction * group.size))
        counts = list(range(step, int(s.max_fraction * group.size) + 1, step))
        baseline = held_in_accuracy(model, held_in)
        handle = apply_mask(model, groups, prune_first(groups, order, 0))

        def accuracy(count: int) -> float:
            handle.update(prune_first(groups, order, count))
            return held_in_accuracy(model, held_in)

        scan = largest_within_drop(counts, accuracy, baseline, s.max_drop, "fine-pruning scan")
        pruned = scan.chosen or 0
        mask = prune_first(groups, order, pruned)
        handle.update(mask)
        losses = fine_tune(model, fit, finetune_settings(s.finetune_epochs, s.finetune_lr,
                                                         s.augment), seed, "fine-pruning tune")
        handle.remove()
        bake_mask(model, groups, mask)
        info = {
            "layer": {"group": group.index, "producers": list(group.producers),
                      "size": group.size},
            "activations": [round(float(a), 5) for a in activations],
            "pruned": pruned, "pruned_nodes": order[:pruned].tolist(), "scan": scan.describe(),
            "finetune_losses": [round(v, 4) for v in losses],
            "held_in_accuracy": round(held_in_accuracy(model, held_in), 4),
        }
        log.info("fine-pruning: pruned %d of %d channels of group %d", pruned, group.size,
                 group.index)
        return RepairResult(model, info)

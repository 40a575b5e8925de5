"""Random pruning: a control that prunes as many channels as a pruning defense, at random.

A share of all channel nodes (:class:`~onp.graph.groups.ChannelGroups`) is drawn uniformly with
the run's seed (never the last live channel of a group, which would cut the network) and zeroed
at every mask point of its group (:func:`onp.graph.mask.bake_mask`).
A pruning defense that does no better than this control has not found the backdoor. Optional
fine-tuning afterwards keeps the pruned channels at zero (the mask stays on while training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import fine_tune, finetune_settings, held_in_accuracy, split_for_selection
from onp.errors import ONPInputError
from onp.graph.groups import ChannelGroups, trace_groups
from onp.graph.mask import ChannelMask, apply_mask, bake_mask, full_mask


def random_node_mask(groups: ChannelGroups, count: int, seed: int) -> ChannelMask:
    """Prune ``count`` nodes drawn uniformly with ``seed``, keeping one channel in every group.

    Returns:
        ``[num_nodes]`` bool mask, ``False`` for the pruned nodes (fewer than ``count`` only if
        every group is down to one channel).
    """
    generator = torch.Generator().manual_seed(seed)
    mask = full_mask(groups)
    alive = torch.tensor([g.size for g in groups.groups])
    pruned = 0
    for node in torch.randperm(groups.num_nodes, generator=generator).tolist():
        if pruned >= count:
            break
        group = int(groups.node_group[node])
        if alive[group] > 1:
            mask[node] = False
            alive[group] -= 1
            pruned += 1
    return mask


@dataclass(frozen=True)
class RandomPruningSettings:
    """Settings of :class:`RandomPruning`.

    Attributes:
        fraction: Share of all channel nodes to prune, in ``[0, 1)``.
        finetune_epochs: Fine-tuning epochs after pruning (default 0: prune only).
        finetune_lr: Constant SGD learning rate of the fine-tuning.
        held_in_fraction: Share of the defense data held in (only reported on).
    """

    fraction: float = defaults.RANDOM_PRUNING_FRACTION
    finetune_epochs: int = 0
    finetune_lr: float = defaults.FINETUNE_LR
    held_in_fraction: float = defaults.HELD_IN_FRACTION


@register_defense
class RandomPruning(Defense):
    """Prune a fixed share of channel nodes drawn at random."""

    name = "random-pruning"
    settings_type = RandomPruningSettings
    settings: RandomPruningSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        if not 0.0 <= s.fraction < 1.0:
            raise ONPInputError(f"random-pruning: fraction must lie in [0, 1), found {s.fraction}")
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        groups = trace_groups(model, defense.meta.image_shape)
        mask = random_node_mask(groups, round(s.fraction * groups.num_nodes), seed)
        pruned = torch.nonzero(~mask).flatten()
        handle = apply_mask(model, groups, mask)
        losses = fine_tune(model, fit, finetune_settings(s.finetune_epochs, s.finetune_lr),
                           seed, "random-pruning tune")
        handle.remove()
        bake_mask(model, groups, mask)
        return RepairResult(model, {
            "pruned": len(pruned), "num_nodes": groups.num_nodes, "pruned_nodes": pruned.tolist(),
            "finetune_losses": [round(v, 4) for v in losses],
            "held_in_accuracy": round(held_in_accuracy(model, held_in), 4),
        })

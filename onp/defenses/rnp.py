"""RNP: Reconstructive Neuron Pruning.

Li et al., "Reconstructive Neuron Pruning for Backdoor Defense", ICML 2023; official code
bboylyg/RNP.

Unlearning a backdoored model on clean data (gradient ascent) destroys the clean features first
and leaves the backdoor; recovering the unlearned model's clean accuracy with a neuron mask alone
then keeps the clean neurons and leaves the backdoor neurons' mask small. RNP:

1. *unlearns* a copy: SGD ascent on the clean cross-entropy until its accuracy is at most
   ``clean_threshold`` (or ``unlearn_epochs`` pass), checked after every step (see
   :func:`unlearn`);
2. *recovers*: learns a mask in ``[0, 1]`` per neuron on the unlearned copy, weights frozen;
3. *prunes the original model* by the mask: the lowest-valued neurons, or those under a
   threshold.

Neurons are masked at the channel groups' soft points (:mod:`onp.defenses.neuron_masks`), one
value per BatchNorm channel by default as in the paper, or per channel-group node
(``granularity="node"``); nets without BatchNorm have their conv outputs masked. Steps 1-2 use
the fitting part of the defense data; how much to prune is chosen on the held-in part. The
official code clips the ascent gradient before computing it (so never); here it is clipped
after.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import model_device, split_for_selection
from onp.defenses.neuron_masks import (
    MaskPruningSettings,
    MaskUnits,
    SoftMask,
    mask_units,
    prune_and_describe,
)
from onp.graph.groups import trace_groups

log = logging.getLogger(__name__)

MOMENTUM = 0.9  # SGD momentum of unlearning and of the mask (main.py)


@dataclass(frozen=True)
class RnpSettings(MaskPruningSettings):
    """Settings of :class:`RNP` (defaults: the official code's, see :mod:`onp.defenses.defaults`).

    Attributes:
        unlearn_lr: SGD step size of the ascent.
        unlearn_epochs: Most ascent epochs.
        unlearn_milestones: Epochs at which the ascent rate is divided by 10.
        clean_threshold: Unlearning stops once training accuracy is at most this.
        grad_clip: Largest L2 norm of the ascent gradient.
        recover_lr: SGD step size of the mask.
        recover_epochs: Mask-recovery epochs.
        alpha: Scale of the recovery loss.
        batch_size: Images per batch.

    The mask-pruning and held-in fields (``pruning_by`` ... ``granularity``) and the derived
    ``pruning`` come from :class:`~onp.defenses.neuron_masks.MaskPruningSettings`.
    """

    unlearn_lr: float = defaults.RNP_UNLEARN_LR
    unlearn_epochs: int = defaults.RNP_UNLEARN_EPOCHS
    unlearn_milestones: tuple[int, ...] = defaults.RNP_UNLEARN_MILESTONES
    clean_threshold: float = defaults.RNP_CLEAN_THRESHOLD
    grad_clip: float = defaults.RNP_GRAD_CLIP
    recover_lr: float = defaults.RNP_RECOVER_LR
    recover_epochs: int = defaults.RNP_RECOVER_EPOCHS
    alpha: float = defaults.RNP_ALPHA
    batch_size: int = defaults.RNP_BATCH


def _batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    return list(torch.split(order, batch_size))


def unlearn(
    model: nn.Module, fit: ImageSet, s: RnpSettings, seed: int
) -> tuple[nn.Module, list[float]]:
    """Gradient ascent on a copy of ``model`` until its clean accuracy is low.

    The official code checks the epoch's running accuracy after each epoch over its 500 images
    (4 steps of 128). With a few thousand defense images an epoch is 20 steps or more and that
    check overshoots: our Fashion-MNIST ResNet went from 70% to 8% running accuracy in one epoch
    and reached a clean cross-entropy near 200, from which no mask recovers. So the accuracy of
    each batch, measured in its ascent step, is checked after every step instead.

    Returns:
        The unlearned copy and the accuracy of each ascent step's batch.
    """
    work = copy.deepcopy(model).train()
    for param in work.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.SGD(work.parameters(), lr=s.unlearn_lr, momentum=MOMENTUM,
                                weight_decay=defaults.FINETUNE_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(s.unlearn_milestones), gamma=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    device = model_device(work)
    accuracies: list[float] = []
    for _ in tqdm(range(s.unlearn_epochs), desc="rnp unlearn", leave=False):
        for idx in _batches(len(fit), s.batch_size, generator):
            x, y = fit.images[idx].to(device), fit.labels[idx].to(device)
            output = work(x)
            loss = F.cross_entropy(output, y)
            optimizer.zero_grad(set_to_none=True)
            (-loss).backward()
            nn.utils.clip_grad_norm_(work.parameters(), max_norm=s.grad_clip)
            optimizer.step()
            accuracies.append(float((output.argmax(1) == y).float().mean()))
            if accuracies[-1] <= s.clean_threshold:
                break
        else:
            scheduler.step()
            continue
        break
    log.info("rnp: unlearned in %d steps, last batch accuracy %.3f", len(accuracies),
             accuracies[-1] if accuracies else float("nan"))
    return work, accuracies


def recover_mask(
    unlearned: nn.Module, units: MaskUnits, fit: ImageSet, s: RnpSettings, seed: int
) -> tuple[torch.Tensor, list[float]]:
    """Learn a neuron mask that recovers the unlearned model's clean accuracy.

    Returns:
        ``[units.count]`` float mask values in ``[0, 1]`` (CPU), and each epoch's mean loss.
    """
    unlearned.train()
    for param in unlearned.parameters():
        param.requires_grad_(False)
    soft = SoftMask(unlearned, units)
    optimizer = torch.optim.SGD([soft.mask], lr=s.recover_lr, momentum=MOMENTUM)
    generator = torch.Generator().manual_seed(seed + 1)
    device = model_device(unlearned)
    losses: list[float] = []
    for _ in tqdm(range(s.recover_epochs), desc="rnp recover", leave=False):
        total = 0.0
        batches = _batches(len(fit), s.batch_size, generator)
        for idx in batches:
            x, y = fit.images[idx].to(device), fit.labels[idx].to(device)
            loss = s.alpha * F.cross_entropy(unlearned(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            soft.clip(0.0)
            total += float(loss.detach())
        losses.append(total / max(len(batches), 1))
    soft.remove()
    return soft.mask.detach().cpu(), losses


@register_defense
class RNP(Defense):
    """Unlearn, recover a neuron mask, and prune the original model by it."""

    name = "rnp"
    settings_type = RnpSettings
    settings: RnpSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        groups = trace_groups(model, defense.meta.image_shape)
        units = mask_units(model, groups, s.granularity)
        unlearned, unlearn_accuracy = unlearn(model, fit, s, seed)
        values, recover_losses = recover_mask(unlearned, units, fit, s, seed)
        del unlearned
        info: dict[str, Any] = {
            "unlearn_steps": len(unlearn_accuracy),
            "unlearn_accuracy": [round(a, 4) for a in unlearn_accuracy],
            "recover_losses": [round(v, 4) for v in recover_losses],
            **prune_and_describe(model, units, values, held_in, s, "rnp"),
        }
        return RepairResult(model, info)

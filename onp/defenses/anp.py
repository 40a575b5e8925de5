"""ANP: Adversarial Neuron Pruning.

Wu & Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep Models", NeurIPS 2021; official
code csdongxian/ANP_backdoor.

Backdoored networks collapse under small adversarial perturbations of their neurons, and the
neurons that collapse them are the backdoor's. ANP learns a mask ``m`` in ``[0, 1]`` per neuron
that keeps the network accurate *and* robust to the worst multiplicative perturbation
``delta, xi`` in ``[-eps, eps]`` (one signed-gradient step from a random start per batch)::

    min_m  alpha * L(m, 0) + (1 - alpha) * max_{delta, xi} L(m + delta, 1 + xi)

and prunes the neurons with small mask values. Neurons are masked and perturbed at the channel
groups' soft points (:mod:`onp.defenses.neuron_masks`): the BatchNorm scale and shift when
present, the conv/dense output otherwise; one value per BatchNorm channel by default, as the
paper, or one per channel-group node (``granularity="node"``). The mask is learned on a copy,
on the fitting part of the defense data; how many units to prune (a count of the lowest mask
values, or a threshold) is chosen on the held-in part (the most within ``max_drop``), and the
original weights are pruned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

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

MASK_MOMENTUM = 0.9  # SGD momentum of the mask (optimize_mask_cifar.py)


@dataclass(frozen=True)
class AnpSettings(MaskPruningSettings):
    """Settings of :class:`ANP` (defaults: the official code's, see :mod:`onp.defenses.defaults`).

    Attributes:
        eps: Bound of the neuron perturbation.
        steps: Signed-gradient steps of the perturbation per batch.
        alpha: Weight of the natural loss.
        mask_lr: SGD step size of the mask.
        iterations: Mask-optimization batches.
        batch_size: Images per batch (drawn with replacement, as the official sampler does).

    The mask-pruning and held-in fields (``pruning_by`` ... ``granularity``) and the derived
    ``pruning`` come from :class:`~onp.defenses.neuron_masks.MaskPruningSettings`.
    """

    eps: float = defaults.ANP_EPS
    steps: int = defaults.ANP_STEPS
    alpha: float = defaults.ANP_ALPHA
    mask_lr: float = defaults.ANP_MASK_LR
    iterations: int = defaults.ANP_ITERATIONS
    batch_size: int = defaults.ANP_BATCH


def _perturb(
    model: nn.Module, soft: SoftMask, x: torch.Tensor, y: torch.Tensor, s: AnpSettings,
    generator: torch.Generator,
) -> None:
    """Set ``soft``'s perturbation to a worst case found by signed gradient ascent on the loss."""
    soft.reset_perturbation(s.eps, generator)
    soft.perturbed = True
    step = s.eps / max(s.steps, 1)
    for _ in range(s.steps):
        loss = F.cross_entropy(model(x), y)
        grad_delta, grad_xi = torch.autograd.grad(loss, [soft.delta, soft.xi])
        with torch.no_grad():
            soft.delta.add_(step * grad_delta.sign())
            soft.xi.add_(step * grad_xi.sign())
        soft.clip(s.eps)


def optimize_mask(
    model: nn.Module, units: MaskUnits, fit: ImageSet, s: AnpSettings, seed: int
) -> torch.Tensor:
    """Learn ANP's neuron mask on a copy of ``model`` (``model`` is not changed).

    Returns:
        ``[units.count]`` float mask values in ``[0, 1]``, on the CPU.
    """
    work = copy.deepcopy(model).train()  # the official code trains the mask in training mode
    for param in work.parameters():
        param.requires_grad_(False)
    soft = SoftMask(work, units)
    optimizer = torch.optim.SGD([soft.mask], lr=s.mask_lr, momentum=MASK_MOMENTUM)
    generator = torch.Generator().manual_seed(seed)
    device = model_device(work)
    bar = tqdm(range(s.iterations), desc="anp mask", leave=False, mininterval=1.0)
    for _ in bar:
        idx = torch.randint(0, len(fit), (s.batch_size,), generator=generator)
        x, y = fit.images[idx].to(device), fit.labels[idx].to(device)
        loss_rob = torch.zeros((), device=device)
        if s.eps > 0:
            _perturb(work, soft, x, y, s, generator)
            loss_rob = F.cross_entropy(work(x), y)
        soft.perturbed = False
        loss_nat = F.cross_entropy(work(x), y)
        loss = s.alpha * loss_nat + (1 - s.alpha) * loss_rob
        optimizer.zero_grad(set_to_none=True)
        soft.mask.grad = torch.autograd.grad(loss, [soft.mask])[0]
        optimizer.step()
        soft.clip(s.eps)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    soft.remove()
    return soft.mask.detach().cpu()


@register_defense
class ANP(Defense):
    """Learn neuron masks robust to adversarial neuron perturbation; prune small mask values."""

    name = "anp"
    settings_type = AnpSettings
    settings: AnpSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        groups = trace_groups(model, defense.meta.image_shape)
        units = mask_units(model, groups, s.granularity)
        values = optimize_mask(model, units, fit, s, seed)
        return RepairResult(model, prune_and_describe(model, units, values, held_in, s, "anp"))

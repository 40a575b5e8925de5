"""Shared Adversarial Unlearning (SAU; Wei et al., NeurIPS 2023) at its authors' defaults.

B is kept as a frozen reference; a copy is purified. For each batch of clean fitting images:

1. **Shared adversarial examples**: per-image perturbations, started at the L-inf bound and
   moved by 5 signed-gradient steps of 0.2, that make both the copy and the reference leave their
   own answers (``beta_1``-weighted cross-entropy ascent on the images not yet flipped) and agree
   with each other (``beta_2``-weighted Jensen-Shannon divergence on the images not yet shared).
2. **Unlearning**: one Adam step on ``lambda_1 * CE(clean) + lambda_2 * CE(perturbed) +
   lambda_3 * L_shared``, where ``L_shared`` pushes the copy's probability of the reference's
   adversarial class down on the images the reference was fooled on.

Defaults follow the authors' implementation in BackdoorBench (``defense/sau.py``,
``config/defense/sau/config.yaml``): 100 rounds over the clean data, batch 256, Adam at 1e-4
(its scheduler is built but never stepped there, so the rate is constant), L-inf bound 0.2 in
``[0, 1]`` pixel units, PGD step 0.2, 5 steps, start at the bound, ``beta = (0.01, 1)``,
``lambda = (1, 0, 1)``, both models in eval mode. The perturbed images are not clipped to
``[0, 1]`` (optional and off there too). The authors evaluate each round on the test set; here
the last round is kept.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import held_in_accuracy, model_device, split_for_selection

log = logging.getLogger(__name__)

PROBABILITY_FLOOR = 1e-8  # softmax clamp of the Jensen-Shannon term, as the authors'


@dataclass(frozen=True)
class SAUSettings:
    """Settings of :class:`SAU` (defaults: the authors' implementation, see the module docstring).

    Attributes:
        rounds: Passes over the clean fitting images.
        batch_size: Images per step.
        lr: Adam's learning rate.
        norm_bound: L-inf bound of the perturbations (``[0, 1]`` pixel units).
        pgd_step: Signed-gradient step of the perturbations.
        pgd_steps: Steps per batch.
        beta_adv: Weight of the adversarial term of the perturbation objective.
        beta_shared: Weight of its shared (Jensen-Shannon) term.
        clean_weight: ``lambda_1``, weight of the clean cross-entropy.
        adversarial_weight: ``lambda_2``, weight of the perturbed images' cross-entropy.
        shared_weight: ``lambda_3``, weight of the shared adversarial risk.
        held_in_fraction: Share of the defense data held in (only reported on).
    """

    rounds: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    norm_bound: float = 0.2
    pgd_step: float = 0.2
    pgd_steps: int = 5
    beta_adv: float = 0.01
    beta_shared: float = 1.0
    clean_weight: float = 1.0
    adversarial_weight: float = 0.0
    shared_weight: float = 1.0
    held_in_fraction: float = defaults.HELD_IN_FRACTION


def jensen_shannon(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-image Jensen-Shannon divergence of two softmax outputs (probabilities floored).

    Shapes:
        logits, other: ``[B, K]``; returns ``[B]``.
    """
    p = F.softmax(logits, dim=1).clamp(min=PROBABILITY_FLOOR)
    q = F.softmax(other, dim=1).clamp(min=PROBABILITY_FLOOR)
    mix = 0.5 * (p + q)
    return (0.5 * (p * p.log() + q * q.log()) - 0.5 * (p * mix.log() + q * mix.log())).sum(1)


def shared_perturbation(model: nn.Module, reference: nn.Module, images: torch.Tensor,
                        labels: torch.Tensor, s: SAUSettings) -> torch.Tensor:
    """Per-image perturbations that fool ``model`` and ``reference`` alike (shared PGD).

    Shapes:
        images: ``[B, C, H, W]``; labels: ``[B]``; returns ``[B, C, H, W]`` in the L-inf ball.
    """
    delta = torch.full_like(images, s.norm_bound)
    with torch.no_grad():
        answers, answers_ref = model(images).argmax(1), reference(images).argmax(1)
    for _ in range(s.pgd_steps):
        delta.requires_grad_(True)
        logits, logits_ref = model(images + delta), reference(images + delta)
        flipped = logits.argmax(1) != answers
        flipped_ref = logits_ref.argmax(1) != answers_ref
        shared = flipped & flipped_ref & (logits.argmax(1) == logits_ref.argmax(1))
        ascent = (F.cross_entropy(logits, labels, reduction="none")[~flipped].sum()
                  + F.cross_entropy(logits_ref, labels, reduction="none")[~flipped_ref].sum())
        loss = (-s.beta_adv * ascent / 2 / len(images)
                + s.beta_shared * jensen_shannon(logits, logits_ref)[~shared].sum() / len(images))
        grad = torch.autograd.grad(loss, delta)[0] if loss.requires_grad else torch.zeros_like(
            delta)
        delta = (delta.detach() - s.pgd_step * grad.sign()).clamp(-s.norm_bound, s.norm_bound)
        if bool(shared.all()):
            break
    return delta.detach()


def shared_risk(per_logits: torch.Tensor, per_labels_ref: torch.Tensor,
                fooled_ref: torch.Tensor, batch: int) -> torch.Tensor:
    """The shared adversarial risk term: push down the reference's adversarial class.

    On the images the reference was fooled on, ``-(log p(not c) + log(1 - p(c))) / 2`` summed and
    divided by the batch size, with the authors' clamps (``p(not c) <= 0.999``, ``p(c) >= 0.001``).

    Shapes:
        per_logits: ``[B, K]``; per_labels_ref, fooled_ref: ``[B]``.
    """
    if not bool(fooled_ref.any()):
        return per_logits.new_zeros(())
    probabilities = F.softmax(per_logits, dim=1)
    chosen = F.one_hot(per_labels_ref, per_logits.shape[1]).to(probabilities.dtype)
    other = (probabilities * (1 - chosen)).sum(1)[fooled_ref]
    same = (probabilities * chosen).sum(1)[fooled_ref]
    total = (-torch.log(1e-6 + other.clamp(max=0.999)).sum()
             - torch.log(1 + 1e-6 - same.clamp(min=0.001)).sum())
    return total / 2 / batch


@register_defense
class SAU(Defense):
    """Unlearn the adversarial examples B and its purified copy share."""

    name = "sau"
    settings_type = SAUSettings
    settings: SAUSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        before = held_in_accuracy(model, held_in)
        device = model_device(model)
        reference = copy.deepcopy(model).eval()
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
        generator = torch.Generator().manual_seed(seed)
        model.eval()  # the authors' default: BatchNorm statistics stay B's
        accuracies, fooled_share = [], []
        for _ in tqdm(range(s.rounds), desc="sau", unit="round"):
            order = torch.randperm(len(fit), generator=generator)
            fooled = 0
            for start in range(0, len(order), s.batch_size):
                rows = order[start:start + s.batch_size]
                images, labels = fit.images[rows].to(device), fit.labels[rows].to(device)
                delta = shared_perturbation(model, reference, images, labels, s)
                both = model(torch.cat([images, images + delta]))
                logits, per_logits = both[:len(images)], both[len(images):]
                with torch.no_grad():
                    answers_ref = reference(images).argmax(1)
                    per_labels_ref = reference(images + delta).argmax(1)
                fooled_ref = (per_labels_ref != labels) & (per_labels_ref != answers_ref)
                fooled += int(fooled_ref.sum())
                loss = (s.clean_weight * F.cross_entropy(logits, labels)
                        + s.adversarial_weight * F.cross_entropy(per_logits, labels)
                        + s.shared_weight * shared_risk(per_logits, per_labels_ref, fooled_ref,
                                                        len(images)))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            accuracies.append(round(held_in_accuracy(model, held_in), 4))
            fooled_share.append(round(fooled / len(fit), 4))
        return RepairResult(model.eval(), {
            "held_in_accuracy_before": round(before, 4),
            "held_in_accuracy_by_round": accuracies, "held_in_accuracy": accuracies[-1],
            "reference_fooled_share_by_round": fooled_share,
        })

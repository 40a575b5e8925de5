"""Implicit Backdoor Adversarial Unlearning (i-BAU; Zeng et al., ICLR 2022) at its defaults.

A minimax over the clean fitting images, in rounds:

1. **Inner maximum**: one universal perturbation ``delta`` (one image's shape, from zeros),
   SGD at rate 10 over the batches, ascending the cross-entropy towards B's own answers with an
   L2 penalty ``0.001 * ||delta||^2``.
2. **Outer minimum**: for each batch, the model's weights take one Adam step (rate 0.001) on the
   cross-entropy of the batch with ``delta`` added to 1% of its images, along the *implicit
   hypergradient*: the inner problem's solution moves with the weights, and that dependence is
   estimated with ``K`` fixed-point iterations (Grazzi et al. 2020) of the inner problem's
   gradient-descent map (step 0.1 on the first batch, true labels).

Defaults follow the authors' code (``YiZeng623/I-BAU``: ``defense.py``, ``hypergrad.py``): 5
rounds, ``K = 5``, batch 100, Adam at 0.001, the model in eval mode throughout (BatchNorm keeps
its running statistics), no clamp and no norm bound on ``delta`` (both are commented out there).
The authors evaluate on part of the test set and unlearn on another part; here everything is
the defense data, and the last round is kept.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class IBAUSettings:
    """Settings of :class:`IBAU` (defaults: the authors' code, see the module docstring).

    Attributes:
        rounds: Unlearning rounds (a new perturbation, then one pass of weight updates).
        fixed_point_steps: ``K``, fixed-point iterations of the hypergradient.
        batch_size: Images per batch.
        lr: Adam's learning rate on the weights.
        perturbation_lr: SGD step of the perturbation.
        inner_lr: Step of the inner gradient-descent map the hypergradient differentiates.
        penalty: Weight of ``||delta||^2`` in the inner objective.
        portion: Share of each batch's images that carry the perturbation in the outer loss.
        held_in_fraction: Share of the defense data held in (only reported on).
    """

    rounds: int = 5
    fixed_point_steps: int = 5
    batch_size: int = 100
    lr: float = 0.001
    perturbation_lr: float = 10.0
    inner_lr: float = 0.1
    penalty: float = 0.001
    portion: float = 0.01
    held_in_fraction: float = defaults.HELD_IN_FRACTION


def inner_objective(model: nn.Module, delta: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor, penalty: float) -> torch.Tensor:
    """``-CE(model(images + delta), labels) + penalty * ||delta||^2``: what ``delta`` minimizes.

    Shapes:
        delta: ``[1, C, H, W]``; images: ``[B, C, H, W]``; labels: ``[B]``.
    """
    return -F.cross_entropy(model(images + delta), labels) + penalty * delta.pow(2).sum()


def implicit_hypergradient(
    model: nn.Module, delta: torch.Tensor, outer: torch.Tensor, inner_images: torch.Tensor,
    inner_labels: torch.Tensor, settings: IBAUSettings,
) -> list[torch.Tensor]:
    """d(outer loss)/d(weights) through ``delta`` as the inner problem's fixed point.

    With the inner map ``Phi(delta, w) = delta - inner_lr * grad_delta inner(delta, w)``, the
    hypergradient is ``dL/dw + (dPhi/dw)^T v`` where ``v = (dPhi/ddelta)^T v + dL/ddelta`` is
    solved by ``fixed_point_steps`` iterations from ``v = 0``.

    Args:
        model: The network (its parameters are the weights).
        delta: The perturbation, a leaf with ``requires_grad``.
        outer: The outer loss, computed from ``model`` and ``delta`` (graph kept).
        inner_images: Images of the inner objective.
        inner_labels: Their labels.
        settings: Step sizes and ``K``.

    Returns:
        One gradient per parameter of ``model``.
    """
    weights = list(model.parameters())
    grad_delta, *grad_weights = torch.autograd.grad(outer, [delta, *weights], allow_unused=True)
    if grad_delta is None:  # no image carried the perturbation
        grad_delta = torch.zeros_like(delta)
    inner = inner_objective(model, delta, inner_images, inner_labels, settings.penalty)
    mapped = delta - settings.inner_lr * torch.autograd.grad(inner, delta, create_graph=True)[0]
    v = torch.zeros_like(delta)
    for _ in range(settings.fixed_point_steps):
        v = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)[0] + grad_delta
    through = torch.autograd.grad(mapped, weights, grad_outputs=v, allow_unused=True)
    return [(a if a is not None else torch.zeros_like(w)) + (b if b is not None else 0.0)
            for w, a, b in zip(weights, through, grad_weights, strict=True)]


@register_defense
class IBAU(Defense):
    """Unlearn a universal adversarial perturbation by implicit hypergradients."""

    name = "i-bau"
    settings_type = IBAUSettings
    settings: IBAUSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        before = held_in_accuracy(model, held_in)
        device = model_device(model)
        batches = [(fit.images[i:i + s.batch_size].to(device),
                    fit.labels[i:i + s.batch_size].to(device))
                   for i in range(0, len(fit), s.batch_size)]
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
        model.eval()  # as the authors' code: BatchNorm keeps its running statistics
        norms, accuracies = [], []
        for _ in tqdm(range(s.rounds), desc="i-bau", unit="round"):
            delta = self._perturbation(model, batches)
            norms.append(round(float(delta.norm()), 4))
            for images, labels in batches:
                count = max(int(len(images) * s.portion), 0)
                rows = torch.randperm(len(images), generator=generator)[:count].to(device)
                carried = torch.zeros(len(images), 1, 1, 1, device=device)
                carried[rows] = 1.0
                delta_leaf = delta.detach().requires_grad_(True)
                outer = F.cross_entropy(model(images + carried * delta_leaf), labels)
                grads = implicit_hypergradient(model, delta_leaf, outer, *batches[0], s)
                optimizer.zero_grad()
                for weight, grad in zip(model.parameters(), grads, strict=True):
                    weight.grad = grad.detach()
                optimizer.step()
            accuracies.append(round(held_in_accuracy(model, held_in), 4))
            log.info("i-bau round: perturbation norm %.3f, held-in accuracy %.4f", norms[-1],
                     accuracies[-1])
        return RepairResult(model.eval(), {
            "held_in_accuracy_before": round(before, 4), "perturbation_norms": norms,
            "held_in_accuracy_by_round": accuracies, "held_in_accuracy": accuracies[-1],
        })

    def _perturbation(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> torch.Tensor:
        """The inner maximum: one pass of SGD on a universal perturbation from zeros."""
        s = self.settings
        delta = torch.zeros_like(batches[0][0][:1])
        for images, _ in batches:  # plain SGD, as the authors' torch.optim.SGD(lr=10)
            with torch.no_grad():
                answers = model(images).argmax(1)
            delta.requires_grad_(True)
            loss = inner_objective(model, delta, images, answers, s.penalty)
            grad = torch.autograd.grad(loss, delta)[0]  # the weights' gradients are not needed
            delta = (delta - s.perturbation_lr * grad).detach()
        return delta

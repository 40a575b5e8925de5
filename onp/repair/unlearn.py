"""Trigger unlearning during repair: suspected triggers stamped on fitting images.

Each prune-and-regrow round adds stamped copies of some fitting images, with their true labels
(Neural Cleanse's unlearning, Wang et al. 2019). Trigger-free, the stamps are the suspected
triggers of :mod:`onp.signal`: the synthesized patch on half the images and a universal
perturbation on the other half. After every round the perturbation is re-fitted to the model
being repaired (a warm start of a few steps): once one perturbation is unlearned the backdoor is
reached by another, and chasing it is meant to remove what is left of a blended trigger. The
re-fitted perturbation on held-in images also scores the round
(:meth:`SuspectedTriggers.probe`). With a known trigger (labelled mode) the real trigger is
stamped instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from onp.attacks.attack import Attack
from onp.signal.perturbation import stamp_perturbation, universal_perturbation
from onp.signal.probe import SYNTHESIZED, BackdoorProbe, concat_probes

log = logging.getLogger(__name__)

# Steps per round to follow the model with the perturbation (a warm start), about 5 s per round
# on 2 cores. Chosen on held-in data among 0, 60 and 120 (at eps 0.1, on the same models and by
# the same rule as PERTURBATION_EPS); 0 was far behind, 120 slightly.
REFRESH_STEPS = 60


class SuspectedTriggers:
    """Stamps the synthesized patch on the first half of a batch, the perturbation on the rest.

    Args:
        patch: Puts the synthesized trigger on ``[B, C, H, W]`` images (``None``: only the
            perturbation).
        perturbation: The universal perturbation (``[1, C, H, W]``; ``None``: only the patch).
        target: The suspected target, which :meth:`refresh` aims at.
        images: Clean fitting images of other classes, to re-optimize the perturbation on.
        eps: The perturbation's bound.
        refresh_steps: Steps of each :meth:`refresh` (``0``: the perturbation stays fixed).
        seed: Seeds the refreshes (each one draws from ``seed + its count``).
        base_probe: The fixed probe (the synthesized patch on held-in images) :meth:`probe`
            starts from.
        probe_images: Held-in clean images of other classes that :meth:`probe` stamps with the
            perturbation as it is now.
        probe_labels: Their classes.
    """

    def __init__(
        self,
        patch: Callable[[torch.Tensor], torch.Tensor] | None,
        perturbation: torch.Tensor | None,
        target: int,
        images: torch.Tensor,
        eps: float,
        refresh_steps: int = REFRESH_STEPS,
        seed: int = 0,
        base_probe: BackdoorProbe | None = None,
        probe_images: torch.Tensor | None = None,
        probe_labels: torch.Tensor | None = None,
    ) -> None:
        if patch is None and perturbation is None:
            raise ValueError("SuspectedTriggers: give a patch, a perturbation or both")
        if (probe_images is None) != (probe_labels is None):
            raise ValueError("SuspectedTriggers: give probe_images and probe_labels together")
        self.patch, self.perturbation = patch, perturbation
        self.target, self.images, self.eps = target, images, eps
        self.refresh_steps, self.seed, self.refreshes = refresh_steps, seed, 0
        self.base_probe, self.probe_images, self.probe_labels = (base_probe, probe_images,
                                                                 probe_labels)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The images with a suspected trigger each (same shape)."""
        if self.perturbation is None:
            assert self.patch is not None
            return self.patch(images)
        if self.patch is None:
            return stamp_perturbation(images, self.perturbation)
        half = len(images) // 2
        return torch.cat([self.patch(images[:half]),
                          stamp_perturbation(images[half:], self.perturbation)])

    def refresh(self, model: nn.Module) -> None:
        """Re-fit the perturbation to ``model`` as it is now (a warm start)."""
        if self.perturbation is None or self.refresh_steps == 0:
            return
        self.perturbation = universal_perturbation(  # fits through a copy: model untouched
            model, self.images, self.target, self.eps, self.refresh_steps,
            seed=self.seed + self.refreshes, start=self.perturbation)
        self.refreshes += 1

    def probe(self) -> BackdoorProbe | None:
        """The base probe plus the held-in images with the perturbation as it is now."""
        return self._probe_with(self.perturbation)

    def fresh_probe(self, model: nn.Module, steps: int) -> BackdoorProbe | None:
        """The base probe plus the held-in images with a perturbation fitted afresh (from zero)
        to ``model``: a reading that training against this stamp's perturbation did not shape.
        ``model`` and this stamp are not modified."""
        if self.perturbation is None or self.probe_images is None:
            return self.base_probe
        fresh = universal_perturbation(model, self.images, self.target, self.eps, steps,
                                       seed=self.seed)
        return self._probe_with(fresh)

    def _probe_with(self, perturbation: torch.Tensor | None) -> BackdoorProbe | None:
        if perturbation is None or self.probe_images is None:
            return self.base_probe
        assert self.probe_labels is not None
        count = len(self.probe_images)
        current = BackdoorProbe(stamp_perturbation(self.probe_images, perturbation),
                                torch.full((count,), self.target, dtype=torch.int64),
                                self.probe_labels, known_trigger=False, source=SYNTHESIZED)
        return current if self.base_probe is None else concat_probes(self.base_probe, current)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (kinds, bound, refresh steps)."""
        return {"patch": self.patch is not None, "perturbation": self.perturbation is not None,
                "target": self.target, "eps": self.eps, "refresh_steps": self.refresh_steps,
                "known_trigger": False}


class KnownTriggerStamp:
    """Stamps the real trigger (known-trigger mode; every output built on it says so).

    Image ``n`` of a batch gets trigger ``n % len(attack.triggers)``.
    """

    def __init__(self, attack: Attack) -> None:
        self.attack = attack

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The images with the real trigger (same shape)."""
        ids = torch.arange(len(images)) % len(self.attack.triggers)
        return self.attack.apply(images, ids)

    def refresh(self, model: nn.Module) -> None:
        """Nothing to follow: the trigger is known."""

    def probe(self) -> None:
        """The fixed known-trigger probe scores the rounds."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"known_trigger": True, "triggers": len(self.attack.triggers)}

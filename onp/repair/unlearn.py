"""Trigger unlearning during repair: suspected triggers stamped on fitting images.

Each prune-and-regrow round adds stamped copies of some fitting images, with their true labels
(Neural Cleanse's unlearning, Wang et al. 2019). Trigger-free, the stamps are the suspected
triggers: the synthesized patch of :mod:`onp.signal` and the universal triggers fitted towards
the suspected target, an additive perturbation (:mod:`onp.signal.perturbation`) and a smooth
warp (:mod:`onp.signal.warp`); a batch is shared out between them in equal parts. After every
round the universal triggers are re-fitted to the model being repaired (a warm start of a few
steps): once one is unlearned the backdoor is reached by another, and chasing it is meant to
remove what is left of a blended or warping trigger. The re-fitted triggers on held-in images
also score the round (:meth:`SuspectedTriggers.probe`). With a known trigger (labelled mode) the
real trigger is stamped instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from onp.attacks.built import Attack
from onp.signal.fitted import FIT_BATCH_SIZE, UniversalTrigger, fit_universal
from onp.signal.probe import SYNTHESIZED, BackdoorProbe, concat_probes

log = logging.getLogger(__name__)

# Steps per round to follow the model with the universal triggers (a warm start), about 5 s per
# trigger and round on 2 cores. Chosen on held-in data among 0, 60 and 120 (at eps 0.1, on the
# same models and by the same rule as PERTURBATION_EPS); 0 was far behind, 120 slightly.
REFRESH_STEPS = 60
class SuspectedTriggers:
    """Shares a batch out between the synthesized patch and the universal triggers.

    Args:
        patch: Puts the synthesized trigger on ``[B, C, H, W]`` images (``None``: only the
            universal triggers).
        universal: The fitted universal triggers (may be empty when there is a patch).
        target: The suspected target, which :meth:`refresh` aims at.
        images: Clean fitting images of other classes, to re-fit the universal triggers on.
        refresh_steps: Steps of each :meth:`refresh` (``0``: the triggers stay fixed).
        seed: Seeds the refreshes (each one draws from ``seed + its count``).
        base_probe: The fixed probe (the synthesized patch on held-in images) :meth:`probe`
            starts from.
        probe_images: Held-in clean images of other classes that :meth:`probe` stamps with each
            universal trigger as it is now.
        probe_labels: Their classes.
        batch_size: Images per step of :meth:`refresh` and :meth:`fresh_probe`.
    """

    def __init__(
        self,
        patch: Callable[[torch.Tensor], torch.Tensor] | None,
        universal: Sequence[UniversalTrigger],
        target: int,
        images: torch.Tensor,
        refresh_steps: int = REFRESH_STEPS,
        seed: int = 0,
        base_probe: BackdoorProbe | None = None,
        probe_images: torch.Tensor | None = None,
        probe_labels: torch.Tensor | None = None,
        batch_size: int = FIT_BATCH_SIZE,
    ) -> None:
        if patch is None and not universal:
            raise ValueError("SuspectedTriggers: give a patch, a universal trigger or both")
        if (probe_images is None) != (probe_labels is None):
            raise ValueError("SuspectedTriggers: give probe_images and probe_labels together")
        self.patch, self.universal = patch, list(universal)
        self.target, self.images = target, images
        self.refresh_steps, self.seed, self.refreshes = refresh_steps, seed, 0
        self.batch_size = batch_size
        self.base_probe, self.probe_images, self.probe_labels = (base_probe, probe_images,
                                                                 probe_labels)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The images with a suspected trigger each (same shape).

        Consecutive equal parts get the patch, then each universal trigger in turn.
        """
        stamps = ([self.patch] if self.patch is not None else []) + self.universal
        parts = torch.tensor_split(images, len(stamps))
        return torch.cat([stamp(part) for stamp, part in zip(stamps, parts, strict=True)])

    def refresh(self, model: nn.Module) -> None:
        """Re-fit the universal triggers to ``model`` as it is now (a warm start)."""
        if not self.universal or self.refresh_steps == 0:
            return
        self.universal = [
            fit_universal(t.kind, model, self.images, self.target, t.bound, self.refresh_steps,
                          seed=self.seed + self.refreshes, start=t, batch_size=self.batch_size)
            for t in self.universal]
        self.refreshes += 1

    def probe(self) -> BackdoorProbe | None:
        """The base probe plus the held-in images with each universal trigger as it is now."""
        return self._probe_with(self.universal)

    def fresh_probe(self, model: nn.Module, steps: int) -> BackdoorProbe | None:
        """The base probe plus held-in images with universal triggers fitted afresh to ``model``.

        A reading that training against this stamp's triggers did not shape. ``model`` and this
        stamp are not modified.
        """
        fresh = [fit_universal(t.kind, model, self.images, self.target, t.bound, steps,
                               seed=self.seed, batch_size=self.batch_size)
                 for t in self.universal]
        return self._probe_with(fresh)

    def _probe_with(self, universal: Sequence[UniversalTrigger]) -> BackdoorProbe | None:
        if not universal or self.probe_images is None:
            return self.base_probe
        assert self.probe_labels is not None
        count = len(self.probe_images)
        probes = [] if self.base_probe is None else [self.base_probe]
        probes += [BackdoorProbe(trigger(self.probe_images),
                                 torch.full((count,), self.target, dtype=torch.int64),
                                 self.probe_labels, known_trigger=False, source=SYNTHESIZED)
                   for trigger in universal]
        return concat_probes(*probes)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (kinds, bounds, refresh steps)."""
        return {"patch": self.patch is not None,
                "universal": [{"kind": t.kind, "bound": t.bound} for t in self.universal],
                "target": self.target, "refresh_steps": self.refresh_steps,
                "batch_size": self.batch_size,
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

"""A built attack: its trigger(s) and the target of each, made from an :class:`AttackConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from onp.attacks.base import (
    ImageShape,
    Trigger,
    build_trigger,
    check_image_shape,
    trigger_from_description,
)
from onp.attacks.config import MULTI_ATTACK, NO_ATTACK, AttackConfig
from onp.attacks.triggers import MultiTrigger
from onp.errors import ONPInputError

__all__ = ["Attack", "SupportsNoiseWarp", "build_attack"]

_PROBE_SIZE = 2  # images used to tell multi components apart


@runtime_checkable
class SupportsNoiseWarp(Protocol):
    """A trigger with WaNet's noise mode (:meth:`onp.attacks.wanet.WaNetTrigger.noise_warp`)."""

    def noise_warp(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Warp ``[B, C, H, W]`` images with the trigger plus random noise."""
        ...


@dataclass(frozen=True)
class Attack:
    """A built attack: the trigger(s) and the target class of each.

    Attributes:
        config: The configuration it was built from.
        image_shape: ``(C, H, W)`` of the images it applies to.
        triggers: One trigger per target; empty for ``none``.
        targets: ``targets[i]`` is the class trigger ``i`` flips to.
    """

    config: AttackConfig
    image_shape: ImageShape
    triggers: tuple[Trigger, ...]
    targets: tuple[int, ...]

    @property
    def is_backdoor(self) -> bool:
        """Whether there is any trigger (``False`` for kind ``none``)."""
        return bool(self.triggers)

    @property
    def clean_label(self) -> bool:
        """Whether poisoned training images keep their labels."""
        return self.config.clean_label

    def _default_ids(self, n: int, device: torch.device) -> torch.Tensor:
        # Round robin, as MultiTrigger.apply; all zeros for a single trigger.
        return torch.arange(n, device=device) % max(len(self.triggers), 1)

    def targets_for(
        self, labels: torch.Tensor, trigger_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the label each image should get once triggered.

        Args:
            labels: ``[N]`` int64 true labels.
            trigger_ids: ``[N]`` int64 index of the trigger each image carries (default: round
                robin ``arange(N) % len(triggers)``, i.e. trigger 0 for all-to-one attacks).

        Returns:
            ``[N]`` int64 target labels on ``labels``' device: the attack's target (all-to-one),
            trigger ``trigger_ids[n]``'s target (multi), or ``labels`` itself for ``none``.
        """
        if not self.is_backdoor:
            return labels.clone()
        if trigger_ids is None:
            trigger_ids = self._default_ids(labels.shape[0], labels.device)
        table = torch.tensor(self.targets, dtype=torch.int64, device=labels.device)
        return table[trigger_ids.to(labels.device)]

    def apply(self, images: torch.Tensor, trigger_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Apply trigger ``trigger_ids[b]`` to image ``b`` (a copy; ``images`` is not modified).

        Shapes:
            images: ``[B, C, H, W]`` float in ``[0, 1]``; trigger_ids: ``[B]`` int64 (default:
            round robin); output: ``[B, C, H, W]`` in ``[0, 1]``.

        Raises:
            ONPInputError: For kind ``none`` (there is no trigger to apply).
        """
        if not self.is_backdoor:
            raise ONPInputError("attack 'none' has no trigger to apply")
        if trigger_ids is None:
            trigger_ids = self._default_ids(images.shape[0], images.device)
        pairs = list(zip(self.triggers, self.targets, strict=True))
        multi = MultiTrigger(self.image_shape, components=pairs)
        return multi.apply_each(images, trigger_ids)

    def describe(self) -> dict[str, Any]:
        """JSON-serializable description: the config, and each trigger's description and target."""
        return {
            "config": self.config.to_dict(),
            "image_shape": list(self.image_shape),
            "triggers": [t.describe() for t in self.triggers],
            "targets": list(self.targets),
        }


def build_attack(config: AttackConfig, image_shape: ImageShape) -> Attack:
    """Build the trigger(s) of ``config`` for images of ``image_shape``.

    Args:
        config: The attack configuration.
        image_shape: ``(C, H, W)`` of the dataset.

    Returns:
        The attack; no triggers for kind ``none``.

    Raises:
        ONPInputError: If a trigger option is unknown or invalid.
    """
    shape = check_image_shape(image_shape)
    if config.kind == NO_ATTACK:
        return Attack(config, shape, (), ())
    if config.kind == MULTI_ATTACK:
        triggers = tuple(
            build_trigger(kind, shape, seed=config.seed + i, **options)
            for i, (kind, options, _) in enumerate(config.multi)
        )
        # Seeds differ per component, but not every trigger uses its seed (SIG, white BadNets):
        # compare what the triggers do to a fixed probe batch.
        probe = torch.rand(_PROBE_SIZE, *shape, generator=torch.Generator().manual_seed(0))
        outputs = [t.apply(probe) for t in triggers]
        if any(torch.equal(outputs[i], outputs[j])
               for i in range(len(outputs)) for j in range(i)):
            raise ONPInputError(
                "attack 'multi': two components build the same trigger; give them different "
                "options (e.g. badnets positions) so that each target has its own trigger"
            )
        return Attack(config, shape, triggers, tuple(t for _, _, t in config.multi))
    trigger = build_trigger(config.kind, shape, seed=config.seed, **config.trigger_options)
    return Attack(config, shape, (trigger,), (config.target,))


def attack_from_description(description: Mapping[str, Any]) -> Attack:
    """Rebuild an :class:`Attack` from :meth:`Attack.describe` (a bundle spec's ``attack``).

    Raises:
        ONPInputError: If keys are missing or a trigger description is invalid.
    """
    try:
        config = AttackConfig.from_dict(dict(description["config"]))
        triggers = tuple(trigger_from_description(t) for t in description["triggers"])
        targets = tuple(int(t) for t in description["targets"])
        shape = check_image_shape(description["image_shape"])
    except (KeyError, TypeError) as error:
        raise ONPInputError(
            "attack description: expected the keys config, image_shape, triggers and targets of "
            f"Attack.describe(), found {sorted(description)} ({error!r})"
        ) from error
    if len(triggers) != len(targets):
        raise ONPInputError(
            f"attack description: {len(triggers)} triggers but {len(targets)} targets"
        )
    return Attack(config, shape, triggers, targets)

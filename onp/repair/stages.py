"""What the apply pipeline's stages hand on: the inputs, the probe stage and the seed mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onp.data.types import ImageSet
from onp.graph.mask import ChannelMask
from onp.models.bundle import Classifier
from onp.repair.sparse import Stamp
from onp.signal.probe import BackdoorProbe


@dataclass
class ApplyInputs:
    """B, the defense data and what held-out data there is (for reporting only)."""

    name: str
    model: Classifier
    defense: ImageSet
    test_clean: ImageSet | None
    test_poisoned: BackdoorProbe | None
    sources: dict[str, str]


@dataclass
class ProbeStage:
    """The defense split, the probes and the stamp: ``fit`` trains, ``held_in`` selects.

    ``probe`` is what the agent's environment scores (the synthesized patch, or the known
    trigger); ``repair_probe`` adds the held-in images with the suspected perturbation as first
    fitted (the report's held-in proxy ASR); ``stamp`` puts the suspected triggers on fitting
    images (trigger unlearning) and, re-fitted after each round, scores the rounds.
    """

    fit: ImageSet
    held_in: ImageSet
    probe: BackdoorProbe
    record: dict[str, Any]
    stamp: Stamp | None = None
    repair_probe: BackdoorProbe | None = None

    @property
    def selection_probe(self) -> BackdoorProbe:
        """The probe the repair chooses its round with."""
        return self.repair_probe if self.repair_probe is not None else self.probe


@dataclass
class MaskChoice:
    """The seed mask and where it came from."""

    mask: ChannelMask
    source: str
    timesteps: int
    utility: float | None

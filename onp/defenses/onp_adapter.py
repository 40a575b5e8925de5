"""ONP itself, and its sparse fine-pruning from a random mask, behind the baseline interface.

Both run the repair pipeline (:mod:`onp.repair.pipeline`): the trigger-free probe is
estimated from the defense data, a seed mask is chosen (ONP: by the GNN agent; ``sfp-random``:
at random, as many channels as :class:`~onp.defenses.random_pruning.RandomPruning` prunes), then
sparse prune-and-regrow fine-tuning picks its round on held-in defense data. The pipeline gets
the model and the defense images only (no held-out data), writes its outputs to a temporary
folder, and the repaired bundle is read back from there.

``options`` are :class:`onp.repair.pipeline.ApplyConfig` keys (e.g. ``{"rounds": 5,
"agent_timesteps": 256}``), so a suite YAML can shorten the pipeline.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import model_device
from onp.defenses.random_pruning import random_node_mask
from onp.errors import ONPInputError
from onp.graph.groups import trace_groups
from onp.graph.mask import ChannelMask
from onp.models.bundle import Classifier, load_bundle
from onp.repair import pipeline

log = logging.getLogger(__name__)

BENCHMARK_NAME = "benchmark"
"""Name the pipeline gives the subject in its report."""
REPORT_KEYS = ("mask", "held_in", "seconds", "probe")
"""Parts of the pipeline's report kept in the cell's info."""


@dataclass(frozen=True)
class OnpSettings:
    """Settings of :class:`ONP`.

    Attributes:
        options: :class:`onp.repair.pipeline.ApplyConfig` overrides (default: its defaults,
            i.e. ``configs/apply.yaml``).
    """

    options: dict = field(default_factory=dict)


PUBLISHED_RECIPE = {"unlearn_fraction": 0.0, "distill_weight": 0.0, "refit": False,
                    "importance": "weight"}
"""ApplyConfig values that turn ONP's additions (trigger unlearning, distillation from B, the
refit on held-in images) off, leaving the published sparse fine-pruning recipe; ``sfp-random``
starts from these. Channels stay scored by weight norms, the criterion its table rows were made
with (ONP's default scores clean activations; docs/research/repair.md)."""


@dataclass(frozen=True)
class RandomMaskSettings(OnpSettings):
    """Settings of :class:`SparseFinePruningRandom`.

    Attributes:
        options: ApplyConfig overrides on top of :data:`PUBLISHED_RECIPE` (sparse fine-pruning
            without ONP's trigger unlearning and distillation), so that this row stays the
            baseline people know whatever else a suite shortens.
        fraction: Share of the channel nodes in the random seed mask (the random-pruning
            control's, so that the two rows differ only by the sparse fine-tuning).
    """

    fraction: float = defaults.RANDOM_PRUNING_FRACTION


def run_pipeline(
    model: nn.Module, defense: ImageSet, seed: int, options: dict[str, Any],
    seed_mask: ChannelMask | None = None,
) -> RepairResult:
    """Repair ``model`` with the pipeline on ``defense`` only; read B' back from its outputs.

    Args:
        model: The suspect classifier (a :class:`~onp.models.bundle.Classifier`).
        defense: The defender's clean images.
        seed: Seeds the pipeline.
        options: ApplyConfig overrides.
        seed_mask: A seed mask to use instead of the agent's (default: run the agent).

    Raises:
        ONPInputError: If ``model`` is not a :class:`~onp.models.bundle.Classifier` (the
            pipeline reads its spec: classes, input shape, preprocessing).
    """
    if not isinstance(model, Classifier):
        raise ONPInputError(f"onp: expected an ONP Classifier (a loaded bundle or model file), "
                            f"found {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="onp-bench-") as tmp:
        out = Path(tmp) / "apply"
        config = pipeline.ApplyConfig(**{"model": BENCHMARK_NAME, **options, "seed": seed,
                                         "out": str(out), "overwrite": True})
        inputs = pipeline.ApplyInputs(BENCHMARK_NAME, model, defense, None, None,
                                      {"data": "onp.benchmark defense split"})
        stage = pipeline.make_probe(inputs, config)
        report = pipeline.run_apply(config, seed_mask, (inputs, stage))
        repaired = load_bundle(out / "repaired", device=model_device(model))
    info = {key: report[key] for key in REPORT_KEYS if key in report}
    sparse = report.get("sparse", {})
    info["sparse"] = {k: sparse.get(k) for k in ("best_round", "final_pruned",
                                                 "seed_channels_in_final")}
    return RepairResult(repaired, info)


@register_defense
class ONP(Defense):
    """ONP's repair pipeline: the agent's seed mask, then sparse prune-and-regrow fine-tuning."""

    name = "onp"
    settings_type = OnpSettings
    settings: OnpSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        return run_pipeline(model, defense, seed, dict(self.settings.options))


@register_defense
class SparseFinePruningRandom(Defense):
    """The pipeline's sparse fine-pruning seeded by a random mask instead of the agent's."""

    name = "sfp-random"
    settings_type = RandomMaskSettings
    settings: RandomMaskSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        groups = trace_groups(model, defense.meta.image_shape)
        mask = random_node_mask(groups, round(s.fraction * groups.num_nodes), seed)
        options = {**PUBLISHED_RECIPE, **s.options}
        result = run_pipeline(model, defense, seed, options, seed_mask=mask)
        result.info["options"] = options
        result.info["seed_pruned"] = torch.nonzero(~mask).flatten().tolist()
        return result

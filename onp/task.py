"""A pruning task: one infected model, its neuron graph and the fixed batches that score a mask.

The environment (``envs/``) sees a task only through :meth:`PruningTask.score`, so it holds no
model code. Clean accuracy and the proxy ASR are measured on small fixed batches of the defense
data (fixed small batches, for speed); the true ASR is measured only when an
evaluation set is attached, for logging, and never enters the reward outside known-trigger mode
(where the probe itself carries the real trigger and is labelled so).

The small batches make steps fast but their readings noisy, so the best of many masks scored on
them is flattered (a lucky draw wins). :meth:`PruningTask.check_score` re-reads a few chosen
masks on larger check sets of the same defense data: more clean images and the whole probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.data import Data

from onp.data.splits import subsample
from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.eval.metrics import accuracy_of, predict
from onp.graph.evaluate import CachedMaskedForward
from onp.graph.groups import ChannelGroups, trace_groups
from onp.graph.mask import ChannelMask, masked
from onp.graph.neuron_graph import build_neuron_graph
from onp.signal.probe import BackdoorProbe


@dataclass(frozen=True)
class MaskScore:
    """What a mask does on the task's fixed batches (fractions in ``[0, 1]``).

    Attributes:
        clean_accuracy: Accuracy on the clean defense batch.
        proxy_asr: Share of probe images (clean non-target defense images with the synthesized,
            or in known-trigger mode the real, trigger) classified as the suspected target.
        true_asr: ASR on the attached held-out poisoned images, or ``None`` when none is
            attached. Logging only.
    """

    clean_accuracy: float
    proxy_asr: float
    true_asr: float | None = None


class PruningTask:
    """One model to prune: groups, graph, and a cached scorer over clean, probe and eval batches.

    Args:
        name: Name for logs (e.g. the bundle path).
        model: The infected classifier (not modified).
        groups: Its channel groups.
        graph: Its neuron graph (``x [num_nodes, F]``, ``edge_index [2, E]``, ``edge_attr [E, 1]``).
        clean: Clean defense images for clean accuracy.
        probe: Triggered defense images for the proxy ASR; ``probe.known_trigger`` marks
            known-trigger mode.
        evaluation: Held-out poisoned images for the true ASR (logging only), or ``None``.
        check: Larger clean and triggered defense sets for :meth:`check_score`, or ``None``.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        groups: ChannelGroups,
        graph: Data,
        clean: ImageSet,
        probe: BackdoorProbe,
        evaluation: BackdoorProbe | None = None,
        check: tuple[ImageSet, BackdoorProbe] | None = None,
    ) -> None:
        if graph.num_nodes != groups.num_nodes:
            raise ONPInputError(
                f"task {name}: graph has {graph.num_nodes} nodes, groups {groups.num_nodes}"
            )
        self.name, self.model, self.groups, self.graph = name, model, groups, graph
        self.clean, self.probe, self.evaluation, self.check = clean, probe, evaluation, check
        self._split = len(clean)
        self._forward = CachedMaskedForward(model, groups, torch.cat([clean.images, probe.images]))
        # The true ASR is logged once per episode, not per step: a forward of its own.
        self._evaluate = None if evaluation is None else CachedMaskedForward(
            model, groups, evaluation.images
        )

    @property
    def known_trigger(self) -> bool:
        """Whether the proxy ASR uses the real trigger (known-trigger mode)."""
        return self.probe.known_trigger

    @property
    def num_nodes(self) -> int:
        """Number of channel nodes."""
        return self.groups.num_nodes

    def score(self, mask: ChannelMask, with_true_asr: bool = False) -> MaskScore:
        """Clean accuracy and proxy ASR of the model under ``mask``, and maybe the true ASR.

        The true ASR comes when asked for and an evaluation set is attached (a separate, larger
        forward pass).
        """
        predictions = self._forward(mask).argmax(1).cpu()
        true_asr = None
        if with_true_asr and self._evaluate is not None and self.evaluation is not None:
            true_asr = self.evaluation.asr_of(self._evaluate(mask).argmax(1).cpu())
        return MaskScore(
            clean_accuracy=accuracy_of(predictions[: self._split], self.clean.labels),
            proxy_asr=self.probe.asr_of(predictions[self._split :]),
            true_asr=true_asr,
        )

    def check_score(self, mask: ChannelMask) -> MaskScore:
        """Clean accuracy and proxy ASR under ``mask`` on the check sets.

        :meth:`score` when the task has none. Slower than :meth:`score`: meant for a few
        candidate masks.
        """
        if self.check is None:
            return self.score(mask)
        clean, probe = self.check
        with masked(self.model, self.groups, mask):
            on_clean = predict(self.model, clean.images)
            on_probe = predict(self.model, probe.images)
        return MaskScore(accuracy_of(on_clean, clean.labels), probe.asr_of(on_probe))


@dataclass(frozen=True)
class TaskConfig:
    """Sizes of the fixed batches a task scores masks on (small and fixed, for speed).

    Attributes:
        clean_batch: Clean defense images for clean accuracy.
        probe_batch: Probe images for the proxy ASR.
        eval_batch: Held-out poisoned images for the logged true ASR.
        max_in_edges: Strongest incoming edges kept per node of the neuron graph.
        check_clean: Clean defense images of :meth:`PruningTask.check_score` (the whole probe
            is its triggered part); ``0``: no check sets, ``check_score`` is ``score``.
    """

    clean_batch: int = 192
    probe_batch: int = 64
    eval_batch: int = 512
    max_in_edges: int = 8
    check_clean: int = 1024


def _first(probe: BackdoorProbe, count: int) -> BackdoorProbe:
    """The first ``count`` images of a probe (probes are already drawn at random)."""
    keep = slice(0, count)
    return BackdoorProbe(probe.images[keep], probe.target_labels[keep], probe.true_labels[keep],
                         probe.known_trigger, probe.source)


def build_task(
    name: str,
    model: nn.Module,
    defense: ImageSet,
    probe: BackdoorProbe,
    config: TaskConfig | None = None,
    seed: int = 0,
    evaluation: BackdoorProbe | None = None,
) -> PruningTask:
    """Trace ``model``, build its neuron graph and fix the batches that score masks.

    Args:
        name: Name for logs.
        model: The infected classifier (not modified).
        defense: The defender's clean images; a stratified draw of ``clean_batch`` of them
            measures clean accuracy, and one of ``check_clean`` the check's
            (:meth:`~PruningTask.check_score`).
        probe: Triggered defense images (trigger-free: :func:`onp.signal.estimate_probe`); the
            first ``probe_batch`` score steps, all of them score checks.
        config: Batch sizes (default: :class:`TaskConfig`).
        seed: Seeds the clean draw (default: 0).
        evaluation: Held-out poisoned images for the logged true ASR (default: none).

    Returns:
        The task.
    """
    config = config or TaskConfig()
    model.eval()
    clean = subsample(defense, min(config.clean_batch, len(defense)), seed=seed)
    groups = trace_groups(model, defense.meta.image_shape)
    graph = build_neuron_graph(
        model, groups, clean.images, probe.images, max_in_edges=config.max_in_edges,
        clean_labels=clean.labels, trigger_targets=probe.target_labels,
    )
    check = None
    if config.check_clean > 0:
        check = (subsample(defense, min(config.check_clean, len(defense)), seed=seed), probe)
    return PruningTask(
        name, model, groups, graph, clean, _first(probe, config.probe_batch),
        None if evaluation is None else _first(evaluation, config.eval_batch), check,
    )

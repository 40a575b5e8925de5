"""Continuous neuron masks and perturbations at the channel groups' mask points (ANP, RNP).

ANP and RNP learn one mask value per neuron and multiply it into the BatchNorm scale, leaving
the shift alone (``weight * mask``, ``bias * 1``, in both official codes); ANP also perturbs the
scale by ``delta`` and the shift by ``xi``. Here the same computation is a forward hook on each
*soft point* of the channel groups (below), with ``b`` the module's bias (the BN shift, the
conv/dense bias, or 0)::

    out' = (mask + delta) * (out - b) + (1 + xi) * b

What a "neuron" is, is the :class:`MaskUnits` granularity:

- ``"layer"`` (default): one value per channel of each soft point, as the papers mask every
  BatchNorm channel on its own. In a residual stage each block's last BatchNorm and the shortcut's
  have their own values, so pruning one removes that branch's contribution, not the stream;
- ``"node"``: one value per node of :class:`~onp.graph.groups.ChannelGroups`, shared by every
  soft point of the group, so pruning a stream node removes the channel from the whole stream.
  On our Fashion-MNIST ResNet, RNP's recovery drove 38 of 336 node values to exactly 0, among
  them residual-stream channels the clean task needs: pruning the 3 lowest cost 45 points of
  clean accuracy before any ASR moved.

With BatchNorm this is ANP's formula exactly; without it, the conv output itself is masked and
perturbed, as the ANP paper does for nets without BN.

The soft points of a group are its mask points minus every conv/dense layer whose only consumer
is a BatchNorm of the same group (its output is normalized right away, so scaling it would be
undone in training mode and applied twice in eval mode). Which layer feeds which is read from
Torch-Pruning's traced graph, never from per-architecture lists.

A 0/1 mask applied this way is "pruning" as ANP and RNP prune: the neuron's scale is zeroed and
its output becomes the constant shift; :func:`bake_soft_mask` writes that into the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.common import ScanResult, held_in_accuracy, largest_within_drop
from onp.errors import ONPInputError
from onp.graph.groups import PRUNABLE_TYPES, ChannelGroups, dependency_graph

log = logging.getLogger(__name__)

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
GRANULARITIES = ("layer", "node")
"""Values of :attr:`MaskUnits.granularity`."""
PRUNING_BY = ("number", "threshold")
"""Values of :attr:`MaskPruning.pruning_by`."""


def batchnorm_pairs(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, str]:
    """Conv/dense layers whose output only a BatchNorm reads, with that BatchNorm's name.

    Read from Torch-Pruning's traced graph: a layer whose output also feeds an addition or
    another layer (a pre-activation ResNet's stem) is not paired.

    Returns:
        ``{layer name: BatchNorm name}``.
    """
    was_training = model.training
    model.eval()
    try:
        graph = dependency_graph(model, input_shape)
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    pairs: dict[str, str] = {}
    for module, node in graph.module2node.items():
        if not isinstance(module, PRUNABLE_TYPES) or module not in names:
            continue
        outputs = [out.module for out in node.outputs]
        if len(outputs) == 1 and isinstance(outputs[0], BATCHNORM_TYPES) and outputs[0] in names:
            pairs[names[module]] = names[outputs[0]]
    return pairs


def soft_points(model: nn.Module, groups: ChannelGroups) -> dict[str, int]:
    """Mask points to scale, each with its group index (see the module docstring).

    Args:
        model: The model ``groups`` was traced from.
        groups: Its channel groups.

    Returns:
        ``{module name: group index}``, in the groups' order.
    """
    pairs = batchnorm_pairs(model, groups.input_shape)
    points: dict[str, int] = {}
    for group in groups.groups:
        members = set(group.mask_points)
        for name in group.mask_points:
            if pairs.get(name) in members:  # normalized right away by its own BatchNorm
                continue
            points[name] = group.index
    return points


def _bias_of(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view((1, -1) + (1,) * (ndim - 2))


@dataclass(frozen=True)
class MaskPruning:
    """How ANP and RNP prune by their learned mask (defaults: :mod:`onp.defenses.defaults`).

    Attributes:
        pruning_by: ``"number"`` (the lowest-valued units, ``number_step`` of them more per
            candidate) or ``"threshold"`` (units valued at most ``0, pruning_step, ...``).
        pruning_step: Spacing of the candidate thresholds.
        number_step: Share of the units added per candidate count.
        pruning_max: Largest threshold, or largest share of the units pruned.
        max_drop: Tolerated held-in accuracy drop, a fraction.
    """

    pruning_by: str = defaults.MASK_PRUNING_BY
    pruning_step: float = defaults.MASK_PRUNING_STEP
    number_step: float = defaults.MASK_PRUNING_NUMBER_STEP
    pruning_max: float = defaults.MASK_PRUNING_MAX
    max_drop: float = defaults.MASK_PRUNING_MAX_DROP

    def __post_init__(self) -> None:
        if self.pruning_by not in PRUNING_BY or min(self.pruning_step, self.number_step) <= 0:
            raise ONPInputError(
                f"mask pruning: expected pruning_by in {PRUNING_BY} and positive steps, found "
                f"{self.pruning_by!r}, {self.pruning_step}, {self.number_step}"
            )


@dataclass(frozen=True)
class MaskPruningSettings(MaskPruning):
    """The mask-pruning and held-in settings ANP and RNP share; their settings extend it.

    Attributes (besides :class:`MaskPruning`'s):
        held_in_fraction: Share of the defense data held in for the choice.
        granularity: ``"layer"`` (one mask value per BatchNorm/conv channel, as the papers) or
            ``"node"`` (one per coupled channel group node).
    """

    held_in_fraction: float = defaults.HELD_IN_FRACTION
    granularity: str = defaults.MASK_GRANULARITY

    def __post_init__(self) -> None:
        super().__post_init__()  # fail on bad pruning settings when built, not after training
        if self.granularity not in GRANULARITIES:
            raise ONPInputError(f"{self.granularity!r}: granularity must be one of "
                                f"{GRANULARITIES}")


@dataclass(frozen=True)
class MaskUnits:
    """The neurons a :class:`SoftMask` holds one value for, and where each soft point reads them.

    Attributes:
        granularity: ``"layer"`` or ``"node"`` (see the module docstring).
        spans: ``{soft point: (start, stop)}``: the point's channels read values
            ``start .. stop - 1`` (points of one group share a span at ``"node"`` granularity).
        count: Number of values.
    """

    granularity: str
    spans: dict[str, tuple[int, int]]
    count: int

    def label(self, unit: int) -> str | int:
        """A unit's name for the record: its node number, or ``"module:channel"``."""
        if self.granularity == "node":
            return unit
        for name, (start, stop) in self.spans.items():
            if start <= unit < stop:
                return f"{name}:{unit - start}"
        raise IndexError(f"unit {unit} is not in [0, {self.count})")


def mask_units(model: nn.Module, groups: ChannelGroups, granularity: str = "layer") -> MaskUnits:
    """The mask units of ``model`` at ``granularity`` (``"layer"`` or ``"node"``).

    Raises:
        ONPInputError: For another granularity.
    """
    if granularity not in GRANULARITIES:
        raise ONPInputError(f"mask granularity: expected one of {GRANULARITIES}, found "
                            f"{granularity!r}")
    points = soft_points(model, groups)
    offsets = groups.offsets.tolist()
    spans: dict[str, tuple[int, int]] = {}
    count = groups.num_nodes if granularity == "node" else 0
    for name, index in points.items():
        if granularity == "node":
            spans[name] = (offsets[index], offsets[index + 1])
        else:
            size = groups.groups[index].size
            spans[name] = (count, count + size)
            count += size
    return MaskUnits(granularity, spans, count)


class SoftMask:
    """Learnable per-unit mask and perturbations, applied by forward hooks at the soft points.

    Shapes:
        mask, delta, xi: ``[units.count]`` float (mask in ``[0, 1]``, 1 = unchanged).

    Attributes:
        units: The mask units.
        mask: The neuron mask (a leaf tensor with grad).
        delta: Multiplicative perturbation of the scale (ANP's ``neuron_noise``).
        xi: Multiplicative perturbation of the shift (ANP's ``neuron_noise_bias``).
        perturbed: Whether ``delta`` and ``xi`` enter the forward pass.
    """

    def __init__(self, model: nn.Module, units: MaskUnits) -> None:
        self.units = units
        device = next(model.parameters()).device
        self.mask = torch.ones(units.count, device=device, requires_grad=True)
        self.delta = torch.zeros(units.count, device=device, requires_grad=True)
        self.xi = torch.zeros(units.count, device=device, requires_grad=True)
        self.perturbed = False
        modules = dict(model.named_modules())
        self._hooks: list[RemovableHandle] = [
            modules[name].register_forward_hook(
                lambda module, _i, out, span=span: self._scale(module, out, span)
            )
            for name, span in units.spans.items()
        ]

    def _scale(
        self, module: nn.Module, out: torch.Tensor, span: tuple[int, int]
    ) -> torch.Tensor:
        lo, hi = span
        factor = self.mask[lo:hi]
        if self.perturbed:
            factor = factor + self.delta[lo:hi]
        bias = _bias_of(module)
        if bias is None:
            return out * _view(factor, out.ndim)
        shift = _view(bias, out.ndim)
        bias_factor = 1.0 + self.xi[lo:hi] if self.perturbed else torch.ones_like(factor)
        return _view(factor, out.ndim) * (out - shift) + _view(bias_factor, out.ndim) * shift

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Copy ``mask`` (``[units.count]``, bool or float) into :attr:`mask`."""
        self.mask.copy_(mask.to(self.mask.device, self.mask.dtype))

    @torch.no_grad()
    def reset_perturbation(self, eps: float, generator: torch.Generator) -> None:
        """Draw ``delta`` and ``xi`` uniformly from ``[-eps, eps]`` (ANP's random start)."""
        for noise in (self.delta, self.xi):
            draw = torch.rand(noise.shape, generator=generator) * 2 * eps - eps
            noise.copy_(draw.to(noise.device))

    @torch.no_grad()
    def clip(self, eps: float) -> None:
        """Keep the mask in ``[0, 1]`` and the perturbations in ``[-eps, eps]``."""
        self.mask.clamp_(0.0, 1.0)
        self.delta.clamp_(-eps, eps)
        self.xi.clamp_(-eps, eps)

    def remove(self) -> None:
        """Remove the hooks: the model computes as before."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


@torch.no_grad()
def bake_soft_mask(model: nn.Module, units: MaskUnits, keep: torch.Tensor) -> nn.Module:
    """Zero, in place, the scale (weight rows) of every pruned unit at its soft point.

    The result computes what :class:`SoftMask` computes with the 0/1 mask ``keep`` and no
    perturbation: a pruned neuron outputs its shift (BN bias or layer bias), as ANP and RNP
    prune.

    Shapes:
        keep: ``[units.count]`` bool, ``True`` for a kept unit.

    Returns:
        ``model``.
    """
    modules = dict(model.named_modules())
    keep = keep.detach().cpu().bool()
    for name, (start, stop) in units.spans.items():
        weight = getattr(modules[name], "weight", None)
        if isinstance(weight, torch.Tensor):
            weight[~keep[start:stop].to(weight.device)] = 0.0
    return model


def prune_by_mask_values(
    model: nn.Module,
    units: MaskUnits,
    values: torch.Tensor,
    held_in: ImageSet,
    settings: MaskPruning,
    description: str,
) -> tuple[torch.Tensor, ScanResult[float]]:
    """Prune ``model`` in place by its learned mask values, how much chosen on held-in data.

    The official ANP and RNP pruning scripts scan either thresholds ``0, step, ... <= max``
    (pruning every unit whose value is at most the threshold) or counts of the lowest-valued
    units. The scan stops at the first candidate whose held-in accuracy drops more than
    ``max_drop`` below the unpruned model's; the last candidate before it is pruned, as ANP and
    RNP prune (:func:`bake_soft_mask`).

    Shapes:
        values: ``[units.count]`` float, the learned mask.

    Returns:
        ``([units.count]`` bool kept units, the scan; its candidates are thresholds or counts).
    """
    values = values.detach().cpu()
    order = torch.argsort(values, stable=True)
    if settings.pruning_by == "threshold":
        steps = int(round(settings.pruning_max / settings.pruning_step))
        candidates = [round(i * settings.pruning_step, 6) for i in range(steps + 1)]
    else:
        step = max(1, round(settings.number_step * units.count))
        candidates = list(range(step, int(settings.pruning_max * units.count) + 1, step))

    def keep_for(candidate: float) -> torch.Tensor:
        if settings.pruning_by == "threshold":
            return values > candidate
        keep = torch.ones(units.count, dtype=torch.bool)
        keep[order[: int(candidate)]] = False
        return keep

    soft = SoftMask(model, units)
    baseline = held_in_accuracy(model, held_in)

    def accuracy(candidate: float) -> float:
        soft.set_mask(keep_for(candidate))
        return held_in_accuracy(model, held_in)

    try:
        scan = largest_within_drop(candidates, accuracy, baseline, settings.max_drop, description)
    finally:
        soft.remove()
    keep = keep_for(scan.chosen) if scan.chosen is not None else torch.ones(units.count).bool()
    bake_soft_mask(model, units, keep)
    return keep, scan


def prune_and_describe(
    model: nn.Module, units: MaskUnits, values: torch.Tensor, held_in: ImageSet,
    settings: MaskPruningSettings, name: str,
) -> dict[str, Any]:
    """:func:`prune_by_mask_values` with ``settings``, then what ANP and RNP both report.

    Returns:
        JSON-ready: the choice, the pruned units, the scan, the mask values and the pruned
        model's held-in accuracy.
    """
    keep, scan = prune_by_mask_values(model, units, values, held_in, settings,
                                      f"{name} pruning scan")
    pruned = torch.nonzero(~keep).flatten().tolist()
    log.info("%s: %s %s prunes %d of %d units", name, settings.pruning_by, scan.chosen,
             len(pruned), len(keep))
    return {
        "pruning_by": settings.pruning_by, "chosen": scan.chosen, "pruned": len(pruned),
        "granularity": units.granularity, "units": units.count,
        "pruned_units": [units.label(u) for u in pruned],
        "scan": scan.describe(),
        "mask_values": [round(float(v), 4) for v in values],
        "held_in_accuracy": round(held_in_accuracy(model, held_in), 4),
    }

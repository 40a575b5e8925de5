"""CLP: Channel Lipschitzness-based Pruning.

Zheng, Zhang, Wang, Zhang & Li, "Data-free Backdoor Removal based on Channel Lipschitzness",
ECCV 2022.

A backdoor channel responds strongly to a small trigger, so its Lipschitz constant is large. For
output channel ``k`` of a convolution with weight ``W`` (followed by BatchNorm with scale
``gamma``, running variance ``var``), the upper bound of the channel Lipschitz constant is::

    UCLC_k = sigma_max( W_k.reshape(C_in, kh * kw) ) * |gamma_k| / sqrt(var_k + eps)

(``sigma_max``: the largest singular value; without BatchNorm the factor is 1). Within each
layer, channels with ``UCLC_k > mean + u * std`` are pruned: the paper zeroes the BatchNorm's
scale and shift, and, for a convolution without BatchNorm, its weights and bias. CLP needs no
data; ``u`` is the paper's 3 unless candidate values are given, in which case the smallest ``u``
(the most pruning) whose held-in accuracy stays within ``max_drop`` is chosen on the defense data.

The layers are the convolutional producers of every channel group (:mod:`onp.graph.groups`),
each with its own BatchNorm found in the traced graph (:func:`batchnorm_pairs`), so a residual
stream written by several convolutions is bounded layer by layer, as in the paper.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import held_in_accuracy, largest_within_drop, split_for_selection
from onp.defenses.neuron_masks import batchnorm_pairs
from onp.graph.evidence import channel_lipschitz_bound
from onp.graph.groups import trace_groups

LayerBounds = dict[str, tuple[torch.Tensor, str | None]]
"""``{conv name: ([C_out] UCLC, its BatchNorm's name or None)}``."""


@dataclass(frozen=True)
class ClpSettings:
    """Settings of :class:`CLP`.

    Attributes:
        u: Threshold multiplier: prune ``UCLC > mean + u * std`` (paper default 3).
        u_candidates: If given, the values of ``u`` to choose from on held-in accuracy (largest
            first; the smallest within ``max_drop`` wins) instead of the fixed ``u``.
        max_drop: Tolerated held-in accuracy drop when choosing ``u``, a fraction.
        held_in_fraction: Share of the defense data held in for that choice.
    """

    u: float = defaults.CLP_U
    u_candidates: tuple[float, ...] = ()
    max_drop: float = defaults.MASK_PRUNING_MAX_DROP
    held_in_fraction: float = defaults.HELD_IN_FRACTION


def layer_bounds(model: nn.Module, input_shape: tuple[int, int, int]) -> LayerBounds:
    """UCLC of every convolutional producer of every channel group of ``model``."""
    groups = trace_groups(model, input_shape)
    pairs = batchnorm_pairs(model, input_shape)
    modules = dict(model.named_modules())
    bounds: LayerBounds = {}
    for group in groups.groups:
        for name in group.producers:
            if isinstance(modules[name], nn.Conv2d):
                bn_name = pairs.get(name)
                bn = modules[bn_name] if bn_name is not None else None
                bounds[name] = (channel_lipschitz_bound(modules[name], bn), bn_name)
    return bounds


def channels_to_prune(bounds: LayerBounds, u: float) -> dict[str, list[int]]:
    """Per layer, the channels whose UCLC exceeds ``mean + u * std`` of the layer."""
    chosen: dict[str, list[int]] = {}
    for name, (bound, _bn) in bounds.items():
        if bound.numel() < 2:
            continue
        threshold = bound.mean() + u * bound.std()
        chosen[name] = torch.nonzero(bound > threshold).flatten().tolist()
    return chosen


@torch.no_grad()
def zero_channels(model: nn.Module, bounds: LayerBounds, chosen: dict[str, list[int]]) -> None:
    """Zero the chosen channels in place: BatchNorm scale and shift, else conv weight and bias."""
    modules = dict(model.named_modules())
    for name, channels in chosen.items():
        if not channels:
            continue
        bn_name = bounds[name][1]
        target = modules[bn_name] if bn_name is not None else modules[name]
        for param in (getattr(target, "weight", None), getattr(target, "bias", None)):
            if isinstance(param, torch.Tensor):
                param[torch.tensor(channels, device=param.device)] = 0.0


@register_defense
class CLP(Defense):
    """Prune channels with an outlying Lipschitz upper bound, layer by layer (data-free)."""

    name = "clp"
    settings_type = ClpSettings
    settings: ClpSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        bounds = layer_bounds(model, defense.meta.image_shape)
        info: dict[str, Any] = {}
        u = s.u
        if s.u_candidates:
            held_in = split_for_selection(defense, seed, s.held_in_fraction).held_in

            def accuracy(candidate: float) -> float:
                trial = copy.deepcopy(model)
                zero_channels(trial, bounds, channels_to_prune(bounds, candidate))
                return held_in_accuracy(trial, held_in)

            scan = largest_within_drop(
                sorted(s.u_candidates, reverse=True), accuracy, held_in_accuracy(model, held_in),
                s.max_drop, "clp u scan",
            )
            u = scan.chosen if scan.chosen is not None else math.inf  # no candidate kept CA
            info["scan"] = scan.describe()
        chosen = channels_to_prune(bounds, u)
        zero_channels(model, bounds, chosen)
        info.update({
            "u": u if math.isfinite(u) else None, "pruned": sum(len(c) for c in chosen.values()),
            "layers": {name: {"batchnorm": bounds[name][1], "channels": len(bounds[name][0]),
                              "pruned": chosen.get(name, [])} for name in bounds},
        })
        return RepairResult(model, info)

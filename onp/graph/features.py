"""Node features of the neuron graph: one row per channel node, every column documented here.

Node ``n`` is channel ``c`` of channel group ``g`` (numbered by
:class:`~onp.graph.groups.ChannelGroups`). :data:`NODE_FEATURES` names the columns of
:func:`node_features`, in order; this table is the one place that says what they mean.

==================  ==============================================================================
name                meaning (units; normalization)
==================  ==============================================================================
depth               ``g / (num_groups - 1)``: position of the group in forward order (0..1; 0 for a
                    single group)
forward_order       ``group.order / max order``: forward-call position of the group's first
                    producer among all modules run (0..1)
is_conv             1 if the group's first producer is a ``Conv2d``, else 0
is_linear           1 if the group's first producer is a ``Linear``, else 0
coupled             1 if several layers write these channels (residual stream, added branches)
log_group_size      ``ln(group.size)``: log of the number of channels in the group
weight_l1_rel       L1 norm of the channel's output weights ``W[c]``, mean over producers, divided
                    by the group's mean of that value (1 = typical channel of its layer)
weight_l2_rel       the same for the L2 norm
weight_l1_log       ``ln(L1 + eps)`` of the raw L1 norm above (weight units, not normalized)
weight_l2_log       ``ln(L2 + eps)`` of the raw L2 norm above
has_bn              1 if a BatchNorm is among the group's mask points, else 0
bn_gamma_abs        ``|gamma_c|`` of those BatchNorms, mean over them (0 without BatchNorm)
bn_beta             ``beta_c`` of those BatchNorms, mean over them (0 without BatchNorm)
act_mean            on the clean images: mean over images of the channel's spatial-mean output
                    (output units) at the group's BatchNorm mask points, or at all its mask points
                    without BatchNorm; mean over those points
act_std             the population std over images of the same spatial means; mean over points
act_pos_frac        fraction of the channel's output elements (images x positions) that are
                    ``> 0``, i.e. alive after a ReLU (0..1); mean over points
has_trigger         1 if triggered images were given, else 0 (and the three below are 0)
trigger_z           ``(mean_triggered - mean_clean) / (std_clean + eps)`` of the spatial means, per
                    mask point then averaged: the channel's response to the trigger in clean stds
trigger_z_abs       ``|trigger_z|``
trigger_rank        rank of ``trigger_z_abs`` within the group, scaled to 0..1 (1 = strongest;
                    ties share their mean rank; 0.5 for a one-channel group)
clp_z               CLP's channel Lipschitz upper bound, standardized within the group (data-free;
                    :mod:`onp.graph.evidence`); CLP prunes ``clp_z > 3``
clean_contribution  first-order drop of the clean images' class margin when the node is pruned,
                    divided by its largest absolute value over the model (-1..1; 0 without labels)
backdoor_contrib    the same for the suspected-trigger images' margin for the suspected target:
                    positive = pruning the node weakens the trigger (0 without trigger images)
==================  ==============================================================================

Activations are collected with forward hooks in one pass over the clean images (and one over the
triggered ones), in eval mode under ``torch.no_grad()``; the model is left as it was found. Sums
are kept in float64 so the features do not depend on the batch size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from onp.errors import ONPInputError
from onp.graph.evidence import BATCHNORM_TYPES, clp_scores, margin_contributions, scaled
from onp.graph.groups import ChannelGroup, ChannelGroups

log = logging.getLogger(__name__)

NODE_FEATURES: tuple[str, ...] = (
    "depth",
    "forward_order",
    "is_conv",
    "is_linear",
    "coupled",
    "log_group_size",
    "weight_l1_rel",
    "weight_l2_rel",
    "weight_l1_log",
    "weight_l2_log",
    "has_bn",
    "bn_gamma_abs",
    "bn_beta",
    "act_mean",
    "act_std",
    "act_pos_frac",
    "has_trigger",
    "trigger_z",
    "trigger_z_abs",
    "trigger_rank",
    "clp_z",
    "clean_contribution",
    "backdoor_contrib",
)
"""Names of the columns of :func:`node_features`, in order (see the module docstring)."""

NUM_NODE_FEATURES = len(NODE_FEATURES)
"""``F``, the width of the feature matrix."""

NORM_EPS = 1e-8
"""Added to a group's mean weight norm before dividing, so an all-zero (pruned) group gives 0."""

LOG_EPS = 1e-6
"""Added to a raw weight norm before the log: a zeroed channel reads ``ln(1e-6) = -13.8``."""

STD_EPS = 1e-6
"""Added to the clean std in the trigger z-score: a constant (dead) channel does not blow up."""

SINGLE_RANK = 0.5
"""Rank feature of a one-channel group, which has nothing to be ranked against."""


_INDEX = {name: i for i, name in enumerate(NODE_FEATURES)}


def feature_index(name: str) -> int:
    """Column of the feature ``name`` in :func:`node_features`'s output.

    Args:
        name: One of :data:`NODE_FEATURES`.

    Returns:
        Its column index.

    Raises:
        ONPInputError: If ``name`` is not one of :data:`NODE_FEATURES`.
    """
    if name not in _INDEX:
        raise ONPInputError(f"node feature {name!r} is unknown; known: {list(NODE_FEATURES)}")
    return _INDEX[name]


def _output_weight_norms(modules: dict[str, nn.Module], group: ChannelGroup) -> torch.Tensor:
    """``[size, 2]`` L1 and L2 norms of each channel's output weights, mean over producers."""
    norms = torch.zeros(group.size, 2, dtype=torch.float64)
    for name in group.producers:
        weight = cast(torch.Tensor, modules[name].weight).detach().to("cpu", torch.float64)
        weight = weight.flatten(1)
        norms[:, 0] += weight.abs().sum(1)
        norms[:, 1] += weight.pow(2).sum(1).sqrt()
    return norms / len(group.producers)


def _batchnorm_params(modules: dict[str, nn.Module], group: ChannelGroup) -> torch.Tensor | None:
    """``[size, 2]``: mean ``|gamma|`` and ``beta`` over the group's BatchNorms, or ``None``."""
    points = (modules[n] for n in group.mask_points)
    norms = [m for m in points if isinstance(m, BATCHNORM_TYPES)]
    if not norms:
        return None
    params = torch.zeros(group.size, 2, dtype=torch.float64)
    for norm in norms:
        if norm.affine:
            params[:, 0] += norm.weight.detach().to("cpu", torch.float64).abs()
            params[:, 1] += norm.bias.detach().to("cpu", torch.float64)
        else:  # a non-affine BatchNorm scales by 1 and shifts by 0
            params[:, 0] += 1.0
    return params / len(norms)


def rank_normalize(values: torch.Tensor) -> torch.Tensor:
    """Rank of each value within ``values``, scaled to ``0..1`` (ties share their mean rank).

    Shapes:
        values: ``[n]``; output: ``[n]``, ``0`` for the smallest, ``1`` for the largest.
    """
    n = values.numel()
    if n == 1:
        return torch.full_like(values, SINGLE_RANK)
    below = (values[None, :] < values[:, None]).sum(1).to(values.dtype)
    equal = (values[None, :] == values[:, None]).sum(1).to(values.dtype)
    return (below + (equal - 1) / 2) / (n - 1)


@dataclass(frozen=True)
class ActivationStats:
    """Per-channel statistics of one module's output over a set of images.

    Attributes:
        mean: ``[C]`` float64, mean over images of each channel's spatial mean (output units).
        std: ``[C]`` float64, population std over images of the same spatial means.
        positive: ``[C]`` float64, fraction of output elements (images x positions) ``> 0``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    positive: torch.Tensor


def _stat_points(model: nn.Module, groups: ChannelGroups) -> list[tuple[str, ...]]:
    """Per group, the mask points whose outputs are measured: its BatchNorms, else all of them."""
    modules = dict(model.named_modules())
    points = []
    for group in groups.groups:
        norms = tuple(n for n in group.mask_points if isinstance(modules[n], BATCHNORM_TYPES))
        points.append(norms or group.mask_points)
    return points


class _Accumulator:
    """Running float64 sums of one module's outputs, fed by a forward hook."""

    def __init__(self) -> None:
        # 0-d float64 zeros broadcast against the first output's [C] sums.
        self.sum = torch.zeros((), dtype=torch.float64)
        self.sum_sq = torch.zeros((), dtype=torch.float64)
        self.positive = torch.zeros((), dtype=torch.float64)
        self.images = 0
        self.elements = 0

    def add(self, output: torch.Tensor) -> None:
        """Add a ``[B, C, ...]`` output (``[B, C]`` for a dense layer)."""
        flat = output.detach().flatten(2) if output.ndim > 2 else output.detach().unsqueeze(2)
        # Reduce on the output's device; float64 sums make the result batch-size invariant.
        spatial = flat.mean(2, dtype=torch.float64).cpu()
        self.sum = self.sum + spatial.sum(0)
        self.sum_sq = self.sum_sq + spatial.pow(2).sum(0)
        self.positive = self.positive + (flat > 0).sum((0, 2)).cpu().to(torch.float64)
        self.images += flat.shape[0]
        self.elements += flat.shape[0] * flat.shape[2]

    def result(self) -> ActivationStats:
        """The statistics of everything added so far."""
        mean = self.sum / self.images
        var = (self.sum_sq / self.images - mean.pow(2)).clamp_min(0.0)
        return ActivationStats(mean, var.sqrt(), self.positive / self.elements)


def _collect_stats(
    model: nn.Module, names: list[str], images: torch.Tensor, batch_size: int
) -> dict[str, ActivationStats]:
    """One eval-mode, no-grad pass over ``images`` with hooks on ``names``; the model is restored.

    Shapes:
        images: ``[B, C, H, W]``; each result: ``[C_module]`` per statistic.
    """
    modules = dict(model.named_modules())
    accumulators = {name: _Accumulator() for name in names}
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, acc=accumulators[name]: acc.add(out)  # returns None: output kept
        )
        for name in names
    ]
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            for batch in images.split(batch_size):
                model(batch.to(parameter.device, parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    silent = [name for name, acc in accumulators.items() if acc.images == 0]
    if silent:
        raise ONPInputError(f"{type(model).__name__}: modules {silent[:5]} were not run forward")
    return {name: acc.result() for name, acc in accumulators.items()}


Columns = dict[str, float | torch.Tensor]
"""Some feature columns of one group: a scalar (same for every channel) or a ``[size]`` tensor."""


def _static_columns(
    modules: dict[str, nn.Module], group: ChannelGroup, num_groups: int, max_order: int
) -> Columns:
    """The columns of ``group`` that depend on the weights and the structure only."""
    norms = _output_weight_norms(modules, group)
    batchnorm = _batchnorm_params(modules, group)
    bn = torch.zeros(group.size, 2, dtype=torch.float64) if batchnorm is None else batchnorm
    return {
        "depth": group.index / (num_groups - 1) if num_groups > 1 else 0.0,
        "forward_order": group.order / max_order,
        "is_conv": float(group.kind == "conv"),
        "is_linear": float(group.kind == "linear"),
        "coupled": float(group.coupled),
        "log_group_size": math.log(group.size),
        "weight_l1_rel": norms[:, 0] / (norms[:, 0].mean() + NORM_EPS),
        "weight_l2_rel": norms[:, 1] / (norms[:, 1].mean() + NORM_EPS),
        "weight_l1_log": torch.log(norms[:, 0] + LOG_EPS),
        "weight_l2_log": torch.log(norms[:, 1] + LOG_EPS),
        "has_bn": float(batchnorm is not None),
        "bn_gamma_abs": bn[:, 0],
        "bn_beta": bn[:, 1],
    }


def _activation_columns(
    points: tuple[str, ...],
    clean: dict[str, ActivationStats],
    triggered: dict[str, ActivationStats] | None,
) -> Columns:
    """The activation and trigger-response columns of the group measured at ``points``."""
    stats = [clean[name] for name in points]
    columns: Columns = {
        "act_mean": torch.stack([s.mean for s in stats]).mean(0),
        "act_std": torch.stack([s.std for s in stats]).mean(0),
        "act_pos_frac": torch.stack([s.positive for s in stats]).mean(0),
    }
    if triggered is None:
        return {**columns, "has_trigger": 0.0, "trigger_z": 0.0, "trigger_z_abs": 0.0,
                "trigger_rank": 0.0}
    # Per point, then averaged: each point's output is measured in its own clean stds.
    z = torch.stack([
        (triggered[name].mean - clean[name].mean) / (clean[name].std + STD_EPS) for name in points
    ]).mean(0)
    return {**columns, "has_trigger": 1.0, "trigger_z": z, "trigger_z_abs": z.abs(),
            "trigger_rank": rank_normalize(z.abs())}


def node_features(
    model: nn.Module,
    groups: ChannelGroups,
    clean_images: torch.Tensor,
    triggered_images: torch.Tensor | None = None,
    batch_size: int = 256,
    clean_labels: torch.Tensor | None = None,
    trigger_targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Features of every channel node: structure, weights, BatchNorm, activations, trigger response.

    Args:
        model: The classifier ``groups`` was traced from; run in eval mode, left unchanged.
        groups: Its channel groups (:func:`onp.graph.groups.trace_groups`).
        clean_images: Clean images, values in ``[0, 1]``.
        triggered_images: Images with a trigger applied, or ``None`` (default: ``None``; the
            trigger columns are then 0 with ``has_trigger = 0``). They need not be the clean
            images themselves: the response compares per-channel means of the two sets.
        batch_size: Images per forward pass; the result does not depend on it (default: 256).
        clean_labels: The clean images' labels, for ``clean_contribution`` (default: none,
            the column is then 0).
        trigger_targets: The class each triggered image's trigger aims at, for
            ``backdoor_contrib`` (default: none, the column is then 0).

    Returns:
        The feature matrix; columns named by :data:`NODE_FEATURES`.

    Shapes:
        clean_images: ``[B, C, H, W]`` with ``(C, H, W) == groups.input_shape``.
        triggered_images: ``[B', C, H, W]``, any ``B'``.
        clean_labels: ``[B]`` int64; trigger_targets: ``[B']`` int64.
        output: ``[num_nodes, F]`` float32, ``F = len(NODE_FEATURES)``, all finite.

    Raises:
        ONPInputError: If the images do not fit ``groups.input_shape``, or
            ``batch_size`` is not positive.
    """
    _check_images("clean_images", clean_images, groups.input_shape)
    if triggered_images is not None:
        _check_images("triggered_images", triggered_images, groups.input_shape)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ONPInputError(f"batch_size: expected a positive int, found {batch_size!r}")
    points = _stat_points(model, groups)
    hooked = sorted({name for group_points in points for name in group_points})
    clean = _collect_stats(model, hooked, clean_images, batch_size)
    triggered = None
    if triggered_images is not None:
        triggered = _collect_stats(model, hooked, triggered_images, batch_size)
    modules = dict(model.named_modules())
    max_order = max(max(g.order for g in groups.groups), 1)
    contributions = _contribution_columns(model, groups, clean_images, clean_labels,
                                          triggered_images, trigger_targets, batch_size)
    rows = []
    for group, group_points, evidence in zip(groups.groups, points, contributions, strict=True):
        columns = {
            **_static_columns(modules, group, len(groups.groups), max_order),
            **_activation_columns(group_points, clean, triggered),
            "clp_z": clp_scores(modules, group),
            **evidence,
        }
        rows.append(torch.stack([
            torch.as_tensor(columns[name], dtype=torch.float64).expand(group.size)
            for name in NODE_FEATURES
        ], dim=1))
    features = torch.cat(rows).float()
    if not torch.isfinite(features).all():  # an internal invariant: every eps above guards it
        bad = [NODE_FEATURES[i] for i in torch.nonzero(~torch.isfinite(features).all(0)).flatten()]
        raise AssertionError(f"node features not finite in columns {bad}")
    log.debug("node features %s from %d clean images", tuple(features.shape), len(clean_images))
    return features


def _contribution_columns(
    model: nn.Module, groups: ChannelGroups, clean_images: torch.Tensor,
    clean_labels: torch.Tensor | None, triggered_images: torch.Tensor | None,
    trigger_targets: torch.Tensor | None, batch_size: int,
) -> list[Columns]:
    """Per group, ``clean_contribution`` and ``backdoor_contrib`` (0 where not measurable)."""
    zeros = torch.zeros(groups.num_nodes, dtype=torch.float64)
    clean = zeros if clean_labels is None else scaled(
        margin_contributions(model, groups, clean_images, clean_labels, batch_size))
    backdoor = zeros
    if triggered_images is not None and trigger_targets is not None:
        backdoor = scaled(margin_contributions(model, groups, triggered_images, trigger_targets,
                                             batch_size))
    return [{"clean_contribution": c, "backdoor_contrib": b}
            for c, b in zip(groups.split(clean), groups.split(backdoor), strict=True)]


def _check_images(what: str, images: torch.Tensor, input_shape: tuple[int, int, int]) -> None:
    """Raise :class:`ONPInputError` unless ``images`` is a non-empty ``[B, *input_shape]`` batch."""
    if (
        not isinstance(images, torch.Tensor)
        or images.ndim != 4
        or tuple(images.shape[1:]) != tuple(input_shape)
        or len(images) == 0
        or not images.is_floating_point()
    ):
        raise ONPInputError(
            f"{what}: expected a non-empty float tensor [B, {', '.join(map(str, input_shape))}], "
            f"found {type(images).__name__} {list(getattr(images, 'shape', []))}"
        )

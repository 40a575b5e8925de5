"""The neuron-connectivity graph of a classifier, as ``torch_geometric.data.Data``.

Nodes are the channels of the model's coupled channel groups (:mod:`onp.graph.groups`), numbered
group by group; their features are :func:`onp.graph.features.node_features` (column names in
:data:`onp.graph.features.NODE_FEATURES`). A directed edge ``i -> j`` says that channel ``j`` of a
group ``g2`` is computed from channel ``i`` of the group ``g1`` that one of ``g2``'s producer
layers reads. Its strength is the L1 norm of the kernel slice ``W[j, i]`` of that layer, summed
over the producers of ``g2`` that read ``g1``, and divided by the largest strength into ``g2``.
Only the ``max_in_edges`` strongest edges into each node are kept, so the graph stays sparse.

Edges follow the forward pass (the layer that makes an edge runs after a layer writing its source
channel) but not always group indices: a residual stream is one group indexed by its first
writer, so the block convs that write into it later send edges to a lower group index.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import torch
from torch import nn
from torch_geometric.data import Data

from onp.errors import ONPInputError
from onp.graph.features import node_features
from onp.graph.groups import ChannelGroups

log = logging.getLogger(__name__)

EdgeIndex = torch.Tensor
"""``[2, num_edges]`` int64: row 0 the source node, row 1 the target node."""

DEFAULT_MAX_IN_EDGES = 8
"""Incoming edges kept per node: enough for message passing, few enough to stay sparse."""


def layer_sources(model: nn.Module, groups: ChannelGroups) -> dict[str, int]:
    """The group each conv/dense layer reads, for every layer that reads one.

    Args:
        model: The model ``groups`` was traced from.
        groups: Its channel groups.

    Returns:
        ``{layer name: index of the group whose channels it reads}``; layers that read the
        input image are absent.

    Raises:
        ONPInputError: If a layer reads several groups (a channel concatenation), which the
            graph does not model.
    """
    sources: dict[str, int] = {}
    for group in groups.groups:
        for name in group.consumers:
            if name in sources:
                raise ONPInputError(
                    f"{type(model).__name__}: layer {name!r} reads groups {sources[name]} and "
                    f"{group.index} (a channel concatenation?); the neuron graph needs each "
                    "layer to read one group"
                )
            sources[name] = group.index
    return sources


def connection_strength(layer: nn.Module, in_size: int, where: str = "layer") -> torch.Tensor:
    """L1 norm of each kernel slice ``W[j, i]``: how strongly input ``i`` drives output ``j``.

    For a grouped conv, output ``j`` reads only its own block of inputs (0 elsewhere). For a
    dense layer after a flatten of ``in_size`` channels of ``HW`` positions, channel ``i`` owns
    the input features ``[i * HW, (i + 1) * HW)`` (torch flattens channels first).

    Args:
        layer: A ``Conv2d`` or ``Linear``.
        in_size: Number of channels of the group it reads.
        where: The layer's name, for error messages (default: ``"layer"``).

    Returns:
        The strengths, float64 on the CPU.

    Shapes:
        output: ``[out_channels, in_size]``, values ``>= 0`` in weight units.

    Raises:
        ONPInputError: If the layer's input size does not fit ``in_size`` channels.
    """
    weight = cast(torch.Tensor, layer.weight).detach().to("cpu", torch.float64)
    if isinstance(layer, nn.Conv2d):
        if layer.in_channels != in_size:
            raise ONPInputError(
                f"{where}: expected {in_size} input channels from its source group, found "
                f"{layer.in_channels}"
            )
        per_slice = weight.abs().sum((2, 3))  # [out, in / conv groups]
        if layer.groups == 1:
            return per_slice
        return torch.block_diag(*per_slice.split(layer.out_channels // layer.groups))
    if isinstance(layer, nn.Linear):
        if layer.in_features % in_size != 0:
            raise ONPInputError(
                f"{where}: {layer.in_features} input features are not a whole number of "
                f"positions for the {in_size} channels of its source group"
            )
        positions = layer.in_features // in_size
        return weight.abs().view(layer.out_features, in_size, positions).sum(2)
    raise ONPInputError(f"{where}: expected a Conv2d or Linear, found {type(layer).__name__}")


def _top_edges(
    dense: torch.Tensor, columns: torch.Tensor, first_target: int, max_in_edges: int | None
) -> tuple[EdgeIndex, torch.Tensor]:
    """The strongest nonzero edges into each row of ``dense`` (``[size, candidates]``).

    Returns ``edge_index [2, E]`` (sources ``columns[col]``, targets ``first_target + row``) and
    the strengths ``[E]`` divided by their maximum.
    """
    keep = dense > 0  # a zeroed (pruned) connection is no edge
    if max_in_edges is not None and max_in_edges < dense.shape[1]:
        top = torch.zeros_like(keep)
        top.scatter_(1, dense.topk(max_in_edges, dim=1).indices, True)
        keep &= top
    rows, cols = keep.nonzero(as_tuple=True)
    strength = dense[rows, cols]
    if strength.numel():
        strength = strength / strength.max()
    return torch.stack([columns[cols], rows + first_target]), strength


def neuron_edges(
    model: nn.Module, groups: ChannelGroups, max_in_edges: int | None = DEFAULT_MAX_IN_EDGES
) -> tuple[EdgeIndex, torch.Tensor]:
    """The weighted, sparsified channel-to-channel edges of ``model``, from its weights only.

    Args:
        model: The model ``groups`` was traced from (read, not modified).
        groups: Its channel groups.
        max_in_edges: Strongest incoming edges kept per node, or ``None`` for all (default: 8).

    Returns:
        ``(edge_index, edge_attr)``, sorted by target node, then source node.

    Shapes:
        edge_index: ``[2, E]`` int64, source node then target node.
        edge_attr: ``[E, 1]`` float32 in ``(0, 1]``: strength divided by the largest strength
            into the same target group.

    Raises:
        ONPInputError: If ``max_in_edges`` is not a positive int or ``None``, or a layer does not
            fit the group it reads.
    """
    if max_in_edges is not None and (not isinstance(max_in_edges, int) or max_in_edges < 1):
        raise ONPInputError(
            f"max_in_edges: expected a positive int or None, found {max_in_edges!r}"
        )
    modules = dict(model.named_modules())
    sources = layer_sources(model, groups)
    offsets = groups.offsets
    edge_parts, strength_parts = [], []
    for target in groups.groups:
        by_source: dict[int, torch.Tensor] = {}
        for name in target.producers:
            if name not in sources:  # reads the input image
                continue
            source = groups.groups[sources[name]]
            strength = connection_strength(modules[name], source.size, name)
            if strength.shape[0] != target.size:
                raise ONPInputError(
                    f"{name}: writes {strength.shape[0]} channels into a group of {target.size}"
                )
            by_source[source.index] = by_source.get(source.index, 0) + strength
        if not by_source:
            continue
        order = sorted(by_source)
        dense = torch.cat([by_source[g] for g in order], dim=1)
        columns = torch.cat([torch.arange(int(offsets[g]), int(offsets[g + 1])) for g in order])
        edges, strength = _top_edges(dense, columns, int(offsets[target.index]), max_in_edges)
        edge_parts.append(edges)
        strength_parts.append(strength)
    if not edge_parts:
        return torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0, 1)
    return torch.cat(edge_parts, dim=1), torch.cat(strength_parts).float().unsqueeze(1)


def build_neuron_graph(
    model: nn.Module,
    groups: ChannelGroups,
    clean_images: torch.Tensor,
    triggered_images: torch.Tensor | None = None,
    max_in_edges: int | None = DEFAULT_MAX_IN_EDGES,
    batch_size: int = 256,
    clean_labels: torch.Tensor | None = None,
    trigger_targets: torch.Tensor | None = None,
) -> Data:
    """The neuron-connectivity graph of ``model``: channel nodes, features and weighted edges.

    Args:
        model: The classifier ``groups`` was traced from; run in eval mode, left unchanged.
        groups: Its channel groups (:func:`onp.graph.groups.trace_groups`).
        clean_images: Clean images in ``[0, 1]`` for the activation features.
        triggered_images: The same images with a (synthesized) trigger, for the trigger-response
            features, or ``None`` (default: ``None``).
        max_in_edges: Strongest incoming edges kept per node, or ``None`` for all (default: 8).
        batch_size: Images per forward pass (default: 256).
        clean_labels: ``[B]`` labels of the clean images, for the clean loss contribution
            (default: none).
        trigger_targets: ``[B']`` the suspected target of each triggered image, for the backdoor
            loss contribution (default: none).

    Returns:
        The graph. Its attributes are ``x``, ``edge_index``, ``edge_attr``, ``node_group``,
        ``node_channel`` and ``num_groups`` (int); column ``k`` of ``x`` is the feature
        ``onp.graph.features.NODE_FEATURES[k]``.

    Shapes:
        clean_images, triggered_images: ``[B, C, H, W]``, ``(C, H, W) == groups.input_shape``.
        x: ``[num_nodes, F]`` float32, ``F = len(NODE_FEATURES)``.
        edge_index: ``[2, E]`` int64, source channel then target channel; at most
            ``max_in_edges`` edges into each node.
        edge_attr: ``[E, 1]`` float32 in ``(0, 1]``, connection strength (see module docstring).
        node_group, node_channel: ``[num_nodes]`` int64, the group and channel of each node.

    Raises:
        ONPInputError: If the images or ``max_in_edges`` are invalid, or the model's layers do not
            fit its groups.
    """
    x = node_features(model, groups, clean_images, triggered_images, batch_size=batch_size,
                      clean_labels=clean_labels, trigger_targets=trigger_targets)
    start = time.perf_counter()
    edge_index, edge_attr = neuron_edges(model, groups, max_in_edges)
    log.debug("neuron graph edges: %d in %.3f s", edge_index.shape[1], time.perf_counter() - start)
    log.info("neuron graph: %d nodes, %d groups, %d edges", groups.num_nodes, len(groups.groups),
             edge_index.shape[1])
    return Data(
        x=x,
        edge_index=edge_index,
        edge_attr=edge_attr,
        node_group=groups.node_group.clone(),
        node_channel=groups.node_channel.clone(),
        num_groups=len(groups.groups),
    )

"""Coupled channel groups, found by tracing: the prunable units of a network.

A *channel group* is a set of layers whose output channels must be pruned together: a conv and
the BatchNorm after it, or every conv that writes into one residual stream (a block's output and
its shortcut), or the two dense branches of the DeepID net before their addition. The couplings
come from Torch-Pruning's traced dependency graph (Fang et al., "DepGraph", CVPR 2023), never
from per-architecture lists, so a user's own traceable model works the same way as the zoo's.

Channel ``c`` of group ``g`` is one node of the neuron graph (:mod:`onp.graph.neuron_graph`);
:class:`ChannelGroups` numbers those nodes ``0 .. num_nodes - 1`` group by group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import torch
import torch_pruning as tp
from torch import nn

from onp.errors import ONPInputError

log = logging.getLogger(__name__)

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
"""Layers whose output channels (conv) or units (dense) are nodes of the neuron graph."""


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of several layers, tied together so that they are pruned as one.

    Attributes:
        index: Position of the group in :attr:`ChannelGroups.groups` (forward order).
        size: Number of channels in the group.
        producers: Names of the conv/dense layers that write these channels.
        mask_points: Names of every module whose output carries these channels on dim 1
            (producers, BatchNorms after them, BatchNorms that read a residual stream); a mask
            zeroes the channel at each of them.
        consumers: Names of the conv/dense layers that read these channels.
        order: Forward-call position of the first producer (0 = first layer run).
        kind: ``"conv"`` or ``"linear"`` (the type of the first producer).
    """

    index: int
    size: int
    producers: tuple[str, ...]
    mask_points: tuple[str, ...]
    consumers: tuple[str, ...]
    order: int
    kind: str

    @property
    def coupled(self) -> bool:
        """Whether several layers write into these channels (a group node of the graph)."""
        return len(self.producers) > 1


@dataclass(frozen=True)
class ChannelGroups:
    """All prunable channel groups of one model, and the node numbering over them.

    Attributes:
        groups: The groups in forward order.
        output_layer: Name of the classifier layer, which is never pruned.
        input_shape: ``(C, H, W)`` the model was traced with.
    """

    groups: tuple[ChannelGroup, ...]
    output_layer: str
    input_shape: tuple[int, int, int]

    @cached_property
    def offsets(self) -> torch.Tensor:
        """``[num_groups + 1]`` int64: nodes of group ``g`` are ``offsets[g] .. offsets[g+1]-1``."""
        sizes = torch.tensor([0] + [g.size for g in self.groups], dtype=torch.int64)
        return torch.cumsum(sizes, 0)

    @property
    def num_nodes(self) -> int:
        """Number of channel nodes over all groups."""
        return int(self.offsets[-1])

    @cached_property
    def node_group(self) -> torch.Tensor:
        """``[num_nodes]`` int64: the group of each node."""
        sizes = torch.tensor([g.size for g in self.groups], dtype=torch.int64)
        return torch.repeat_interleave(torch.arange(len(self.groups)), sizes)

    @cached_property
    def node_channel(self) -> torch.Tensor:
        """``[num_nodes]`` int64: the channel index of each node within its group."""
        return torch.arange(self.num_nodes) - self.offsets[self.node_group]

    def node(self, group: int, channel: int) -> int:
        """Node number of ``channel`` in ``group``."""
        if not 0 <= channel < self.groups[group].size:
            raise IndexError(f"group {group} has {self.groups[group].size} channels, not {channel}")
        return int(self.offsets[group]) + channel

    def split(self, per_node: torch.Tensor) -> list[torch.Tensor]:
        """Cut a per-node tensor ``[num_nodes, ...]`` into one piece per group."""
        return list(torch.split(per_node, [g.size for g in self.groups]))

    def describe(self) -> list[dict[str, object]]:
        """JSON-ready summary, one entry per group."""
        return [
            {"index": g.index, "size": g.size, "kind": g.kind, "producers": list(g.producers),
             "mask_points": list(g.mask_points)}
            for g in self.groups
        ]


def _call_order(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Position of each module's first forward call, from hooks on one forward pass."""
    order: dict[str, int] = {}

    def record(name: str) -> None:  # a forward hook must return None, or it replaces the output
        order.setdefault(name, len(order))

    hooks = [
        module.register_forward_hook(lambda _m, _i, _o, name=name: record(name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ONPInputError(
            f"{type(model).__name__}: expected a classifier returning logits [B, num_classes], "
            f"found {type(output).__name__} {getattr(output, 'shape', '')}"
        )
    return order


def find_output_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last conv/dense layer run in a forward pass: the classifier head."""
    order = _call_order(model, example)
    modules = dict(model.named_modules())
    prunable = [name for name in order if isinstance(modules[name], PRUNABLE_TYPES)]
    if not prunable:
        raise ONPInputError(f"{type(model).__name__}: expected conv or dense layers, found none")
    return prunable[-1]


def trace_groups(
    model: nn.Module, input_shape: tuple[int, int, int], output_layer: str | None = None
) -> ChannelGroups:
    """Trace ``model`` and return its coupled channel groups in forward order.

    Args:
        model: A classifier taking ``[B, C, H, W]`` images (not modified; traced in eval mode).
        input_shape: ``(C, H, W)`` of one input.
        output_layer: Name of the classifier head, left unpruned (default: the last conv/dense
            layer run).

    Returns:
        The groups and their node numbering.

    Raises:
        ONPInputError: If the model cannot be traced or has no prunable layer.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    try:
        order = _call_order(model, example)
        modules = dict(model.named_modules())
        names = {module: name for name, module in modules.items()}
        head = output_layer or find_output_layer(model, example)
        if head not in modules:
            raise ONPInputError(f"output_layer {head!r} is not a module of the model")
        try:
            graph = dependency_graph(model, input_shape)
            raw_groups = list(graph.get_all_groups(
                ignored_layers=[modules[head]], root_module_types=PRUNABLE_TYPES
            ))
        except Exception as error:  # Torch-Pruning raises many types; report them as one
            raise ONPInputError(
                f"{type(model).__name__}: could not trace channel dependencies ({error!r}); "
                "the model must be a plain torch module traceable by autograd"
            ) from error
        found = [_group_from_deps(graph, raw, names, order) for raw in raw_groups]
    finally:
        model.train(was_training)
    groups = [g for g in found if g is not None]
    if not groups:
        raise ONPInputError(f"{type(model).__name__}: found no prunable conv or dense channels")
    groups.sort(key=lambda g: g.order)
    groups = [
        ChannelGroup(i, g.size, g.producers, g.mask_points, g.consumers, g.order, g.kind)
        for i, g in enumerate(groups)
    ]
    log.info("traced %d channel groups (%d coupled)", len(groups), sum(g.coupled for g in groups))
    channels, height, width = input_shape
    return ChannelGroups(tuple(groups), head, (channels, height, width))


def dependency_graph(model: nn.Module, input_shape: tuple[int, int, int]) -> tp.DependencyGraph:
    """Torch-Pruning's traced dependency graph of ``model`` (the one place ONP traces it).

    Traced through autograd on one zero image on the model's device; the model's mode is left
    to the caller.
    """
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                     verbose=False)


def _group_from_deps(
    graph: tp.DependencyGraph, raw: tp.Group, names: dict[nn.Module, str], order: dict[str, int]
) -> ChannelGroup | None:
    """One Torch-Pruning group as a :class:`ChannelGroup` (``None`` if it has no producer)."""
    producers, mask_points, consumers, sizes = [], [], [], set()
    kinds: dict[str, nn.Module] = {}
    for dep, idxs in raw:
        module = dep.target.module
        name = names.get(module)
        if name is None or name not in order:  # functional ops (add, flatten) carry no weights
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            mask_points.append(name)
            sizes.add(len(idxs))
            if isinstance(module, PRUNABLE_TYPES):
                producers.append(name)
                kinds[name] = module
        elif graph.is_in_channel_pruning_fn(dep.handler) and isinstance(module, PRUNABLE_TYPES):
            consumers.append(name)
    if not producers:
        return None
    if len(sizes) != 1:
        raise ONPInputError(f"channel group of {producers}: layers disagree on its size {sizes}")
    by_order = sorted(set(producers), key=order.__getitem__)
    first = by_order[0]
    return ChannelGroup(
        index=-1,
        size=sizes.pop(),
        producers=tuple(by_order),
        mask_points=tuple(sorted(set(mask_points), key=order.__getitem__)),
        consumers=tuple(sorted(set(consumers), key=order.__getitem__)),
        order=order[first],
        kind="conv" if isinstance(kinds[first], nn.Conv2d) else "linear",
    )

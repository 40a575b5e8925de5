"""Fast re-evaluation of a fixed batch under changing channel masks.

An environment step prunes a few channels and asks for the model's outputs on the same small
batch again. Everything computed before the first layer the change touches is the same as last
time, so :class:`CachedMaskedForward` keeps every intermediate value of the last run (a
``torch.fx`` trace of the model) and recomputes only from that layer on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.optimization import fuse

from onp.errors import ONPInputError
from onp.graph.groups import ChannelGroups
from onp.graph.mask import ChannelMask, check_mask, mask_factors, scale_channels
from onp.models.layout import to_channels_last

log = logging.getLogger(__name__)


def trace_fx(model: nn.Module, fuse_batchnorm: bool = False) -> fx.GraphModule:
    """``torch.fx`` trace of a copy of ``model``; an untraceable model gets an ONPInputError.

    With ``fuse_batchnorm`` each conv's BatchNorm is folded into it (for eval mode).
    """
    try:
        # fuse returns the GraphModule it traced; its annotation says nn.Module.
        return cast(fx.GraphModule, fuse(model)) if fuse_batchnorm else fx.symbolic_trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, ... depending on the code
        raise ONPInputError(
            f"{type(model).__name__}: torch.fx cannot trace this model ({error}); remove "
            "data-dependent control flow from forward() or wrap it in a leaf module"
        ) from error


class CachedMaskedForward:
    """Logits of a model on a fixed batch, under any channel mask, with prefix caching.

    The traced copy folds each BatchNorm into the conv before it and runs channels-last, which
    together make a step about 1.5x faster on the CPU. Masking the folded conv's output is the
    same as masking the BatchNorm's output, so a folded BatchNorm's mask point is dropped.

    Args:
        model: The classifier (not modified; evaluated in eval mode, without gradients).
        groups: Its channel groups.
        inputs: The fixed batch, ``[B, C, H, W]`` in ``[0, 1]``.

    Shapes:
        ``__call__(mask)``: mask ``[num_nodes]`` bool → logits ``[B, num_classes]``.
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups, inputs: torch.Tensor) -> None:
        model.eval()
        self.graph_module = to_channels_last(trace_fx(model, fuse_batchnorm=True).eval())
        self.groups = groups
        self.nodes = list(self.graph_module.graph.nodes)
        self.modules = dict(self.graph_module.named_modules())
        device = next(model.parameters()).device
        self.inputs = inputs.to(device)
        if self.inputs.ndim == 4:
            self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
        position = {n.target: i for i, n in enumerate(self.nodes) if n.op == "call_module"}
        original = dict(model.named_modules())
        missing = [
            p for g in groups.groups for p in g.mask_points
            if p not in position and not isinstance(original[p], nn.modules.batchnorm._BatchNorm)
        ]
        if missing:
            raise ONPInputError(f"fx trace lacks the mask points {missing[:5]}")
        # First node each group's mask touches: recomputation starts there.
        self.group_start = torch.tensor(
            [min(position[p] for p in g.mask_points if p in position) for g in groups.groups],
            dtype=torch.int64,
        )
        self._index = {n: i for i, n in enumerate(self.nodes)}
        self._values: list[Any] | None = None  # each fx node's value, for the cached mask
        self._mask: torch.Tensor | None = None

    def first_changed_node(self, mask: torch.Tensor) -> int:
        """Index of the first fx node whose output differs under ``mask`` from the cached run."""
        if self._values is None or self._mask is None:
            return 0
        changed = (mask != self._mask).nonzero().flatten()
        if len(changed) == 0:
            return len(self.nodes)
        touched = torch.unique(self.groups.node_group[changed])
        return int(self.group_start[touched].min())

    @torch.no_grad()
    def __call__(self, mask: ChannelMask) -> torch.Tensor:
        """Logits under ``mask``, recomputing only from the first node it changes.

        Shapes:
            mask: ``[num_channels]`` bool; returns ``[B, num_classes]`` for the fixed batch.
        """
        mask = check_mask(self.groups, mask)
        start = self.first_changed_node(mask)
        # Multiplying by an all-ones factor changes nothing: skip those mask points.
        factors = {k: v for k, v in mask_factors(self.groups, mask).items() if not v.all()}
        values = self._values if self._values is not None else [None] * len(self.nodes)
        for i in range(start, len(self.nodes)):
            values[i] = self._run_node(self.nodes[i], values, factors)
        self._values, self._mask = values, mask
        return values[-1]

    def _run_node(
        self, node: fx.Node, values: list[Any], factors: dict[str, torch.Tensor]
    ) -> Any:
        """The value of ``node`` (a tensor, or a size or other Python value) from its inputs'."""
        def load(arg: fx.Node) -> Any:
            return values[self._index[arg]]

        args = fx.node.map_arg(node.args, load)
        kwargs = fx.node.map_arg(node.kwargs, load)
        if node.op == "placeholder":
            return self.inputs
        if node.op == "get_attr":
            return functools.reduce(getattr, str(node.target).split("."), self.graph_module)
        if node.op == "call_module":
            name = str(node.target)
            out = self.modules[name](*args, **kwargs)
            factor = factors.get(name)
            return out if factor is None else scale_channels(out, factor)
        if node.op == "call_function":
            return cast(Callable[..., Any], node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "output":
            return args[0]
        raise ONPInputError(f"fx node {node.name}: unsupported op {node.op!r}")

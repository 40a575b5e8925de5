"""Channel masks: prune a model without touching its weights, bake a mask in, or cut channels out.

A mask is a ``[num_nodes]`` bool tensor over the nodes of :class:`~onp.graph.groups.ChannelGroups`
(``True`` = kept). Pruning channel ``c`` of a group zeroes channel ``c`` at the output of every
module in the group's ``mask_points``, so a group is always pruned as one, and the three forms
agree exactly:

- :func:`apply_mask` adds forward hooks (removable; the stored weights stay as they are);
- :func:`bake_mask` zeroes the weights and biases that write those channels;
- :func:`prune_physically` returns a smaller copy without those channels (Torch-Pruning).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.hooks import RemovableHandle

from onp.errors import ONPInputError
from onp.graph.groups import PRUNABLE_TYPES, ChannelGroups, dependency_graph

ChannelMask = torch.Tensor
"""``[num_nodes]`` bool, ``True`` for a kept channel."""


def full_mask(groups: ChannelGroups) -> ChannelMask:
    """The mask that keeps every channel."""
    return torch.ones(groups.num_nodes, dtype=torch.bool)


def check_mask(groups: ChannelGroups, mask: ChannelMask) -> ChannelMask:
    """Return ``mask`` as a CPU bool tensor; raise :class:`ONPInputError` if it does not fit."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (groups.num_nodes,):
        raise ONPInputError(
            f"channel mask: expected a tensor of shape [{groups.num_nodes}], found "
            f"{list(getattr(mask, 'shape', [type(mask).__name__]))}"
        )
    return mask.detach().to("cpu", torch.bool)


def mask_factors(groups: ChannelGroups, mask: ChannelMask) -> dict[str, torch.Tensor]:
    """Per mask point, the ``[C]`` float factor (1 kept, 0 pruned) to multiply its output by."""
    factors: dict[str, torch.Tensor] = {}
    for group, keep in zip(groups.groups, groups.split(check_mask(groups, mask)), strict=True):
        for name in group.mask_points:
            factors[name] = keep.float()
    return factors


def scale_channels(output: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply dim 1 of ``output`` (``[B, C, ...]``) by ``factor`` (``[C]``)."""
    shape = (1, -1) + (1,) * (output.ndim - 2)
    return output * factor.to(output.device, output.dtype).view(shape)


class MaskHandle:
    """Forward hooks that apply a mask; :meth:`remove` restores the model, :meth:`update` swaps it.

    Attributes:
        groups: The channel groups the mask is over.
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups, mask: ChannelMask) -> None:
        self.groups = groups
        self._factors = mask_factors(groups, mask)
        modules = dict(model.named_modules())
        missing = sorted(set(self._factors) - set(modules))
        if missing:
            raise ONPInputError(f"channel mask: the model has no modules {missing[:5]}")
        self._hooks: list[RemovableHandle] = [
            modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: scale_channels(out, self._factors[name])
            )
            for name in self._factors
        ]

    def update(self, mask: ChannelMask) -> None:
        """Apply ``mask`` instead of the current one (same hooks, no re-registration)."""
        self._factors = mask_factors(self.groups, mask)

    def remove(self) -> None:
        """Remove the hooks: the model computes as if unmasked again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def apply_mask(model: nn.Module, groups: ChannelGroups, mask: ChannelMask) -> MaskHandle:
    """Mask ``model`` in place with forward hooks; keep the handle to update or remove them."""
    return MaskHandle(model, groups, mask)


@contextmanager
def masked(model: nn.Module, groups: ChannelGroups, mask: ChannelMask) -> Iterator[nn.Module]:
    """Run ``model`` masked inside the block, and unmasked afterwards."""
    handle = apply_mask(model, groups, mask)
    try:
        yield model
    finally:
        handle.remove()


@torch.no_grad()
def bake_mask(model: nn.Module, groups: ChannelGroups, mask: ChannelMask) -> nn.Module:
    """Zero, in place, every weight and bias that writes a pruned channel; returns ``model``.

    For BatchNorm both the scale and the shift are zeroed, so the pruned channel is exactly 0
    in training and evaluation mode alike.
    """
    modules = dict(model.named_modules())
    for name, factor in mask_factors(groups, mask).items():
        pruned = factor == 0
        module = modules[name]
        for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
            if param is not None:
                param[pruned.to(param.device)] = 0.0
    return model


def prune_physically(
    model: nn.Module, groups: ChannelGroups, mask: ChannelMask
) -> nn.Module:
    """A copy of ``model`` with the pruned channels removed; its outputs equal the masked model's.

    A group whose channels are all pruned keeps one channel, baked to zero, because a layer
    cannot have zero channels.

    Returns:
        The smaller model, in eval mode, on ``model``'s device.
    """
    mask = check_mask(groups, mask)
    small = copy.deepcopy(model).eval()
    keep_one = mask.clone()
    for group, keep in zip(groups.groups, groups.split(mask), strict=True):
        if not keep.any():
            keep_one[groups.node(group.index, 0)] = True
    bake_mask(small, groups, mask)
    graph = dependency_graph(small, groups.input_shape)  # the copy's own modules
    modules = dict(small.named_modules())
    for group, keep in zip(groups.groups, groups.split(keep_one), strict=True):
        pruned = torch.nonzero(~keep).flatten().tolist()
        if not pruned:
            continue
        root = modules[group.producers[0]]
        if not isinstance(root, PRUNABLE_TYPES):
            raise ONPInputError(f"{group.producers[0]}: expected a conv or dense layer")
        function = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else (
            tp.prune_linear_out_channels
        )
        graph.get_pruning_group(root, function, idxs=pruned).prune()
    return small

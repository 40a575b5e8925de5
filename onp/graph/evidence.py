"""Backdoor evidence per channel node: the scores published pruning rules compute, trigger-free.

Three columns of :data:`onp.graph.features.NODE_FEATURES` come from here:

- ``clp_z``: CLP's data-free score (Zheng et al., ECCV 2022). The upper bound of a channel's
  Lipschitz constant (UCLC) is the spectral norm of its kernel ``W_c`` (``[C_in, kh * kw]``;
  a dense unit's weight row), times ``|gamma_c| / sqrt(var_c + eps)`` of its BatchNorm when the
  group has one producer and one BatchNorm; mean over the group's producers; then standardized
  within the group: ``(UCLC - mean) / (std + eps)``. CLP prunes ``clp_z > u`` (``u = 3``).
- ``clean_contribution`` and ``backdoor_contrib``: the first-order change of a class margin
  when the node is pruned (Molchanov et al.'s Taylor importance; the clean-/backdoor-linked
  contribution idea): each node gets a multiplicative gate ``m = 1`` at every mask point of its
  group, and ``dM/dm`` estimates ``M(kept) - M(pruned)`` for the margin
  ``M = z_y - logsumexp_{j != y} z_j`` of the logits ``z``, averaged over images.
  ``clean_contribution`` uses the clean images and their labels (positive: pruning the node
  costs clean margin); ``backdoor_contrib`` the suspected-trigger images and their suspected
  target (positive: pruning weakens the trigger). A margin, unlike the cross-entropy, does not
  saturate: a trigger that wins with near-certainty still has a gradient. Each column is divided
  by its largest absolute value over the model's nodes, so it lies in ``[-1, 1]``; 0 when the
  images or labels are not given.

No poisoned data is needed: the trigger images are the signal's synthesized ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import nn

from onp.graph.groups import ChannelGroup, ChannelGroups

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
Z_EPS = 1e-8
"""Added to a group's UCLC std: a group of equal channels scores 0 everywhere."""
SCALE_EPS = 1e-12
"""Added to the largest contribution before dividing: a model where nothing matters gives 0."""


@torch.no_grad()
def channel_lipschitz_bound(
    layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm | None = None
) -> torch.Tensor:
    """UCLC of each output channel of a conv or dense ``layer`` (times ``bn``'s scale if given).

    Shapes:
        output: ``[C_out]`` float32, on the CPU.
    """
    weight = cast(torch.Tensor, layer.weight).detach().float().cpu()
    weight = weight.flatten(2) if weight.ndim > 2 else weight[:, None, :]
    bound = torch.linalg.matrix_norm(weight, ord=2)
    if bn is not None and bn.running_var is not None:
        scale = bn.weight.detach().float().cpu() if bn.weight is not None else 1.0
        bound = bound * (scale / torch.sqrt(bn.running_var.float().cpu() + bn.eps)).abs()
    return bound


def clp_scores(modules: dict[str, nn.Module], group: ChannelGroup) -> torch.Tensor:
    """``clp_z`` of the group's channels (see the module docstring).

    Shapes:
        output: ``[group.size]`` float64.
    """
    norms = [cast(nn.modules.batchnorm._BatchNorm, modules[n]) for n in group.mask_points
             if isinstance(modules[n], BATCHNORM_TYPES)]
    bn = norms[0] if len(group.producers) == 1 and len(norms) == 1 else None
    bound = torch.stack([channel_lipschitz_bound(modules[name], bn)
                         for name in group.producers]).mean(0).double()
    if bound.numel() == 1:
        return torch.zeros(1, dtype=torch.float64)
    return (bound - bound.mean()) / (bound.std(unbiased=False) + Z_EPS)


@contextmanager
def _gates(model: nn.Module, groups: ChannelGroups) -> Iterator[list[torch.Tensor]]:
    """A ``[size]`` gate of ones per group, multiplied into every mask point's output."""
    modules = dict(model.named_modules())
    gates = [torch.ones(g.size, requires_grad=True) for g in groups.groups]
    hooks = []
    for group, gate in zip(groups.groups, gates, strict=True):
        for name in group.mask_points:
            def scale(_m: nn.Module, _i: object, out: torch.Tensor,
                      gate: torch.Tensor = gate) -> torch.Tensor:
                shape = (1, -1) + (1,) * (out.ndim - 2)
                return out * gate.to(out.device, out.dtype).view(shape)
            hooks.append(modules[name].register_forward_hook(scale))
    try:
        yield gates
    finally:
        for hook in hooks:
            hook.remove()


def class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - logsumexp_{j != y} z_j`` per image.

    Shapes:
        logits: ``[B, K]``; labels: ``[B]`` int64; output: ``[B]``.
    """
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return own - others.logsumexp(1)


def margin_contributions(
    model: nn.Module, groups: ChannelGroups, images: torch.Tensor, labels: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """``dM/dm`` per node: the first-order loss of mean class margin when the node is pruned.

    ``M`` is the mean :func:`class_margin` of ``images`` for ``labels``, in eval mode; the
    model's weights get no gradient and its modes are restored.

    Shapes:
        images: ``[B, C, H, W]``; labels: ``[B]`` int64.
        output: ``[num_nodes]`` float64 (logit units), in the order of the graph's nodes.
    """
    modes = {module: module.training for module in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    parameter = next(model.parameters())
    try:
        model.eval()
        for p in grads:
            p.requires_grad_(False)
        with _gates(model, groups) as gates:
            for batch, target in zip(images.split(batch_size), labels.split(batch_size),
                                     strict=True):
                logits = model(batch.to(parameter.device, parameter.dtype))
                margin = class_margin(logits, target.to(logits.device)).sum()
                (margin / len(images)).backward()
            values = [cast(torch.Tensor, g.grad).double() for g in gates]
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for module, mode in modes.items():
            module.training = mode
    return torch.cat(values)


def scaled(values: torch.Tensor) -> torch.Tensor:
    """``values`` divided by their largest absolute value (into ``[-1, 1]``)."""
    return values / (values.abs().max() + SCALE_EPS)

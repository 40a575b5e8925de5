"""The physically smaller copy of a repaired model: pruned channels cut out, saved without pickle.

A compact folder holds ``weights.safetensors`` (the small net's state), ``spec.json`` (the
bundle spec of the full model) and ``widths.json`` (per layer, the channel widths after cutting).
:func:`load_compact` builds the full architecture from the spec, swaps every listed layer for one
of the saved widths and loads the weights strictly, so no user code or pickle is ever run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from onp.errors import ONPInputError
from onp.graph.groups import ChannelGroups
from onp.graph.mask import ChannelMask, prune_physically
from onp.io import atomic_path
from onp.models.bundle import SPEC_FILE, WEIGHTS_FILE, Classifier, ModelSpec, make_classifier

WIDTHS_FILE = "widths.json"
WIDTHS_VERSION = 1


def layer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per conv, dense and BatchNorm layer of ``model``, its channel widths."""
    widths: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = {"in": module.in_channels, "out": module.out_channels}
        elif isinstance(module, nn.Linear):
            widths[name] = {"in": module.in_features, "out": module.out_features}
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            widths[name] = {"features": module.num_features}
    return widths


def save_compact(
    model: Classifier, groups: ChannelGroups, mask: ChannelMask, directory: str | Path
) -> Path:
    """Cut the pruned channels out of ``model`` and write the smaller net atomically.

    Args:
        model: The repaired classifier (not modified).
        groups: Its channel groups.
        mask: ``[num_nodes]`` bool, ``True`` = kept.
        directory: Target folder; replaced if it exists.

    Returns:
        ``directory``.
    """
    small = prune_physically(model, groups, mask)
    state = {k: v.detach().cpu().contiguous() for k, v in small.state_dict().items()}
    widths = {"version": WIDTHS_VERSION, "layers": layer_widths(small),
              "parameters": sum(p.numel() for p in small.parameters()),
              "full_parameters": sum(p.numel() for p in model.parameters())}
    directory = Path(directory)
    with atomic_path(directory, is_dir=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / SPEC_FILE).write_text(json.dumps(model.spec.to_json(), indent=2) + "\n")
        (tmp / WIDTHS_FILE).write_text(json.dumps(widths, indent=2) + "\n")
    return directory


def _pair(sizes: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's ``(height, width)`` size attribute, typed as the pair it is."""
    height, width = sizes
    return height, width


def _resized(module: nn.Module, width: dict[str, int]) -> nn.Module:
    """A fresh layer like ``module`` with the saved widths (weights are loaded afterwards)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ONPInputError("compact model: grouped convolutions cannot be resized")
        padding = module.padding if isinstance(module.padding, str) else _pair(module.padding)
        return nn.Conv2d(width["in"], width["out"], _pair(module.kernel_size),
                         _pair(module.stride), padding, _pair(module.dilation), 1,
                         module.bias is not None, module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(width["in"], width["out"], module.bias is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return type(module)(width["features"], module.eps, module.momentum, module.affine,
                            module.track_running_stats)
    raise ONPInputError(f"compact model: cannot resize a {type(module).__name__}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ONPInputError(f"{path.parent}: not a compact model ({path.name} is missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ONPInputError(f"{path}: not valid JSON ({error})") from error


def load_compact(directory: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a folder written by :func:`save_compact`.

    Returns:
        The small classifier in eval mode; it takes ``[B, C, H, W]`` images in ``[0, 1]``.

    Raises:
        ONPInputError: A file is missing or malformed, or the weights do not fit the widths.
    """
    directory = Path(directory)
    spec = ModelSpec.from_json(_read_json(directory / SPEC_FILE), str(directory / SPEC_FILE))
    widths = _read_json(directory / WIDTHS_FILE)
    if widths.get("version") != WIDTHS_VERSION or not isinstance(widths.get("layers"), dict):
        raise ONPInputError(f"{directory / WIDTHS_FILE}: expected version {WIDTHS_VERSION} "
                            "with a 'layers' mapping")
    model = make_classifier(spec)
    modules = dict(model.named_modules())
    for name, width in widths["layers"].items():
        if name not in modules or not name:
            raise ONPInputError(f"{directory / WIDTHS_FILE}: the model has no layer {name!r}")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, _resized(modules[name], width))
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ONPInputError(f"{directory}: not a compact model ({WEIGHTS_FILE} is missing)")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as error:
        raise ONPInputError(f"{weights}: weights do not fit {WIDTHS_FILE} ({error})") from error
    return model.to(device).eval()

"""Content hashes: the keys of ONP's caches (a model's weights, a data set, a settings dict)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


def _update_with_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    value = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
    digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_hash(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over named tensors: names, dtypes, shapes and bytes, in the given order."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        _update_with_tensor(digest, name, tensor)
    return digest.hexdigest()


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state dict (parameters and buffers, by name)."""
    return tensors_hash(sorted(model.state_dict().items()))


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON-ready settings mapping (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()

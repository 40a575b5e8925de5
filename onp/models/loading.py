"""One entry point for every model ONP reads: bundles, PyTorch, Keras, ONNX and safetensors files.

The format is chosen by what ``path`` is: a directory is a bundle
(:func:`onp.models.bundle.load_bundle`); otherwise the suffix picks the importer, and for an
unknown suffix the first bytes (HDF5 signature, zip or pickle header) do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from onp.errors import ONPInputError
from onp.models.bundle import Classifier, load_bundle
from onp.models.importers import ImportOptions
from onp.models.keras_import import KERAS_SUFFIXES, import_keras
from onp.models.onnx_import import ONNX_SUFFIXES, import_onnx
from onp.models.torch_import import TORCH_SUFFIXES, import_safetensors, import_torch_checkpoint
from onp.models.zoo import is_user_architecture, trust_user_architecture

logger = logging.getLogger(__name__)

Importer = Callable[[Path, ImportOptions], Classifier]

# File suffix -> importer.
IMPORTERS: dict[str, Importer] = {
    **{suffix: import_keras for suffix in KERAS_SUFFIXES},
    **{suffix: import_torch_checkpoint for suffix in TORCH_SUFFIXES},
    **{suffix: import_onnx for suffix in ONNX_SUFFIXES},
    ".safetensors": import_safetensors,
}
# Leading bytes -> importer, for files with another suffix.
_SIGNATURES: dict[bytes, Importer] = {
    b"\x89HDF\r\n\x1a\n": import_keras,
    b"PK\x03\x04": import_torch_checkpoint,  # torch.save's zip format
    b"\x80": import_torch_checkpoint,  # a pickle (torch.save's legacy format)
}


def _sniff(path: Path) -> Importer | None:
    with path.open("rb") as handle:
        head = handle.read(8)
    for signature, importer in _SIGNATURES.items():
        if head.startswith(signature):
            return importer
    return None


def load_model(
    path: str | Path, device: str | torch.device = "cpu", **overrides: Any
) -> Classifier:
    """Load a model bundle or import a user's model file as a :class:`Classifier`.

    Args:
        path: A bundle directory (``spec.json`` + ``weights.safetensors``), a Keras
            ``.h5``/``.hdf5``/``.keras`` file, an ONNX ``.onnx`` file, a PyTorch
            ``.pt``/``.pth``/``.bin`` checkpoint, or a bare ``.safetensors`` state dict.
        device: Where to put the model (default: ``"cpu"``).
        **overrides: What the file does not say, as fields of
            :class:`~onp.models.importers.ImportOptions`: ``architecture``, ``num_classes``,
            ``input_shape``, ``arch_options``, ``input_scale``, ``mean``, ``std``,
            ``class_names``, ``keras_config``. Not allowed for a bundle, whose spec is
            authoritative, except ``architecture="module.path:ClassName"``: naming a user's
            class is what lets ONP import its module (for a file, or for a bundle whose spec
            names it).

    Returns:
        The classifier in eval mode. An imported model's ``spec.provenance`` records the source
        path, format and SHA-256.

    Raises:
        ONPInputError: The path does not exist, its format is unknown, an override is unknown or
            contradicts the file, or the file is unsafe or does not hold a model ONP can build.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise ONPInputError(f"{where}: no such file or directory")
    architecture = overrides.get("architecture")
    if isinstance(architecture, str) and is_user_architecture(architecture):
        trust_user_architecture(architecture)  # the caller named it: its module may be imported
        if path.is_dir():  # the bundle's spec names the class; naming it too is the permission
            overrides = {k: v for k, v in overrides.items() if k != "architecture"}
    options = ImportOptions.from_overrides(overrides, where)
    if path.is_dir():
        if overrides:
            raise ONPInputError(
                f"{where}: a bundle's spec.json is authoritative; overrides {sorted(overrides)} "
                f"are not applied (edit the spec, or import the weights file itself)"
            )
        return load_bundle(path, device)
    importer = IMPORTERS.get(path.suffix.lower()) or _sniff(path)
    if importer is None:
        raise ONPInputError(
            f"{where}: unknown model format {path.suffix!r}; expected a bundle directory or one "
            f"of {', '.join(sorted(IMPORTERS))}"
        )
    logger.info("%s: importing with %s", where, importer.__name__)
    return importer(path, options).to(device).eval()

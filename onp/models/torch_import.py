"""Import PyTorch checkpoints (``.pt``/``.pth``/``.bin``) and bare ``.safetensors`` weight files.

Safety: a checkpoint is read only with ``torch.load(path, map_location="cpu", weights_only=True)``,
whose restricted unpickler builds tensors and plain containers and refuses every other global
(classes, functions, ``__reduce__`` payloads), so no code in the file runs. NumPy arrays and scalars
are allowlisted on top: BackdoorBench stores poison indices as arrays beside the weights, and their
pickles rebuild plain data (object arrays get their items from the same restricted unpickler).

Accepted layouts:

* a bare state dict (names to tensors);
* ``{"state_dict": ...}`` (also ``"model_state_dict"``, ``"net"``), other keys ignored;
* BackdoorBench's ``attack_result.pt``: ``{"model": state_dict, "model_name": ..., "num_classes":
  ..., "img_size": [H, W, C], "clean_data": dataset, ...}``; poisoned data and the rest are ignored.

Keys may carry DataParallel's ``module.`` prefix. What the file says (architecture, classes, input
size) is merged with the caller's :class:`~onp.models.importers.ImportOptions`.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from onp.errors import ONPInputError
from onp.models.bundle import SPEC_FILE, Classifier
from onp.models.importers import (
    ImportOptions,
    StateDict,
    build_classifier,
    require_file,
    resolve_spec,
    source_provenance,
)
from onp.models.zoo import available_architectures, canonical_name

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
DATA_PARALLEL_PREFIX = "module."
# Keys under which a checkpoint dict keeps its state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")

# Per-dataset normalization BackdoorBench applies after ToTensor (so on [0, 1] images):
# utils/aggregate_block/dataset_and_transform_generate.py, get_dataset_normalization().
BACKDOORBENCH_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.5,), (0.5,)),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "celeba": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_REFUSAL_MARKERS = ("Unsupported global", "allowlisted", "Unsupported class",
                    "Weights only load failed")


def _numpy_safe_globals() -> list[Any]:
    """The NumPy globals an array or scalar pickle needs, under their NumPy 1 and 2 names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2 has no numpy._core
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    names = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names += [(multiarray._reconstruct, f"{module}._reconstruct")]
        names += [(multiarray.scalar, f"{module}.scalar")]
    return [*names, np.ndarray, np.dtype, *sorted(dtype_classes, key=str)]


def read_torch_checkpoint(path: Path) -> Any:
    """Unpickle ``path`` with ``weights_only=True`` (plus NumPy data), never running its code.

    Args:
        path: A file written by ``torch.save``.

    Returns:
        The unpickled object, tensors on the CPU.

    Raises:
        ONPInputError: The file needs classes or functions to load (it is not plain weights), or
            it is not a PyTorch checkpoint at all.
    """
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Whatever weights-only loading refuses is a pickle that asks for more than tensors:
        # classes, functions (code) or opcodes it does not allow.
        if not any(marker in str(error) for marker in _REFUSAL_MARKERS):
            raise ONPInputError(
                f"{path}: not a readable PyTorch checkpoint ({_last_line(error)})") from None
        found = _refused_globals(path, error)
        detail = (f"it names {', '.join(found)}" if found else
                  f"weights-only loading refused it: {_last_line(error)}")
        raise ONPInputError(
            f"{path}: refused: this file is a pickle that carries code or objects, not just "
            f"weights ({detail}). ONP never runs code from a model file. In an environment you "
            f"trust, save only the weights, e.g. torch.save({{'model': ckpt['model'], "
            f"'model_name': ..., 'num_classes': ...}}, 'weights.pt'), or convert them to "
            f"safetensors"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        raise ONPInputError(f"{path}: not a readable PyTorch checkpoint ({error!r})") from None


def _refused_globals(path: Path, error: Exception) -> list[str]:
    """Names of the globals that made ``weights_only`` refuse ``path`` (scanned, not executed)."""
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (RuntimeError, ValueError, OSError):  # legacy (non-zip) format: read the message
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    names += re.findall(r"but got <class '([\w.]+)'>", str(error))
    return sorted({n for n in names if not n.startswith("numpy.")} or set(names))


def _last_line(error: Exception) -> str:
    """The most telling line of a long ``torch.load`` error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "error" in line.lower() or "Unsupported" in line]
    return (useful or lines or [repr(error)])[-1]


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def split_checkpoint(payload: Any, where: str) -> tuple[StateDict, ImportOptions, dict[str, Any]]:
    """Find the state dict in an unpickled checkpoint and what the checkpoint says about it.

    Args:
        payload: What :func:`read_torch_checkpoint` returned.
        where: The source, for messages.

    Returns:
        ``(state, facts, details)``: the weights; the architecture, number of classes and input
        shape the file records; JSON-ready provenance details (layout, dataset, keys).

    Raises:
        ONPInputError: No state dict is found; the message lists the top-level keys.
    """
    if _is_state_dict(payload):
        return dict(payload), ImportOptions(), {"layout": "state_dict"}
    if not isinstance(payload, Mapping):
        raise ONPInputError(
            f"{where}: expected a state dict or a dict holding one, found {type(payload).__name__}"
        )
    keys = sorted(str(k) for k in payload)
    for key in STATE_DICT_KEYS:
        if _is_state_dict(payload.get(key)):
            facts, details = _checkpoint_facts(payload, where)
            layout = "backdoorbench" if "model_name" in payload else f"dict[{key!r}]"
            return dict(payload[key]), facts, {"layout": layout, "checkpoint_keys": keys, **details}
    raise ONPInputError(
        f"{where}: no weights found: expected a state dict (names -> tensors) or a dict with one "
        f"under {list(STATE_DICT_KEYS)}; the file's top-level keys are {keys[:20]}"
    )


def _checkpoint_facts(
    payload: Mapping[str, Any], where: str
) -> tuple[ImportOptions, dict[str, Any]]:
    """Architecture, classes and input shape recorded next to the weights (BackdoorBench keys)."""
    details: dict[str, Any] = {}
    architecture = payload.get("model_name")
    if architecture is not None:
        details["model_name"] = str(architecture)
        try:
            architecture = canonical_name(str(architecture))
        except ONPInputError:
            raise ONPInputError(
                f"{where}: the checkpoint's model_name {architecture!r} is not in the zoo "
                f"(known: {', '.join(available_architectures())}); pass architecture=... only if "
                f"a zoo architecture has exactly the same layers"
            ) from None
    num_classes = payload.get("num_classes")
    input_shape = None
    img_size = payload.get("img_size")  # BackdoorBench: [H, W, C]
    if isinstance(img_size, list | tuple) and len(img_size) == 3:
        height, width, channels = (int(v) for v in img_size)
        input_shape = (channels, height, width)
    if isinstance(payload.get("clean_data"), str):
        details["dataset"] = payload["clean_data"]
    facts = ImportOptions(
        architecture=architecture,
        num_classes=int(num_classes) if isinstance(num_classes, int | torch.Tensor) else None,
        input_shape=input_shape,
    )
    return facts, details


def strip_module_prefix(state: StateDict, where: str) -> StateDict:
    """Remove DataParallel's ``module.`` prefix from the keys that carry it.

    Raises:
        ONPInputError: Two keys become the same once the prefix is removed.
    """
    if not any(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        return state
    stripped = {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state.items()}
    if len(stripped) != len(state):
        raise ONPInputError(
            f"{where}: keys clash once the prefix {DATA_PARALLEL_PREFIX!r} is removed"
        )
    logger.info(
        "%s: removed the DataParallel prefix %r from the weight names", where, DATA_PARALLEL_PREFIX
    )
    return stripped


# ---------------------------------------------------------------- checkpoint layout hints
LayoutHint = Callable[[StateDict, dict[str, Any], str], dict[str, Any]]


def _preact_final_bn(state: StateDict, options: dict[str, Any], where: str) -> dict[str, Any]:
    """BackdoorBench's PreActResNet18 has no final BatchNorm+ReLU before pooling; ask for that.

    Its ``forward`` is conv1 -> layer1..4 -> avgpool -> linear, while the zoo's default applies
    ``relu(bn(.))`` before pooling: different functions, so the layout picks the zoo option.
    """
    preact_layout = {"conv1.weight", "layer4.1.bn2.weight", "linear.weight"} <= state.keys()
    if not preact_layout or "bn.weight" in state or "final_bn" in options:
        return options  # not BackdoorBench's layout: fit_state reports any key mismatch
    logger.info(
        "%s: no final 'bn' in the weights; using preact_resnet18 with final_bn=False", where
    )
    return {**options, "final_bn": False}


# Architecture -> function that adjusts arch_options to what the checkpoint's keys imply.
LAYOUT_HINTS: dict[str, LayoutHint] = {"preact_resnet18": _preact_final_bn}


def apply_layout_hints(options: ImportOptions, state: StateDict, where: str) -> ImportOptions:
    """Let the architecture's layout hint (if any) complete ``arch_options`` from the keys."""
    if options.architecture is None:
        return options
    hint = LAYOUT_HINTS.get(canonical_name(options.architecture))
    if hint is None:
        return options
    return replace(options, arch_options=hint(state, dict(options.arch_options or {}), where))


def _with_dataset_normalization(
    options: ImportOptions, dataset: str | None, where: str
) -> ImportOptions:
    """Fill in BackdoorBench's normalization for ``dataset`` when the caller gave none."""
    if (
        dataset not in BACKDOORBENCH_NORMALIZATION
        or options.mean is not None
        or options.std is not None
    ):
        return options
    mean, std = BACKDOORBENCH_NORMALIZATION[dataset]
    logger.info(
        "%s: using BackdoorBench's %s normalization mean=%s std=%s", where, dataset, mean, std
    )
    return replace(options, mean=mean, std=std)


# ---------------------------------------------------------------- public importers
def import_torch_checkpoint(path: str | Path, options: ImportOptions | None = None) -> Classifier:
    """Import a PyTorch checkpoint as a :class:`Classifier`.

    Args:
        path: A ``.pt``/``.pth``/``.bin`` file in one of the layouts of this module.
        options: What the caller knows (architecture, num_classes, input_shape, arch_options,
            input_scale, mean, std, class_names); it must agree with what the file records.
            ``num_classes`` is read off the weights when nobody says it. A BackdoorBench
            checkpoint gets BackdoorBench's normalization for its dataset unless mean/std are
            given. (default: nothing known)

    Returns:
        The classifier on the CPU in eval mode; its spec's provenance names the source.

    Raises:
        ONPInputError: The file is missing, is not plain weights, lacks something the caller must
            then pass (the message names the argument), or its weights do not fit.
    """
    path = require_file(path)
    where = str(path)
    state, facts, details = split_checkpoint(read_torch_checkpoint(path), where)
    state = strip_module_prefix(state, where)
    merged = (options or ImportOptions()).merged_with(facts, where)
    merged = apply_layout_hints(merged, state, where)
    if details.get("layout") == "backdoorbench":
        merged = _with_dataset_normalization(merged, details.get("dataset"), where)
    provenance = source_provenance(path, "torch-checkpoint", **details)
    spec = resolve_spec(merged, state, where, provenance)
    model = build_classifier(spec, state, where)
    logger.info("%s: imported %s (%d classes)", where, spec.architecture, spec.num_classes)
    return model


def import_safetensors(path: str | Path, options: ImportOptions | None = None) -> Classifier:
    """Import a bare ``.safetensors`` state dict; the caller names the architecture.

    Args:
        path: A safetensors file whose keys are those of a zoo architecture.
        options: Must give ``architecture`` and ``input_shape``; the rest as in
            :func:`import_torch_checkpoint`. (default: nothing known, which fails)

    Returns:
        The classifier on the CPU in eval mode.

    Raises:
        ONPInputError: Missing or unreadable file, architecture not given, or weights that do
            not fit.
    """
    path = require_file(path)
    where = str(path)
    options = options or ImportOptions()
    if options.architecture is None and (path.parent / SPEC_FILE).is_file():
        raise ONPInputError(
            f"{where}: this file belongs to a model bundle; load the directory {path.parent} "
            f"instead, or pass architecture=... to import the weights alone"
        )
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise ONPInputError(f"{where}: not a readable safetensors file ({error})") from None
    state = strip_module_prefix(state, where)
    merged = apply_layout_hints(options, state, where)
    spec = resolve_spec(merged, state, where, source_provenance(path, "safetensors"))
    return build_classifier(spec, state, where)

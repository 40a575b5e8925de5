"""What every model importer shares: the caller's options, spec resolution, checked weight loading.

An importer reads a foreign file (a PyTorch checkpoint, a Keras HDF5 file, a bare safetensors file),
learns what it can from it (:class:`ImportOptions` filled from the file), merges that with what the
caller passed (an argument that contradicts the file is an error, never silently preferred), and
builds a :class:`~onp.models.bundle.Classifier` whose weights are loaded with
:func:`fit_state`. The format-specific readers live in :mod:`onp.models.torch_import` and
:mod:`onp.models.keras_import`; :func:`onp.models.loading.load_model` picks one by file type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

import onp
from onp.errors import ONPInputError
from onp.models.bundle import (
    SHAPE_ERRORS_SHOWN,
    Classifier,
    ModelSpec,
    check_finite,
    load_net_state,
    make_classifier,
)
from onp.models.zoo import available_architectures, build_architecture, canonical_name

StateDict = dict[str, torch.Tensor]
InputShape = tuple[int, int, int]

_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a source file
_T = TypeVar("_T")


@dataclass(frozen=True)
class ImportOptions:
    """Facts about a model: what the caller passed, or what a file says (``None``: not known).

    Attributes:
        architecture: Zoo name or alias (see :func:`onp.models.zoo.available_architectures`).
        num_classes: Number of output classes.
        input_shape: ``(C, H, W)`` of the inputs.
        arch_options: Builder options, e.g. ``{"width": 32}``.
        input_scale: Multiplier applied to ``[0, 1]`` images before normalization (255 for a model
            trained on raw pixels).
        mean: Per-channel mean subtracted after scaling (one value, or one per channel).
        std: Per-channel std divided after scaling (one value, or one per channel).
        class_names: One name per class.
        keras_config: A Keras architecture JSON file (``model.to_json()``) for a weights-only
            Keras file.
    """

    architecture: str | None = None
    num_classes: int | None = None
    input_shape: InputShape | None = None
    arch_options: dict[str, Any] | None = field(default=None, hash=False)
    input_scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    keras_config: str | None = None

    def __post_init__(self) -> None:
        for name in ("input_shape", "mean", "std", "class_names"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.input_shape is not None and (
            len(self.input_shape) != 3 or any(int(d) < 1 for d in self.input_shape)
        ):
            raise ONPInputError(
                f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}"
            )
        if self.num_classes is not None and int(self.num_classes) < 1:
            raise ONPInputError(f"num_classes must be positive, got {self.num_classes}")
        if self.input_scale is not None and not float(self.input_scale) > 0:
            raise ONPInputError(f"input_scale must be positive, got {self.input_scale}")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any], where: str) -> ImportOptions:
        """Build options from keyword overrides; an unknown key is an error naming the known ones.

        Args:
            overrides: Keyword arguments a caller passed (e.g. to
                :func:`onp.models.loading.load_model`).
            where: What is being imported (a path), for messages.

        Returns:
            The options.

        Raises:
            ONPInputError: An unknown key or an invalid value.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ONPInputError(f"{where}: unknown import options {unknown}; known: {known}")
        return cls(**dict(overrides))

    def merged_with(self, found: ImportOptions, where: str) -> ImportOptions:
        """Combine the caller's options (``self``) with what a file says (``found``).

        A value given on one side only is taken; a value given on both sides must agree.

        Raises:
            ONPInputError: The caller's value contradicts the file's.
        """
        merged: dict[str, Any] = {}
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(found, item.name)
            if mine is not None and theirs is not None and not _same(item.name, mine, theirs):
                raise ONPInputError(
                    f"{where}: {item.name}={mine!r} was passed but the file says {theirs!r}; "
                    f"drop the argument or pass the file's value"
                )
            merged[item.name] = mine if mine is not None else theirs
        return ImportOptions(**merged)


def _same(name: str, a: Any, b: Any) -> bool:
    """Whether two values of option ``name`` mean the same thing."""
    if name == "architecture":
        return canonical_name(a) == canonical_name(b)
    if name in ("mean", "std", "input_shape"):
        return len(a) == len(b) and all(
            abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b, strict=True)
        )
    return a == b


def require_file(path: str | Path) -> Path:
    """Return ``path`` as a :class:`Path` if it is an existing file, else raise ONPInputError."""
    path = Path(path)
    if not path.exists():
        raise ONPInputError(f"{path}: no such file")
    if not path.is_file():
        raise ONPInputError(f"{path}: expected a model file, found a directory")
    return path


def source_provenance(path: Path, file_format: str, **extra: Any) -> dict[str, Any]:
    """Provenance record of an imported file: where it came from and its content hash.

    Args:
        path: The source file.
        file_format: Short format name, e.g. ``"torch-checkpoint"`` or ``"keras-h5-model"``.
        **extra: JSON-ready details to add (layout, versions, layer mapping).

    Returns:
        A JSON-ready dict for :attr:`ModelSpec.provenance`.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return {
        "source": str(path.resolve()),
        "format": file_format,
        "sha256": digest.hexdigest(),
        "imported_by": f"onp {onp.__version__}",
        **extra,
    }


def infer_num_classes(
    architecture: str,
    input_shape: InputShape,
    arch_options: Mapping[str, Any],
    state: StateDict,
    where: str,
) -> int | None:
    """Read the number of classes off the classifier head in ``state``.

    The head is found without per-architecture knowledge: the tensors whose shape changes with
    ``num_classes`` when the architecture is built twice (on the ``meta`` device, so nothing is
    allocated).

    Returns:
        The number of classes, or ``None`` when the head tensors disagree.

    Raises:
        ONPInputError: The keys of ``state`` are not those of the architecture.
    """
    with torch.device("meta"):
        two = build_architecture(architecture, 2, input_shape, **arch_options).state_dict()
        three = build_architecture(architecture, 3, input_shape, **arch_options).state_dict()
    check_keys(two, state, architecture, where)
    head = [k for k in two if two[k].shape != three[k].shape]
    sizes = {int(state[k].shape[0]) for k in head if state[k].dim() >= 1}
    return sizes.pop() if len(sizes) == 1 else None


def check_keys(
    expected: Mapping[str, torch.Tensor], state: StateDict, architecture: str, where: str
) -> None:
    """Raise ONPInputError naming missing and unexpected keys (``num_batches_tracked`` optional).

    Args:
        expected: The architecture's state dict (only its keys are used).
        state: The weights read from the file.
        architecture: Zoo name, for the message.
        where: The source, for the message.
    """
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ONPInputError(
            f"{where}: weights do not fit architecture {architecture!r}: "
            f"missing {missing[:SHAPE_ERRORS_SHOWN]} ({len(missing)} in all), "
            f"unexpected {unexpected[:SHAPE_ERRORS_SHOWN]} ({len(unexpected)} in all)"
        )


def resolve_spec(
    options: ImportOptions, state: StateDict, where: str, provenance: dict[str, Any]
) -> ModelSpec:
    """Turn merged options into a :class:`ModelSpec`, with a clear error for what is missing.

    Args:
        options: Caller's options merged with the file's (see :meth:`ImportOptions.merged_with`).
        state: The weights (used to infer ``num_classes`` when nobody said it).
        where: The source, for messages.
        provenance: Provenance record to store in the spec.

    Returns:
        The spec (architecture canonicalized; ``input_scale`` defaults to 1).

    Raises:
        ONPInputError: Architecture or input shape unknown, or options that do not fit.
    """
    if options.architecture is None:
        raise ONPInputError(
            f"{where}: the file does not name its architecture; pass architecture=... "
            f"(one of {', '.join(available_architectures())})"
        )
    architecture = canonical_name(options.architecture)
    if options.input_shape is None:
        raise ONPInputError(
            f"{where}: the file does not record the input shape; pass input_shape=(C, H, W), "
            f"e.g. (3, 32, 32) for CIFAR-10"
        )
    channels, height, width = (int(d) for d in options.input_shape)  # checked: three sizes
    input_shape = (channels, height, width)
    arch_options = dict(options.arch_options or {})
    num_classes = options.num_classes
    if num_classes is None:
        num_classes = _checked_build(
            lambda: infer_num_classes(architecture, input_shape, arch_options, state, where),
            architecture,
            arch_options,
            where,
        )
        if num_classes is None:
            raise ONPInputError(
                f"{where}: cannot tell the number of classes from the weights of "
                f"{architecture!r}; pass num_classes=..."
            )
    channels = input_shape[0]
    for name in ("mean", "std"):
        value = getattr(options, name)
        if value is not None and len(value) not in (1, channels):
            raise ONPInputError(
                f"{where}: {name} has {len(value)} values but the input has {channels} channels"
            )
    if options.class_names is not None and len(options.class_names) != num_classes:
        raise ONPInputError(
            f"{where}: {len(options.class_names)} class names for {num_classes} classes"
        )
    return ModelSpec(
        architecture=architecture,
        num_classes=int(num_classes),
        input_shape=input_shape,
        arch_options=arch_options,
        input_scale=float(options.input_scale) if options.input_scale is not None else 1.0,
        mean=tuple(float(v) for v in options.mean) if options.mean is not None else None,
        std=tuple(float(v) for v in options.std) if options.std is not None else None,
        class_names=options.class_names,
        provenance=provenance,
    )


def _checked_build(
    build: Callable[[], _T], architecture: str, arch_options: Mapping[str, Any], where: str
) -> _T:
    """Run ``build()``, turning a builder's rejection of ``arch_options`` into ONPInputError."""
    try:
        return build()
    except TypeError as error:
        raise ONPInputError(
            f"{where}: architecture {architecture!r} does not accept options "
            f"{dict(arch_options)} ({error})"
        ) from error


def fit_state(model: Classifier, state: StateDict, where: str) -> None:
    """Load ``state`` into ``model.net`` after checking NaN, keys and shapes, each clearly.

    :func:`onp.models.bundle.load_net_state` checks the shapes and does the loading. A missing
    ``num_batches_tracked`` counter (checkpoints from PyTorch < 0.4.1) is filled in: it does not
    affect outputs in eval mode.

    Args:
        model: The freshly built classifier.
        state: Weights keyed like ``model.net.state_dict()``.
        where: The source, for messages.

    Raises:
        ONPInputError: NaN/inf values, missing or unexpected keys, or tensors of the wrong shape.
    """
    check_finite(state, where)
    expected = model.net.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    check_keys(expected, state, model.spec.architecture, where)
    load_net_state(model, state, where)  # checks the shapes, naming the tensors


def build_classifier(spec: ModelSpec, state: StateDict, where: str) -> Classifier:
    """Build the classifier for ``spec`` and load ``state`` into it.

    Returns:
        The classifier on the CPU, in eval mode.

    Raises:
        ONPInputError: The architecture rejects the options, or the weights do not fit.
    """
    model = _checked_build(
        lambda: make_classifier(spec), spec.architecture, spec.arch_options, where
    )
    fit_state(model, state, where)
    return model.eval()

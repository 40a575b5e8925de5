"""Model bundles: a directory with ``weights.safetensors`` and ``spec.json``.

The spec records everything needed to rebuild the model without running user code:
architecture name and options, number of classes, input shape, input scaling and
normalization, class names, provenance and (when known) the attack that infected it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from onp.errors import ONPInputError
from onp.io import atomic_path
from onp.models.preprocess import InputAdapter
from onp.models.zoo import build_architecture, canonical_name

WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"
SPEC_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model except its weights.

    Attributes:
        architecture: Zoo name (see :func:`onp.models.zoo.available_architectures`).
        num_classes: Number of output classes.
        input_shape: ``(C, H, W)``.
        arch_options: Extra builder options (e.g. ``{"width": 32}``).
        input_scale: Multiplier applied to ``[0, 1]`` images before normalization (255 for a
            model trained on raw pixels).
        mean: Per-channel mean subtracted after scaling, or ``None``.
        std: Per-channel std divided after scaling, or ``None``.
        class_names: Optional class names.
        provenance: Free-form origin record (source file, dataset, training command).
        attack: Attack metadata when known (trigger description, target class, poison rate).
    """

    architecture: str
    num_classes: int
    input_shape: tuple[int, int, int]
    arch_options: dict[str, Any] = field(default_factory=dict)
    input_scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (with a format version)."""
        return {"spec_version": SPEC_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, payload: dict[str, Any], where: str = "spec") -> ModelSpec:
        """Parse a dict written by :meth:`to_json`; unknown keys are an error."""
        payload = dict(payload)
        payload.pop("spec_version", None)
        known = {f.name for f in fields(cls)}
        unknown = set(payload) - known
        if unknown:
            raise ONPInputError(
                f"{where}: unknown spec keys {sorted(unknown)}; known: {sorted(known)}"
            )
        missing = {"architecture", "num_classes", "input_shape"} - set(payload)
        if missing:
            raise ONPInputError(f"{where}: spec lacks required keys {sorted(missing)}")
        for key in ("input_shape", "mean", "std", "class_names"):
            if payload.get(key) is not None:
                payload[key] = tuple(payload[key])
        return cls(**payload)


class Classifier(nn.Module):
    """A zoo architecture behind its input adapter: takes ``[0, 1]`` images, returns logits.

    Shapes:
        input: ``[B, C, H, W]`` float, values in ``[0, 1]``.
        output: ``[B, num_classes]`` logits.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.preprocess = InputAdapter(spec.input_scale, spec.mean, spec.std, spec.input_shape[0])
        self.net = build_architecture(
            spec.architecture, spec.num_classes, spec.input_shape, **spec.arch_options
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw images.

        Shapes:
            x: ``[B, C, H, W]`` in the input range of :attr:`spec`; returns ``[B, num_classes]``.
        """
        return self.net(self.preprocess(x))


def make_classifier(spec: ModelSpec) -> Classifier:
    """Build a freshly initialized :class:`Classifier` for ``spec``."""
    spec = replace(spec, architecture=canonical_name(spec.architecture))
    return Classifier(spec)


SHAPE_ERRORS_SHOWN = 5
"""Mismatched tensors named in an error message."""


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`ONPInputError` if any floating tensor in ``state`` has NaN or inf values."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ONPInputError(f"{where}: weights contain NaN or infinite values in {bad[:5]}")


def load_net_state(model: Classifier, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` (keys of ``model.net``) strictly, with a clear error on mismatch."""
    check_finite(state, where)
    expected = model.net.state_dict()
    # load_state_dict reports a shape mismatch as a bare RuntimeError: name the tensors first
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        spec = model.spec
        raise ONPInputError(
            f"{where}: weights do not fit architecture {spec.architecture!r} with "
            f"num_classes={spec.num_classes}, input_shape={spec.input_shape}, "
            f"arch_options={spec.arch_options}: {len(wrong)} tensors have the wrong shape, "
            f"e.g. {wrong[:SHAPE_ERRORS_SHOWN]}; check num_classes, input_shape and "
            f"arch_options (e.g. width)"
        )
    result = model.net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ONPInputError(
            f"{where}: weights do not fit architecture {model.spec.architecture!r}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def save_bundle(model: Classifier, directory: str | Path) -> Path:
    """Write ``model`` as a bundle directory atomically.

    Args:
        model: The classifier to save.
        directory: Target directory; replaced if it exists.

    Returns:
        The bundle directory.
    """
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    with atomic_path(directory, is_dir=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / SPEC_FILE).write_text(json.dumps(model.spec.to_json(), indent=2) + "\n")
    return directory


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a bundle directory written by :func:`save_bundle`.

    Args:
        directory: Bundle directory holding ``spec.json`` and ``weights.safetensors``.
        device: Where to put the model (default: ``"cpu"``).

    Returns:
        The classifier in eval mode.

    Raises:
        ONPInputError: The directory or a file is missing, the spec is malformed, or the weights
            do not fit the architecture or contain NaN.
    """
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise ONPInputError(
                f"{directory}: not a model bundle (expected {SPEC_FILE} and {WEIGHTS_FILE}; "
                f"{path.name} is missing)"
            )
    try:
        payload = json.loads(spec_path.read_text())
    except json.JSONDecodeError as error:
        raise ONPInputError(f"{spec_path}: not valid JSON ({error})") from error
    model = make_classifier(ModelSpec.from_json(payload, where=str(spec_path)))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ONPInputError(f"{weights_path}: not a readable safetensors file ({error}); the "
                            "bundle is damaged or incomplete") from None
    load_net_state(model, state, str(weights_path))
    return model.to(device).eval()

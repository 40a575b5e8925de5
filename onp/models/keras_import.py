"""Import Keras HDF5 files of the DeepID face net (the CSAW-HackML BadNets, e.g. ``bd_net.h5``).

Only data is read (h5py datasets and attributes; the ``model_config`` JSON is parsed, never turned
into layers), so a Keras file cannot run code here. Two layouts are accepted:

* weights only (``model.save_weights``): root attribute ``layer_names``; one group per layer with
  attribute ``weight_names`` and datasets such as ``/conv_1/conv_1/kernel:0``;
* full model (``model.save``): the same under ``/model_weights``, and a ``model_config`` JSON
  attribute on the root, from which the input size is read and the layers are checked.

DeepID (``architecture.py`` of CSAW-HackML): conv_1 20@4x4 -> pool -> conv_2 40@3x3 -> pool ->
conv_3 60@3x3 -> pool (= p3); fc_1 on Flatten(p3), fc_2 on Flatten(relu(conv_4 80@2x2 on p3));
relu(fc_1 + fc_2) -> output (softmax). Conversion to :class:`onp.models.zoo.DeepID`: conv kernels
HWIO -> OIHW, dense kernels ``(in, out)`` -> ``(out, in)``, and the rows of fc_1 and fc_2 reordered
from Keras's channels-last flatten order ``(h, w, c)`` to torch's ``(c, h, w)``, so that the torch
logits give Keras's softmax exactly. Keras sees ``[B, H, W, 3]`` where ONP passes ``[B, 3, H, W]``;
channels are not reordered.

Input scaling differs between CSAW-HackML releases: the 2020 challenge's ``eval.py`` feeds
``x / 255`` (``input_scale=1``, the default here), while the later ``lab3/eval.py`` (the course lab
with ``bd_net.h5`` for 1283 YouTube-Face identities) feeds raw 0-255 pixels (``input_scale=255``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from onp.errors import ONPInputError
from onp.models.bundle import Classifier
from onp.models.importers import (
    ImportOptions,
    InputShape,
    StateDict,
    build_classifier,
    require_file,
    resolve_spec,
    source_provenance,
)
from onp.models.zoo import canonical_name

logger = logging.getLogger(__name__)

KERAS_SUFFIXES = (".h5", ".hdf5")
DEEPID_CONVS = ("conv_1", "conv_2", "conv_3", "conv_4")
DEEPID_DENSES = ("fc_1", "fc_2", "output")
DEEPID_LAYERS = DEEPID_CONVS + DEEPID_DENSES
DEEPID_INPUT_SHAPE: InputShape = (3, 55, 47)  # CSAW-HackML's YouTube-Face crops, (C, H, W)
POOL = 2  # DeepID's max-pooling size and stride
HWC = tuple[int, int, int]  # (height, width, channels) of a channels-last feature map
# Layer classes a DeepID model_config may hold; anything else changes the function.
_DEEPID_CLASSES = {"InputLayer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Add", "Activation"}
_INFERENCE_NOOPS = {"Dropout"}  # identity at inference time


@dataclass(frozen=True)
class KerasLayer:
    """A Keras layer that has weights.

    Attributes:
        name: Layer name in the file.
        weights: Arrays by role (``"kernel"``, ``"bias"``, ...), as stored (channels-last).
        config: The layer's entry in ``model_config`` (empty when the file has none).
    """

    name: str
    weights: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``name (role shape, ...)`` for error messages."""
        parts = ", ".join(f"{role} {tuple(a.shape)}" for role, a in self.weights.items())
        return f"{self.name} ({parts})"


@dataclass(frozen=True)
class KerasFile:
    """What was read from a Keras HDF5 file.

    Attributes:
        layout: ``"keras-h5-weights"`` or ``"keras-h5-model"``.
        layers: Layers with weights, in the file's order.
        config_layers: ``model_config``'s layer list (empty for a weights-only file).
        input_shape: ``(C, H, W)`` from ``model_config``, or ``None``.
        details: JSON-ready provenance (Keras version, backend).
    """

    layout: str
    layers: list[KerasLayer]
    config_layers: list[dict[str, Any]]
    input_shape: InputShape | None
    details: dict[str, Any]


# ---------------------------------------------------------------- reading the file
def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def _attr_list(obj: h5py.Group, name: str) -> list[str] | None:
    """A list-valued Keras attribute, also when Keras split it into ``name0``, ``name1``, ..."""
    if name in obj.attrs:
        values = list(np.atleast_1d(obj.attrs[name]))
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in obj.attrs:
            values += list(np.atleast_1d(obj.attrs[f"{name}{chunk}"]))
            chunk += 1
        if chunk == 0:
            return None
    return [_text(v) for v in values]


def _weights_group(handle: h5py.File, where: str) -> tuple[h5py.Group, str]:
    if "model_weights" in handle:
        return handle["model_weights"], "keras-h5-model"
    if _attr_list(handle, "layer_names") is not None:
        return handle, "keras-h5-weights"
    if "layers" in handle or "vars" in handle:
        raise ONPInputError(
            f"{where}: a Keras 3 '.weights.h5' file, which ONP does not read; save the model in "
            f"the legacy HDF5 format (model.save('model.h5')) instead"
        )
    raise ONPInputError(
        f"{where}: not a Keras model or weights file: no 'model_weights' group and no "
        f"'layer_names' attribute; top-level entries {sorted(handle)[:20]}, "
        f"attributes {sorted(handle.attrs)[:20]}"
    )


def _layer_weights(group: h5py.Group, layer: str, where: str) -> dict[str, np.ndarray]:
    """Weights of one layer by role (the last path part without ``:0``)."""
    names = _attr_list(group, "weight_names")
    if names is None:  # not written by Keras: take every dataset below the group
        names = []
        group.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    weights: dict[str, np.ndarray] = {}
    for name in names:
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise ONPInputError(f"{where}: layer {layer!r} lists weight {name!r} but lacks it")
        role = name.rsplit("/", 1)[-1].split(":")[0]
        array = np.asarray(group[name][()])
        if role in weights or array.dtype.kind != "f":
            raise ONPInputError(
                f"{where}: layer {layer!r}: weight {name!r} is repeated or not floating point"
            )
        weights[role] = array
    return weights


def _config_layers(handle: h5py.File, where: str) -> list[dict[str, Any]]:
    raw = handle.attrs.get("model_config")
    if raw is None:
        return []
    try:
        config = json.loads(_text(raw))
    except json.JSONDecodeError as error:
        raise ONPInputError(f"{where}: model_config is not valid JSON ({error})") from None
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    layers = inner.get("layers", []) if isinstance(inner, dict) else inner
    if not isinstance(layers, list):
        raise ONPInputError(f"{where}: model_config has no layer list")
    return layers


def _layer_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("config", {}).get("name", ""))


def _config_input_shape(layers: Sequence[dict[str, Any]]) -> InputShape | None:
    """``(C, H, W)`` from the first ``batch_input_shape``/``batch_shape`` ``[None, H, W, C]``."""
    for entry in layers:
        config = entry.get("config", {})
        shape = config.get("batch_input_shape") or config.get("batch_shape")
        if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
            height, width, channels = shape[1:]
            return (channels, height, width)
    return None


def read_keras_file(path: Path) -> KerasFile:
    """Read layer weights (and ``model_config``) from a Keras HDF5 file.

    Raises:
        ONPInputError: Not an HDF5 file, or not a Keras layout.
    """
    where = str(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ONPInputError(f"{where}: not an HDF5 file ({error})") from None
    with handle:
        group, layout = _weights_group(handle, where)
        config_layers = _config_layers(handle, where)
        by_name = {_layer_name(entry): entry for entry in config_layers}
        layers = []
        for name in _attr_list(group, "layer_names") or []:
            if name not in group:
                raise ONPInputError(f"{where}: layer {name!r} is listed but has no weights group")
            weights = _layer_weights(group[name], name, where)
            if weights:
                layers.append(KerasLayer(name, weights, by_name.get(name, {}).get("config", {})))
        details = {
            key: _text(handle.attrs[key])
            for key in ("keras_version", "backend")
            if key in handle.attrs
        }
    return KerasFile(layout, layers, config_layers, _config_input_shape(config_layers), details)


# ---------------------------------------------------------------- recognising DeepID
def _not_deepid(where: str, layers: Sequence[KerasLayer], reason: str) -> ONPInputError:
    found = "; ".join(layer.describe() for layer in layers) or "no layers with weights"
    return ONPInputError(
        f"{where}: not the DeepID architecture ({reason}); expected weight layers "
        f"{', '.join(DEEPID_LAYERS)} (4 Conv2D and 3 Dense with kernel and bias); found: {found}"
    )


def _geometry(input_shape: InputShape, kernels: Sequence[np.ndarray]) -> tuple[HWC, HWC]:
    """``(h, w, c)`` of p3 and of conv_4's output, for valid convs and 2x2 pools (floor)."""
    channels, height, width = input_shape
    for kernel in kernels[:3]:
        height, width = (
            (height - kernel.shape[0] + 1) // POOL,
            (width - kernel.shape[1] + 1) // POOL,
        )
        channels = kernel.shape[3]
    p3 = (height, width, channels)
    conv4 = (height - kernels[3].shape[0] + 1, width - kernels[3].shape[1] + 1, kernels[3].shape[3])
    return p3, conv4


def map_deepid_layers(
    layers: Sequence[KerasLayer], input_shape: InputShape, where: str
) -> dict[str, KerasLayer]:
    """Assign the file's layers to DeepID's: by name, else by kernel shapes (logged).

    Names other than DeepID's are resolved so: the four 4-D kernels are conv_1..conv_4 in file
    order; of the three dense kernels, fc_1 takes the flattened p3 (rows ``h*w*c`` of p3), fc_2
    the flattened conv_4 output, and the remaining one is the output layer.

    Raises:
        ONPInputError: The layers are not DeepID's; the message lists what was found.
    """
    if any(set(layer.weights) != {"kernel", "bias"} for layer in layers):
        raise _not_deepid(where, layers, "a layer has weights other than kernel and bias")
    by_name = {layer.name: layer for layer in layers}
    if set(by_name) == set(DEEPID_LAYERS):
        return {name: by_name[name] for name in DEEPID_LAYERS}
    convs = [layer for layer in layers if layer.weights["kernel"].ndim == 4]
    denses = [layer for layer in layers if layer.weights["kernel"].ndim == 2]
    if len(convs) != 4 or len(denses) != 3 or len(layers) != 7:
        raise _not_deepid(where, layers, "layer names and kernel shapes do not match")
    p3, conv4 = _geometry(input_shape, [c.weights["kernel"] for c in convs])
    fc_1 = [d for d in denses if d.weights["kernel"].shape[0] == int(np.prod(p3))]
    fc_2 = [d for d in denses if d.weights["kernel"].shape[0] == int(np.prod(conv4))]
    if len(fc_1) == 1 and len(fc_2) == 1 and fc_1[0] is not fc_2[0]:
        rest = [d for d in denses if d is not fc_1[0] and d is not fc_2[0]]
        denses = [fc_1[0], fc_2[0], *rest]
    mapping = dict(zip(DEEPID_LAYERS, [*convs, *denses], strict=True))
    logger.warning(
        "%s: layer names differ from DeepID's; inferred from kernel shapes: %s",
        where,
        {deepid: layer.name for deepid, layer in mapping.items()},
    )
    return mapping


def _check_config(config_layers: Sequence[dict[str, Any]], output: str, where: str) -> None:
    """Check that ``model_config`` describes DeepID's operations (padding, strides, activations)."""
    problems = []
    counts: dict[str, int] = {}
    for entry in config_layers:
        kind, config = entry.get("class_name", ""), entry.get("config", {})
        name = _layer_name(entry)
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in _DEEPID_CLASSES | _INFERENCE_NOOPS:
            problems.append(f"{name}: layer class {kind} is not part of DeepID")
        problems += [f"{name}: {issue}" for issue in _layer_issues(kind, config, name == output)]
    if counts.get("MaxPooling2D", 0) != 3 or counts.get("Add", 0) != 1:
        problems.append(f"expected 3 MaxPooling2D and 1 Add layers, found {counts}")
    if problems:
        raise ONPInputError(f"{where}: model_config is not the DeepID architecture: {problems}")


def _layer_issues(kind: str | None, config: dict[str, Any], is_output: bool) -> list[str]:
    """Ways one layer config departs from DeepID's (empty when it does not)."""
    expected: dict[str, Any] = {}
    if kind == "Conv2D":
        expected = {"padding": "valid", "strides": [1, 1], "dilation_rate": [1, 1]}
        expected |= {"activation": "relu", "data_format": "channels_last", "use_bias": True}
    elif kind == "MaxPooling2D":
        expected = {"pool_size": [POOL, POOL], "strides": [POOL, POOL], "padding": "valid"}
        expected |= {"data_format": "channels_last"}
    elif kind == "Dense":
        allowed = ("softmax", "linear") if is_output else ("linear",)
        activation = config.get("activation", "linear")
        return [] if activation in allowed else [f"activation {activation!r}, expected {allowed}"]
    elif kind == "Activation":
        expected = {"activation": "relu"}
    issues = []
    for key, value in expected.items():
        found = config.get(key, value)
        if isinstance(found, list | tuple):
            found = list(found)
        if found is not None and found != value:
            issues.append(f"{key}={found!r}, expected {value!r}")
    return issues


# ---------------------------------------------------------------- conversion
def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def dense_after_flatten(kernel: np.ndarray, hwc: HWC) -> torch.Tensor:
    """Torch weight ``[out, c*h*w]`` of a Keras dense kernel ``[h*w*c, out]`` that follows Flatten.

    Keras flattens ``[h, w, c]`` (channels-last), torch flattens ``[c, h, w]``; this reorders the
    rows so that both give the same outputs.
    """
    height, width, channels = hwc
    out = kernel.shape[1]
    chw = kernel.reshape(height, width, channels, out).transpose(2, 0, 1, 3)
    return _tensor(chw.reshape(channels * height * width, out).T)


def deepid_state(mapping: dict[str, KerasLayer], input_shape: InputShape, where: str) -> StateDict:
    """The :class:`onp.models.zoo.DeepID` state dict for Keras DeepID weights.

    Raises:
        ONPInputError: The kernels do not chain for ``input_shape`` (wrong input size).
    """
    kernels = {name: layer.weights["kernel"] for name, layer in mapping.items()}
    p3, conv4 = _geometry(input_shape, [kernels[name] for name in DEEPID_CONVS])
    rows = {"fc_1": p3, "fc_2": conv4}
    for name, hwc in rows.items():
        if min(hwc) < 1 or kernels[name].shape[0] != int(np.prod(hwc)):
            raise ONPInputError(
                f"{where}: {name} takes {kernels[name].shape[0]} inputs but the convolutions give "
                f"{hwc} (h, w, c) for input shape {input_shape}; pass the input_shape=(C, H, W) "
                f"the model was trained on"
            )
    state: StateDict = {}
    for name, layer in mapping.items():
        kernel = layer.weights["kernel"]
        if name in DEEPID_CONVS:
            weight = _tensor(kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        elif name in rows:
            weight = dense_after_flatten(kernel, rows[name])
        else:
            weight = _tensor(kernel.T)
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = _tensor(layer.weights["bias"])
    return state


def import_keras_h5(path: str | Path, options: ImportOptions | None = None) -> Classifier:
    """Import a Keras DeepID HDF5 file (weights only or full model) as a :class:`Classifier`.

    Args:
        path: The ``.h5`` file.
        options: ``input_scale`` (1 when Keras saw ``x / 255``, 255 for raw pixels; default 1),
            ``input_shape`` (default: from ``model_config``, else ``(3, 55, 47)``), ``mean``,
            ``std``, ``class_names``. ``num_classes`` comes from the output kernel and, like
            ``architecture``, must agree if given. (default: nothing given)

    Returns:
        The ``deepid`` classifier on the CPU in eval mode; its logits are the pre-softmax values
        of the Keras model.

    Raises:
        ONPInputError: Missing or unreadable file, a non-DeepID model (the message lists the
            layers found), NaN weights, or options contradicting the file.
    """
    path = require_file(path)
    where = str(path)
    options = options or ImportOptions()
    if options.arch_options:
        raise ONPInputError(f"{where}: deepid takes no arch_options, got {options.arch_options}")
    if options.architecture is not None and canonical_name(options.architecture) != "deepid":
        raise ONPInputError(
            f"{where}: Keras files are imported as 'deepid' only, got {options.architecture!r}"
        )
    keras = read_keras_file(path)
    if not keras.layers:
        raise _not_deepid(where, keras.layers, "the file holds no weights")
    input_shape = options.merged_with(
        ImportOptions(input_shape=keras.input_shape), where
    ).input_shape
    if input_shape is None:
        input_shape = DEEPID_INPUT_SHAPE
        logger.info("%s: no model_config; assuming input shape %s", where, input_shape)
    mapping = map_deepid_layers(keras.layers, input_shape, where)
    found = ImportOptions(
        architecture="deepid",
        num_classes=int(mapping["output"].weights["kernel"].shape[1]),
        input_shape=input_shape,
    )
    merged = options.merged_with(found, where)
    if keras.config_layers:
        _check_config(keras.config_layers, mapping["output"].name, where)
    if options.input_scale is None:
        logger.info(
            "%s: assuming the Keras model saw x/255 (input_scale=1); pass input_scale=255 for a "
            "model fed raw pixels (CSAW-HackML lab3's eval.py)",
            where,
        )
    state = deepid_state(mapping, input_shape, where)
    provenance = source_provenance(
        path,
        keras.layout,
        **keras.details,
        layer_mapping={name: layer.name for name, layer in mapping.items()},
        output_activation=mapping["output"].config.get("activation"),
        input_scale_given=options.input_scale is not None,
    )
    spec = resolve_spec(merged, state, where, provenance)
    return build_classifier(spec, state, where)

"""Import Keras models: any Sequential or functional CNN of the standard layers, and DeepID.

Only data is read (h5py datasets and attributes, JSON), so a Keras file cannot run code here.
Accepted:

* a full model saved by Keras 2 or 3 as ``.h5`` (``model.save("m.h5")``): the weights under
  ``/model_weights`` and the architecture in the ``model_config`` attribute;
* a Keras 3 ``.keras`` file (a zip of ``config.json`` and ``model.weights.h5``);
* a weights-only file, Keras 2 (``save_weights("w.h5")``: root attribute ``layer_names``) or Keras 3
  (``save_weights("w.weights.h5")``: groups ``layers/<name>/vars``), with the architecture JSON
  (``model.to_json()``) given as ``keras_config``;
* a Keras 2 weights-only file of the CSAW-HackML DeepID face net (``bd_net.h5``) without a JSON:
  recognised by its layers and imported as the zoo's ``deepid``.

A model with an architecture becomes the zoo's ``layer_graph`` (translated by
:mod:`onp.models.keras_graph`); its logits are the pre-softmax values of the Keras model.

DeepID (``architecture.py`` of CSAW-HackML): conv_1 20@4x4 -> pool -> conv_2 40@3x3 -> pool ->
conv_3 60@3x3 -> pool (= p3); fc_1 on Flatten(p3), fc_2 on Flatten(relu(conv_4 80@2x2 on p3));
relu(fc_1 + fc_2) -> output (softmax).

Input scaling is not in a Keras file: the CSAW-HackML 2020 challenge's ``eval.py`` feeds ``x / 255``
(``input_scale=1``, the default here), the later ``lab3/eval.py`` feeds raw 0-255 pixels
(``input_scale=255``). The importer logs which it assumed; ``onp.apply`` checks B's accuracy on
the defense data, so a wrong guess is an error, not a chance-level repair.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from onp.models.keras_graph import (
    KerasArchitecture,
    input_shape_of,
    parse_architecture,
    storage_names,
    translate,
    variable_roles,
)
from onp.models.zoo import LAYER_GRAPH, canonical_name

logger = logging.getLogger(__name__)

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
DEEPID_CONVS = ("conv_1", "conv_2", "conv_3", "conv_4")
DEEPID_DENSES = ("fc_1", "fc_2", "output")
DEEPID_LAYERS = DEEPID_CONVS + DEEPID_DENSES
DEEPID_INPUT_SHAPE: InputShape = (3, 55, 47)  # CSAW-HackML's YouTube-Face crops, (C, H, W)
POOL = 2  # DeepID's max-pooling size and stride
HWC = tuple[int, int, int]  # (height, width, channels) of a channels-last feature map


@dataclass(frozen=True)
class KerasLayer:
    """A Keras layer that has weights.

    Attributes:
        name: Layer name in the file.
        weights: Arrays by role (``"kernel"``, ``"bias"``, ...), as stored (channels-last).
    """

    name: str
    weights: dict[str, np.ndarray]

    def describe(self) -> str:
        """``name (role shape, ...)`` for error messages."""
        parts = ", ".join(f"{role} {tuple(a.shape)}" for role, a in self.weights.items())
        return f"{self.name} ({parts})"


@dataclass(frozen=True)
class KerasFile:
    """What was read from a Keras file.

    Attributes:
        layout: ``"keras-h5-model"``, ``"keras-h5-weights"``, ``"keras3-weights"`` or
            ``"keras3-zip"``.
        weights: Arrays of each layer with weights, by layer name (legacy layouts) or by Keras 3
            storage group (``vars`` layouts), by role (``kernel``, ``bias``, ...) or, in the
            ``vars`` layouts, by position (``"0"``, ``"1"``, ...).
        order: The layer names (legacy) or groups (``vars``) in the file's order.
        model_config: The architecture JSON when the file holds one.
        details: JSON-ready provenance (Keras version, backend).
    """

    layout: str
    weights: dict[str, dict[str, np.ndarray]]
    order: list[str]
    model_config: dict[str, Any] | None
    details: dict[str, Any]

    def legacy_layers(self) -> list[KerasLayer]:
        """The layers with weights, in file order (legacy layouts)."""
        return [KerasLayer(name, self.weights[name])
                for name in self.order if self.weights.get(name)]


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


def _numeric_array(dataset: Any, where: str, what: str) -> np.ndarray:
    """A stored weight, numeric (a Normalization's ``count`` is an integer).

    The translation checks that the weights it uses are floating point.
    """
    array = np.asarray(dataset[()])
    if array.dtype.kind not in "iuf":
        raise ONPInputError(f"{where}: {what} is not numeric")
    return array


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
        if role in weights:
            raise ONPInputError(f"{where}: layer {layer!r}: weight {name!r} is repeated")
        weights[role] = _numeric_array(group[name], where, f"layer {layer!r} weight {name!r}")
    return weights


def _vars_weights(handle: h5py.File, where: str) -> tuple[dict[str, dict[str, np.ndarray]],
                                                           list[str]]:
    """Keras 3 ``layers/<group>/vars/<i>`` arrays, by group and position."""
    layers = handle["layers"]
    weights, order = {}, []
    for group_name in layers:
        variables = layers[group_name].get("vars")
        if variables is None:
            continue
        order.append(group_name)
        weights[group_name] = {
            key: _numeric_array(variables[key], where, f"layers/{group_name}/vars/{key}")
            for key in sorted(variables, key=lambda k: int(k) if k.isdigit() else -1)
            if isinstance(variables[key], h5py.Dataset)
        }
    return weights, order


def _config_json(raw: Any, where: str) -> dict[str, Any]:
    try:
        config = json.loads(_text(raw))
    except json.JSONDecodeError as error:
        raise ONPInputError(f"{where}: the model config is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ONPInputError(f"{where}: the model config is not a JSON object")
    return config


def _read_h5(handle: h5py.File, where: str) -> KerasFile:
    details = {key: _text(handle.attrs[key]) for key in ("keras_version", "backend")
               if key in handle.attrs}
    if "model_weights" in handle or _attr_list(handle, "layer_names") is not None:
        full = "model_weights" in handle
        group = handle["model_weights"] if full else handle
        weights, order = {}, []
        for name in _attr_list(group, "layer_names") or []:
            if name not in group:
                raise ONPInputError(f"{where}: layer {name!r} is listed but has no weights group")
            order.append(name)
            weights[name] = _layer_weights(group[name], name, where)
        raw = handle.attrs.get("model_config")
        config = _config_json(raw, where) if raw is not None else None
        return KerasFile("keras-h5-model" if full else "keras-h5-weights", weights, order,
                         config, details)
    if "layers" in handle:
        weights, order = _vars_weights(handle, where)
        return KerasFile("keras3-weights", weights, order, None, details)
    raise ONPInputError(
        f"{where}: not a Keras model or weights file: no 'model_weights' or 'layers' group and "
        f"no 'layer_names' attribute; top-level entries {sorted(handle)[:20]}, "
        f"attributes {sorted(handle.attrs)[:20]}"
    )


def read_keras_file(path: Path) -> KerasFile:
    """Read the weights (and the architecture, when stored) of a Keras ``.h5`` or ``.keras`` file.

    Raises:
        ONPInputError: Not an HDF5 or ``.keras`` file, or not a Keras layout.
    """
    where = str(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise ONPInputError(f"{where}: a zip file without config.json and "
                                    f"model.weights.h5, so not a .keras model")
            config = _config_json(archive.read("config.json"), f"{where}:config.json")
            metadata = (_config_json(archive.read("metadata.json"), f"{where}:metadata.json")
                        if "metadata.json" in names else {})
            blob = io.BytesIO(archive.read("model.weights.h5"))
        with h5py.File(blob, "r") as handle:
            weights, order = _vars_weights(handle, f"{where}:model.weights.h5")
        details = {key: str(metadata[key]) for key in ("keras_version",) if key in metadata}
        return KerasFile("keras3-zip", weights, order, config, details)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ONPInputError(f"{where}: not an HDF5 file ({error})") from None
    with handle:
        return _read_h5(handle, where)


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


def _import_deepid(path: Path, keras: KerasFile, options: ImportOptions) -> Classifier:
    """A Keras 2 weights-only file without architecture JSON, read as DeepID."""
    where = str(path)
    if options.arch_options:
        raise ONPInputError(f"{where}: deepid takes no arch_options, got {options.arch_options}")
    if options.architecture is not None and canonical_name(options.architecture) != "deepid":
        raise ONPInputError(
            f"{where}: a weights-only Keras file without its architecture is read as 'deepid', "
            f"got architecture {options.architecture!r}; pass the architecture JSON "
            f"(model.to_json()) with --keras-config"
        )
    layers = keras.legacy_layers()
    if not layers:
        raise _not_deepid(where, layers, "the file holds no weights")
    for layer in layers:
        for role, array in layer.weights.items():
            if array.dtype.kind != "f":
                raise ONPInputError(f"{where}: layer {layer.name!r} weight {role!r} is not "
                                    f"floating point")
    input_shape = options.input_shape
    if input_shape is None:
        input_shape = DEEPID_INPUT_SHAPE
        logger.info("%s: no architecture; assuming DeepID's input shape %s", where, input_shape)
    if options.input_scale is None:
        logger.info("%s: assuming the Keras model saw x/255 (input_scale=1); pass "
                    "--input-scale 255 for a model fed raw pixels", where)
    mapping = map_deepid_layers(layers, input_shape, where)
    found = ImportOptions(
        architecture="deepid",
        num_classes=int(mapping["output"].weights["kernel"].shape[1]),
        input_shape=input_shape,
    )
    merged = options.merged_with(found, where)
    state = deepid_state(mapping, input_shape, where)
    provenance = source_provenance(
        path, keras.layout, **keras.details,
        layer_mapping={name: layer.name for name, layer in mapping.items()},
        input_scale_given=options.input_scale is not None,
    )
    return build_classifier(resolve_spec(merged, state, where, provenance), state, where)


def _weights_by_layer(keras: KerasFile, architecture: KerasArchitecture, where: str
                      ) -> dict[str, dict[str, np.ndarray]]:
    """Each layer's weights by role, whichever layout the file has; unused weights are an error."""
    if keras.layout in ("keras-h5-model", "keras-h5-weights"):
        names = {layer.name for layer in architecture.layers}
        unused = [name for name, arrays in keras.weights.items() if arrays and name not in names]
        if unused:
            raise ONPInputError(f"{where}: weights of layers {unused} that the architecture does "
                                f"not have; is the architecture JSON this model's?")
        return keras.weights
    groups = storage_names(architecture)
    weights = {}
    for layer in architecture.layers:
        roles = variable_roles(layer)
        stored = keras.weights.get(groups.get(layer.name, ""), {})
        if len(stored) != len(roles):
            raise ONPInputError(
                f"{where}: layer {layer.name!r} ({layer.class_name}) expects variables {roles} "
                f"under layers/{groups.get(layer.name)}/vars, found {len(stored)}; is the "
                f"architecture JSON this model's?")
        weights[layer.name] = {role: stored[str(i)] for i, role in enumerate(roles)}
    unused = sorted(set(g for g, arrays in keras.weights.items() if arrays) - set(groups.values()))
    if unused:
        raise ONPInputError(f"{where}: weights under layers/{unused} that the architecture does "
                            f"not have; is the architecture JSON this model's?")
    return weights


def _import_graph(path: Path, keras: KerasFile, model_config: dict[str, Any],
                  options: ImportOptions) -> Classifier:
    """A Keras model with its architecture, as the zoo's ``layer_graph``."""
    where = str(path)
    if options.arch_options:
        raise ONPInputError(f"{where}: a Keras model's architecture comes from the file; "
                            f"arch_options {options.arch_options} cannot be given")
    if options.architecture is not None and canonical_name(options.architecture) != LAYER_GRAPH:
        raise ONPInputError(f"{where}: a Keras model with its architecture is imported as "
                            f"{LAYER_GRAPH!r}, got architecture {options.architecture!r}")
    architecture = parse_architecture(model_config, where)
    weights = _weights_by_layer(keras, architecture, where)
    channels, height, width = input_shape_of(architecture, where)
    translation = translate(architecture, weights, (channels, height, width), where)
    preprocessing = translation.preprocessing
    found = ImportOptions(
        architecture=LAYER_GRAPH, num_classes=translation.num_classes,
        input_shape=(channels, height, width),
        input_scale=preprocessing.input_scale if preprocessing else None,
        mean=preprocessing.mean if preprocessing else None,
        std=preprocessing.std if preprocessing else None,
    )
    if options.input_scale is None and found.input_scale is None:
        logger.info("%s: assuming the Keras model saw x/255 (input_scale=1); pass "
                    "--input-scale 255 for a model fed raw pixels", where)
    if preprocessing is not None:
        logger.info("%s: input preprocessing from the file: scale %s, mean %s, std %s", where,
                    preprocessing.input_scale, preprocessing.mean, preprocessing.std)
    merged = replace(options.merged_with(found, where),
                     arch_options={"nodes": translation.nodes, "output": translation.output})
    provenance = source_provenance(
        path, keras.layout, **keras.details, output_activation=translation.output_activation,
        input_scale_given=options.input_scale is not None,
        preprocessing_from_file=preprocessing is not None,
        keras_config=options.keras_config,
    )
    spec = resolve_spec(merged, translation.state, where, provenance)
    return build_classifier(spec, translation.state, where)


def import_keras(path: str | Path, options: ImportOptions | None = None) -> Classifier:
    """Import a Keras model file (see the module docstring for the layouts) as a Classifier.

    Args:
        path: The ``.h5``, ``.hdf5`` or ``.keras`` file.
        options: ``keras_config`` (the architecture JSON, for a weights-only file),
            ``input_scale`` (1 when Keras saw ``x / 255``, 255 for raw pixels; default 1),
            ``mean``, ``std``, ``class_names``, and for a DeepID weights file ``input_shape``
            (default ``(3, 55, 47)``). ``num_classes`` and ``input_shape`` come from the file
            when it has them and must agree if given. (default: nothing given)

    Returns:
        The classifier on the CPU in eval mode; its logits are the pre-softmax values of the
        Keras model.

    Raises:
        ONPInputError: Missing or unreadable file, an unsupported layer (named, with its class),
            missing or extra weights, NaN weights, or options contradicting the file.
    """
    path = require_file(path)
    where = str(path)
    options = options or ImportOptions()
    keras = read_keras_file(path)
    model_config = keras.model_config
    if options.keras_config is not None:
        if model_config is not None:
            raise ONPInputError(f"{where}: the file holds its own architecture; drop "
                                f"--keras-config {options.keras_config}")
        config_path = require_file(options.keras_config)
        model_config = _config_json(config_path.read_text(), str(config_path))
    if model_config is not None:
        return _import_graph(path, keras, model_config, options)
    if keras.layout == "keras-h5-weights":
        return _import_deepid(path, keras, options)
    raise ONPInputError(f"{where}: a Keras 3 weights-only file holds no architecture; pass its "
                        f"JSON (model.to_json()) with --keras-config FILE")

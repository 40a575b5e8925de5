"""Translate a Keras model config (Sequential or functional, Keras 2 or 3) into a layer graph.

The config is the JSON that Keras writes as ``model_config`` in a full ``.h5`` file, as
``config.json`` in a ``.keras`` file, or with ``model.to_json()``. It is read as data: no Keras
object is built and no code runs. The result is a :mod:`onp.models.layer_graph` node list and a
torch state dict keyed like :class:`~onp.models.layer_graph.LayerGraphNet`'s, with Keras's
channels-last weights turned into torch's layout:

* ``Conv2D`` kernels HWIO -> OIHW; ``DepthwiseConv2D`` kernels ``(h, w, in, mult)`` ->
  ``(in*mult, 1, h, w)`` with ``groups=in``;
* ``Dense`` kernels ``(in, out)`` -> ``(out, in)``; after a ``Flatten`` of an ``(h, w, c)`` map the
  rows are reordered from Keras's ``(h, w, c)`` flatten order to torch's ``(c, h, w)``;
* ``"same"`` padding becomes TensorFlow's explicit (possibly uneven) padding;
* the activation of the last layer, when it is a softmax, is left out: the network returns the
  logits, whose softmax is Keras's output;
* ``Rescaling`` and ``Normalization`` layers at the input become the bundle's input adapter
  (:class:`KerasPreprocessing`): a ``Rescaling`` there says the model is fed raw 0-255 pixels.

Every layer class in :data:`SUPPORTED_LAYERS` is translated; any other is an error that names the
layer and its class.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from onp.errors import ONPInputError
from onp.models.layer_graph import (
    INPUT,
    Node,
    Shape,
    module_name,
    output_shape,
    same_padding,
    strip_final_softmax,
)

StateDict = dict[str, torch.Tensor]
Weights = dict[str, np.ndarray]
"""A layer's weights by role: ``kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``, ..."""

IDENTITY_LAYERS = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                   "AlphaDropout", "ActivityRegularization")
"""Layers that are the identity at inference time."""
SUPPORTED_LAYERS = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "Dense", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "BatchNormalization",
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "ZeroPadding2D", "Add", "Multiply",
    "Concatenate", "Rescaling", "Normalization", *IDENTITY_LAYERS,
)
PREPROCESSING_LAYERS = ("Rescaling", "Normalization")
"""Accepted only at the input, where they become the input adapter."""
RAW_PIXEL_SCALE = 255.0
"""The input scale of a model whose first layer rescales: it is fed raw 0-255 pixels."""
_CLASS_ALIASES = {"Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D",
                  "AvgPool2D": "AveragePooling2D", "GlobalAvgPool2D": "GlobalAveragePooling2D",
                  "GlobalMaxPool2D": "GlobalMaxPooling2D"}
_ACTIVATION_NAMES = {"linear": "linear", "relu": "relu", "relu6": "relu", "sigmoid": "sigmoid",
                     "tanh": "tanh", "softmax": "softmax", "elu": "elu", "selu": "selu",
                     "swish": "silu", "silu": "silu", "gelu": "gelu", "leaky_relu": "leaky_relu"}
_KERNEL_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
KERAS_BN_EPSILON = 1e-3


@dataclass(frozen=True)
class KerasLayerConfig:
    """One layer of a model config.

    Attributes:
        name: The layer's name.
        class_name: Its Keras class (aliases resolved).
        config: Its ``config`` dict.
        inbound: Names of the layers whose outputs it takes, in order.
    """

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KerasArchitecture:
    """A model config read as a layer list.

    Attributes:
        layers: Layers in the config's order (inputs before use).
        inputs: Names of the input layers.
        outputs: Names of the output layers.
        sequential: Whether it is a Sequential model.
    """

    layers: list[KerasLayerConfig]
    inputs: list[str]
    outputs: list[str]
    sequential: bool = False

    def layer(self, name: str) -> KerasLayerConfig:
        """The layer called ``name``."""
        return next(layer for layer in self.layers if layer.name == name)


def _layer_name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("name") or entry.get("config", {}).get("name", ""))


def _keras_tensors(value: Any) -> Iterator[list[Any]]:
    """``keras_history`` entries of every Keras 3 tensor in a node's ``args``."""
    if isinstance(value, Mapping):
        if value.get("class_name") == "__keras_tensor__":
            yield list(value["config"]["keras_history"])
        else:
            for item in value.values():
                yield from _keras_tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _keras_tensors(item)


def _inbound(entry: Mapping[str, Any], where: str) -> list[str]:
    """Names of the layers feeding one functional layer (Keras 2 lists or Keras 3 dicts)."""
    nodes = entry.get("inbound_nodes") or []
    name = _layer_name(entry)
    if len(nodes) > 1:
        raise ONPInputError(f"{where}: layer {name!r} is called {len(nodes)} times (a shared "
                            f"layer), which ONP does not import")
    if not nodes:
        return []
    node = nodes[0]
    history = list(_keras_tensors(node.get("args", []))) if isinstance(node, Mapping) else [
        list(item) for item in node]
    for source in history:
        if int(source[1]) != 0 or int(source[2]) != 0:
            raise ONPInputError(f"{where}: layer {name!r} takes output {source[1:3]} of "
                                f"{source[0]!r} (a shared or multi-output layer), which ONP "
                                f"does not import")
    return [str(source[0]) for source in history]


def _end_names(value: Any) -> list[str]:
    """``input_layers`` / ``output_layers``: ``[name, 0, 0]`` or a list of those."""
    if not value:
        return []
    if isinstance(value[0], str):
        return [value[0]]
    return [str(item[0]) for item in value]


def parse_architecture(model_config: Mapping[str, Any], where: str) -> KerasArchitecture:
    """Read a Keras model config (Sequential or functional, Keras 2 or 3) as a layer list.

    Raises:
        ONPInputError: Not a Sequential or functional model, a nested model, or a shared layer.
    """
    kind = model_config.get("class_name")
    config = model_config.get("config", {})
    if kind not in ("Sequential", "Functional", "Model"):
        raise ONPInputError(f"{where}: expected a Sequential or functional Keras model, found "
                            f"{kind!r}")
    entries = config if isinstance(config, list) else config.get("layers", [])
    if not isinstance(entries, list) or not entries:
        raise ONPInputError(f"{where}: the model config has no layers")
    layers = []
    for entry in entries:
        class_name = _CLASS_ALIASES.get(entry.get("class_name"), entry.get("class_name"))
        name = _layer_name(entry)
        if class_name in ("Sequential", "Functional", "Model"):
            raise ONPInputError(f"{where}: layer {name!r} is a nested {class_name} model; save "
                                f"the model flattened (one level of layers)")
        inbound = [] if kind == "Sequential" else _inbound(entry, where)
        layers.append(KerasLayerConfig(name, str(class_name), dict(entry.get("config", {})),
                                       inbound))
    if kind == "Sequential":
        first = layers[0]
        if first.class_name != "InputLayer":
            shape = config.get("build_input_shape") or first.config.get("batch_input_shape")
            if shape is None:
                raise ONPInputError(f"{where}: the Sequential model records no input shape")
            input_layer = KerasLayerConfig("input", "InputLayer", {"batch_shape": list(shape)})
            layers.insert(0, input_layer)
        chained = [layers[0]]
        for previous, layer in zip(layers, layers[1:], strict=False):
            chained.append(KerasLayerConfig(layer.name, layer.class_name, layer.config,
                                            [previous.name]))
        return KerasArchitecture(chained, [chained[0].name], [chained[-1].name], sequential=True)
    return KerasArchitecture(layers, _end_names(config.get("input_layers")),
                             _end_names(config.get("output_layers")))


def variable_roles(layer: KerasLayerConfig) -> tuple[str, ...]:
    """Roles of the numbered variables of a Keras 3 ``.weights.h5`` layer, in order."""
    if layer.class_name == "BatchNormalization":
        config = layer.config
        return (*(("gamma",) if config.get("scale", True) else ()),
                *(("beta",) if config.get("center", True) else ()), "moving_mean",
                "moving_variance")
    if layer.class_name == "Normalization" and layer.config.get("mean") is None:
        return ("mean", "variance", "count")  # adapted: the statistics are variables
    if layer.class_name in _KERNEL_LAYERS:
        return ("kernel", "bias") if layer.config.get("use_bias", True) else ("kernel",)
    return ()


def _snake_case(class_name: str) -> str:
    """Keras's own name for a layer class in a ``.weights.h5`` file (``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def storage_names(architecture: KerasArchitecture) -> dict[str, str]:
    """Layer name -> the group Keras 3 stores its variables under (``layers/<group>/vars``).

    Keras 3 names the groups after the layer class with a counter (``conv2d``, ``conv2d_1``, ...)
    in the model's layer order, whatever the layers are called; a Sequential model's list has no
    InputLayer.
    """
    counts: dict[str, int] = {}
    names = {}
    for layer in architecture.layers:
        if architecture.sequential and layer.class_name == "InputLayer":
            continue
        base = _snake_case(layer.class_name)
        count = counts.get(base)
        counts[base] = 0 if count is None else count + 1
        names[layer.name] = base if count is None else f"{base}_{count + 1}"
    return names


def input_shape_of(architecture: KerasArchitecture, where: str) -> Shape:
    """``(C, H, W)`` of the model's one image input."""
    if len(architecture.inputs) != 1:
        raise ONPInputError(f"{where}: expected one input, the model has {architecture.inputs}")
    config = architecture.layer(architecture.inputs[0]).config
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ONPInputError(f"{where}: expected an image input [batch, H, W, C] with fixed sizes, "
                            f"found {shape}")
    height, width, channels = shape[1:]
    return channels, height, width


def _activation_name(value: Any, layer: str, where: str) -> str:
    if isinstance(value, Mapping):  # Keras 3 may serialize a built-in as a dict
        value = value.get("config", {}).get("name") or value.get("class_name")
    name = _ACTIVATION_NAMES.get(str(value).lower() if value is not None else "linear")
    if name is None:
        raise ONPInputError(f"{where}: layer {layer!r}: activation {value!r} is not supported; "
                            f"supported: {', '.join(sorted(_ACTIVATION_NAMES))}")
    return name


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _sizes(value: Any) -> list[int]:
    """Keras's ``3`` or ``[3, 3]`` as ``[3, 3]``."""
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value, value])]


class _Translator:
    """Walks the layers in order, emitting nodes and torch weights."""

    def __init__(self, weights: Mapping[str, Weights], input_shape: Shape, where: str) -> None:
        self.weights, self.where = weights, where
        self.nodes: list[Node] = []
        self.state: StateDict = {}
        self.taken: set[str] = set()
        self.tensor: dict[str, str] = {}  # Keras layer -> node giving its output
        self.shape: dict[str, Shape] = {INPUT: input_shape}
        self.flattened: dict[str, Shape] = {}  # node -> (c, h, w) it flattened, through no-ops

    def emit(self, keras_name: str, op: str, inputs: list[str], **params: Any) -> str:
        name = module_name(keras_name, self.taken)
        node = {"name": name, "op": op, "inputs": inputs, **params}
        try:
            self.shape[name] = output_shape(node, [self.shape[i] for i in inputs])
        except ONPInputError as error:
            raise ONPInputError(f"{self.where}: Keras layer {keras_name!r}: {error}") from None
        self.nodes.append(node)
        return name

    def layer_weights(self, layer: KerasLayerConfig, roles: Sequence[str]) -> Weights:
        found = dict(self.weights.get(layer.name, {}))
        if "depthwise_kernel" in found:
            found["kernel"] = found.pop("depthwise_kernel")
        missing = [role for role in roles if role not in found]
        if missing:
            raise ONPInputError(f"{self.where}: layer {layer.name!r} ({layer.class_name}) lacks "
                                f"weights {missing}; found {sorted(found)}")
        for role in ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"):
            if role in found and found[role].dtype.kind != "f":
                raise self.error(layer, f"weight {role!r} is not floating point")
        return found

    def error(self, layer: KerasLayerConfig, what: str) -> ONPInputError:
        return ONPInputError(f"{self.where}: layer {layer.name!r} ({layer.class_name}): {what}")

    def check_channels_last(self, layer: KerasLayerConfig) -> None:
        if layer.config.get("data_format", "channels_last") not in ("channels_last", None):
            raise self.error(layer, "data_format channels_first is not supported")

    def padding(self, layer: KerasLayerConfig, source: str, kernel: Sequence[int],
                stride: Sequence[int], dilation: Sequence[int] = (1, 1)) -> list[int]:
        mode = str(layer.config.get("padding", "valid")).lower()
        if mode == "valid":
            return [0, 0, 0, 0]
        if mode != "same":
            raise self.error(layer, f"padding {mode!r} is not supported (valid, same)")
        _, height, width = self.shape[source]
        return [*same_padding(height, kernel[0], stride[0], dilation[0]),
                *same_padding(width, kernel[1], stride[1], dilation[1])]

    def activation(self, layer: KerasLayerConfig, source: str, function: str,
                   **params: Any) -> str:
        if function == "linear":
            return source
        node = self.emit(f"{layer.name}_{function}", "activation", [source], function=function,
                         **params)
        if source in self.flattened:
            self.flattened[node] = self.flattened[source]
        return node

    def translate(self, layer: KerasLayerConfig) -> str:  # noqa: C901 - one branch per class
        kind, config = layer.class_name, layer.config
        sources = [self.tensor[name] for name in layer.inbound]
        if kind not in SUPPORTED_LAYERS:
            raise self.error(layer, f"layer class {kind} is not supported; supported: "
                                    f"{', '.join(SUPPORTED_LAYERS)}")
        if kind in ("Add", "Multiply", "Concatenate"):
            if kind == "Concatenate" and int(config.get("axis", -1)) not in (
                    -1, len(self.shape[sources[0]])):
                raise self.error(layer, f"axis {config.get('axis')} is not the channel axis")
            op = {"Add": "add", "Multiply": "multiply", "Concatenate": "concat"}[kind]
            if any(s in self.flattened for s in sources):
                raise self.error(layer, "takes a Flatten output, which ONP does not import")
            return self.emit(layer.name, op, sources)
        if len(sources) != 1:
            raise self.error(layer, f"expected one input, found {layer.inbound}")
        source = sources[0]
        if kind in IDENTITY_LAYERS:
            return source
        if kind in ("Conv2D", "DepthwiseConv2D"):
            return self.convolution(layer, source)
        if kind == "Dense":
            return self.dense(layer, source)
        if source in self.flattened and kind not in ("Activation", "ReLU", "LeakyReLU", "ELU",
                                                     "Softmax", "Flatten"):
            raise self.error(layer, "follows a Flatten; ONP imports Flatten followed by "
                                    "activations and Dense only")
        if kind in ("MaxPooling2D", "AveragePooling2D"):
            self.check_channels_last(layer)
            kernel = _sizes(config.get("pool_size", 2))
            stride = _sizes(config.get("strides") or kernel)
            padding = self.padding(layer, source, kernel, stride)
            if kind == "MaxPooling2D":
                return self.emit(layer.name, "maxpool", [source], kernel_size=kernel,
                                 stride=stride, padding=padding)
            return self.emit(layer.name, "avgpool", [source], kernel_size=kernel, stride=stride,
                             padding=padding, count_include_pad=False)
        if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            self.check_channels_last(layer)
            if config.get("keepdims", False):
                raise self.error(layer, "keepdims=True is not supported")
            op = "global_avgpool" if kind == "GlobalAveragePooling2D" else "global_maxpool"
            return self.emit(layer.name, op, [source])
        if kind == "Flatten":
            self.check_channels_last(layer)
            if len(self.shape[source]) == 1:
                return source
            node = self.emit(layer.name, "flatten", [source])
            self.flattened[node] = self.shape[source]
            return node
        if kind == "ZeroPadding2D":
            self.check_channels_last(layer)
            value = config.get("padding", 1)
            if isinstance(value, int):
                padding = [value] * 4
            elif all(isinstance(v, int) for v in value):
                padding = [value[0], value[0], value[1], value[1]]
            else:
                padding = [value[0][0], value[0][1], value[1][0], value[1][1]]
            return self.emit(layer.name, "pad", [source], padding=[int(p) for p in padding])
        if kind == "BatchNormalization":
            return self.batch_norm(layer, source)
        return self.activation_layer(layer, source)

    def activation_layer(self, layer: KerasLayerConfig, source: str) -> str:
        kind, config = layer.class_name, layer.config
        if kind == "Activation":
            return self.activation(layer, source, _activation_name(
                config.get("activation"), layer.name, self.where))
        if kind == "Softmax":
            if int(np.atleast_1d(config.get("axis", -1))[0]) not in (-1, 1):
                raise self.error(layer, f"axis {config.get('axis')} is not supported")
            return self.activation(layer, source, "softmax")
        if kind == "ELU":
            return self.activation(layer, source, "elu", alpha=float(config.get("alpha", 1.0)))
        if kind == "LeakyReLU":
            slope = config.get("negative_slope", config.get("alpha", 0.3))
            return self.activation(layer, source, "leaky_relu", alpha=float(slope))
        # ReLU(max_value, negative_slope, threshold)
        if float(config.get("threshold", 0.0) or 0.0) != 0.0:
            raise self.error(layer, "threshold other than 0 is not supported")
        slope = float(config.get("negative_slope", 0.0) or 0.0)
        cap = config.get("max_value")
        if slope and cap is not None:
            raise self.error(layer, "negative_slope together with max_value is not supported")
        if slope:
            return self.activation(layer, source, "leaky_relu", alpha=slope)
        return self.activation(layer, source, "relu",
                               max_value=None if cap is None else float(cap))

    def convolution(self, layer: KerasLayerConfig, source: str) -> str:
        self.check_channels_last(layer)
        config = layer.config
        if len(self.shape[source]) != 3:
            raise self.error(layer, f"expected an image input, found shape {self.shape[source]}")
        channels = self.shape[source][0]
        use_bias = bool(config.get("use_bias", True))
        weights = self.layer_weights(layer, ("kernel", "bias") if use_bias else ("kernel",))
        kernel = weights["kernel"]
        stride = _sizes(config.get("strides", 1))
        dilation = _sizes(config.get("dilation_rate", 1))
        size = [int(kernel.shape[0]), int(kernel.shape[1])]
        if layer.class_name == "DepthwiseConv2D":
            multiplier = int(kernel.shape[3])
            torch_kernel = kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, *size)
            groups, out_channels = channels, channels * multiplier
        else:
            groups = int(config.get("groups", 1) or 1)
            torch_kernel, out_channels = kernel.transpose(3, 2, 0, 1), int(kernel.shape[3])
        if torch_kernel.shape[1] * groups != channels:
            raise self.error(layer, f"kernel {tuple(kernel.shape)} does not fit {channels} input "
                                    f"channels")
        if stride != [1, 1] and dilation != [1, 1]:
            raise self.error(layer, "strides and dilation_rate both above 1")
        node = self.emit(layer.name, "conv2d", [source], in_channels=channels,
                         out_channels=out_channels, kernel_size=size, stride=stride,
                         padding=self.padding(layer, source, size, stride, dilation),
                         dilation=dilation, groups=groups, bias=use_bias)
        self.state[f"layers.{node}.weight"] = _tensor(torch_kernel)
        if use_bias:
            self.state[f"layers.{node}.bias"] = _tensor(weights["bias"])
        return self.activation(layer, node, _activation_name(
            config.get("activation"), layer.name, self.where))

    def dense(self, layer: KerasLayerConfig, source: str) -> str:
        config = layer.config
        if len(self.shape[source]) != 1:
            raise self.error(layer, f"applies to a {len(self.shape[source]) + 1}-D tensor; ONP "
                                    f"imports Dense on vectors (add Flatten or global pooling)")
        use_bias = bool(config.get("use_bias", True))
        weights = self.layer_weights(layer, ("kernel", "bias") if use_bias else ("kernel",))
        kernel = weights["kernel"]
        if kernel.ndim != 2 or kernel.shape[0] != self.shape[source][0]:
            raise self.error(layer, f"kernel {tuple(kernel.shape)} does not fit "
                                    f"{self.shape[source][0]} input features")
        if source in self.flattened:  # Keras flattened (h, w, c); torch flattens (c, h, w)
            channels, height, width = self.flattened[source]
            kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3)
            kernel = kernel.reshape(channels * height * width, -1)
        node = self.emit(layer.name, "dense", [source], in_features=int(kernel.shape[0]),
                         out_features=int(kernel.shape[1]), bias=use_bias)
        self.state[f"layers.{node}.weight"] = _tensor(kernel.T)
        if use_bias:
            self.state[f"layers.{node}.bias"] = _tensor(weights["bias"])
        return self.activation(layer, node, _activation_name(
            config.get("activation"), layer.name, self.where))

    def batch_norm(self, layer: KerasLayerConfig, source: str) -> str:
        config = layer.config
        axis = config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, len(self.shape[source])):
            raise self.error(layer, f"axis {config.get('axis')} is not the channel axis")
        weights = self.layer_weights(layer, ("moving_mean", "moving_variance"))
        features = self.shape[source][0]
        node = self.emit(layer.name, "batchnorm", [source], num_features=features,
                         eps=float(config.get("epsilon", KERAS_BN_EPSILON)))
        ones, zeros = np.ones(features, np.float32), np.zeros(features, np.float32)
        prefix = f"layers.{node}."
        self.state[prefix + "weight"] = _tensor(weights.get("gamma", ones))
        self.state[prefix + "bias"] = _tensor(weights.get("beta", zeros))
        self.state[prefix + "running_mean"] = _tensor(weights["moving_mean"])
        self.state[prefix + "running_var"] = _tensor(weights["moving_variance"])
        self.state[prefix + "num_batches_tracked"] = torch.tensor(0)
        return node


@dataclass(frozen=True)
class KerasPreprocessing:
    """Leading ``Rescaling`` / ``Normalization`` layers as ONP's input adapter.

    The layers compute ``a * x + b`` per channel on what the model is fed; ONP's adapter computes
    ``(x01 * input_scale - mean) / std``, so ``mean = -b / a`` and ``std = 1 / a`` in fed units.

    Attributes:
        input_scale: 255 when a Rescaling is among them (the model takes raw pixels), else
            ``None`` (the file does not tell).
        mean: Per-channel mean in fed units.
        std: Per-channel std in fed units.
    """

    input_scale: float | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _fold_preprocessing(architecture: KerasArchitecture, weights: Mapping[str, Weights],
                        channels: int, where: str
                        ) -> tuple[KerasPreprocessing | None, set[str]]:
    """Fold the chain of Rescaling/Normalization layers right after the input (if any).

    Returns:
        The preprocessing (``None`` without such layers) and the names of the folded layers.
    """
    consumers: dict[str, list[KerasLayerConfig]] = {}
    for layer in architecture.layers:
        for source in layer.inbound:
            consumers.setdefault(source, []).append(layer)
    scale, shift = np.ones(channels), np.zeros(channels)
    folded, rescaled = set(), False
    current = architecture.inputs[0] if len(architecture.inputs) == 1 else None
    while current is not None and len(consumers.get(current, [])) == 1:
        layer = consumers[current][0]
        config = layer.config
        if layer.class_name == "Rescaling":
            s = np.broadcast_to(np.asarray(config.get("scale", 1.0), float), channels)
            o = np.broadcast_to(np.asarray(config.get("offset", 0.0), float), channels)
            scale, shift, rescaled = scale * s, shift * s + o, True
        elif layer.class_name == "Normalization":
            if bool(config.get("invert", False)):
                raise ONPInputError(f"{where}: layer {layer.name!r} (Normalization): invert=True "
                                    f"is not supported")
            stored = weights.get(layer.name, {})
            mean = config.get("mean") if config.get("mean") is not None else stored.get("mean")
            variance = (config.get("variance") if config.get("variance") is not None
                        else stored.get("variance"))
            if mean is None or variance is None:
                raise ONPInputError(f"{where}: layer {layer.name!r} (Normalization) has no mean "
                                    f"and variance")
            m = np.broadcast_to(np.asarray(mean, float).reshape(-1), channels)
            root = np.sqrt(np.maximum(np.broadcast_to(
                np.asarray(variance, float).reshape(-1), channels), 1e-7))  # Keras's epsilon
            scale, shift = scale / root, (shift - m) / root
        else:
            break
        folded.add(layer.name)
        current = layer.name
    if not folded:
        return None, folded
    if (scale <= 0).any():
        raise ONPInputError(f"{where}: the input preprocessing flips a channel's sign (scale "
                            f"{scale.tolist()}), which ONP's input adapter cannot express")
    return KerasPreprocessing(RAW_PIXEL_SCALE if rescaled else None,
                              tuple(float(v) for v in -shift / scale),
                              tuple(float(v) for v in 1.0 / scale)), folded


@dataclass(frozen=True)
class KerasTranslation:
    """A Keras model as a layer graph.

    Attributes:
        nodes: The :mod:`~onp.models.layer_graph` nodes.
        output: Name of the node giving the logits.
        state: Torch weights keyed like ``LayerGraphNet``'s state dict.
        input_shape: ``(C, H, W)``.
        num_classes: Size of the output.
        output_activation: The final activation left out (``"softmax"``), or ``None``.
        preprocessing: The leading preprocessing layers as an input adapter, or ``None``.
    """

    nodes: list[Node]
    output: str
    state: StateDict
    input_shape: Shape
    num_classes: int
    output_activation: str | None
    preprocessing: KerasPreprocessing | None = None


def translate(architecture: KerasArchitecture, weights: Mapping[str, Weights],
              input_shape: Shape, where: str) -> KerasTranslation:
    """Translate a parsed Keras model and its weights into a layer graph.

    Args:
        architecture: From :func:`parse_architecture`.
        weights: Each weighted layer's arrays by role, as Keras stores them.
        input_shape: ``(C, H, W)`` of the input.
        where: The source, for messages.

    Raises:
        ONPInputError: An unsupported layer or setting (named), missing weights, or a model
            whose output is not one vector of class scores.
    """
    if len(architecture.outputs) != 1:
        raise ONPInputError(f"{where}: expected one output, the model has "
                            f"{architecture.outputs}")
    translator = _Translator(weights, input_shape, where)
    preprocessing, folded = _fold_preprocessing(architecture, weights, input_shape[0], where)
    for layer in architecture.layers:
        if layer.class_name == "InputLayer" or layer.name in folded:
            translator.tensor[layer.name] = INPUT
            continue
        if layer.class_name in PREPROCESSING_LAYERS:
            raise translator.error(layer, "a preprocessing layer is supported only at the input")
        translator.tensor[layer.name] = translator.translate(layer)
    if architecture.outputs[0] not in translator.tensor:
        raise ONPInputError(f"{where}: output layer {architecture.outputs[0]!r} is not in the "
                            f"layer list")
    nodes, output, final_activation = strip_final_softmax(
        translator.nodes, translator.tensor[architecture.outputs[0]])
    shape = translator.shape[output]
    if len(shape) != 1:
        raise ONPInputError(f"{where}: the model's output has shape {shape}, expected class "
                            f"scores [batch, classes]")
    return KerasTranslation(nodes, output, translator.state, input_shape, shape[0],
                            final_activation, preprocessing)

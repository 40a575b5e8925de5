"""Import ONNX models (from PyTorch, TensorFlow via tf2onnx, or any exporter) as a layer graph.

The file is parsed with the ``onnx`` package (the ONNX project's own reader; nothing is run) and
its nodes are translated into :mod:`onp.models.layer_graph` nodes, the same description the Keras
importer produces, so a bundle stores the network as data in ``spec.json`` and rebuilds it with
plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm`` modules that the neuron graph and the
pruning code trace like a zoo network.

Why not a converter library: onnx2torch (the usual choice, last release 2024-08) builds a
``torch.fx.GraphModule`` with its own ``Onnx*`` modules. Keeping that in a bundle means keeping the
ONNX file and converting it again at every load, and its custom modules are unknown to the pruning
code's tracer. The translation below covers the operators of image classifiers
(:data:`SUPPORTED_OPS`) and names any other operator in its error.

ONNX is channels-first like torch, so no weight is reordered. A trailing ``Softmax`` is left out:
the network returns logits, whose softmax is the ONNX model's output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onp.errors import ONPInputError
from onp.models.bundle import Classifier
from onp.models.importers import (
    ImportOptions,
    build_classifier,
    require_file,
    resolve_spec,
    source_provenance,
)
from onp.models.layer_graph import (
    INPUT,
    Node,
    Shape,
    infer_shapes,
    module_name,
    output_shape,
    same_padding,
    strip_final_softmax,
)
from onp.models.zoo import LAYER_GRAPH, canonical_name

logger = logging.getLogger(__name__)

ONNX_SUFFIXES = (".onnx",)
SUPPORTED_OPS = (
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "Elu", "Selu",
    "Sigmoid", "Tanh", "Softmax", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Add", "Mul", "Concat",
    "Pad", "Dropout", "Identity",
)
_ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu",
                "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}
_DEFAULT_ALPHA = {"LeakyRelu": 0.01, "Elu": 1.0}


@dataclass
class _Tensor:
    """What the translation knows of one ONNX tensor: the node giving it, and its shape.

    ``squeezed`` marks a global pooling's ``[B, C]`` that ONNX still sees as ``[B, C, 1, 1]``.
    """

    node: str
    shape: Shape
    squeezed: bool = False


def _attributes(node: Any) -> dict[str, Any]:
    return {attribute.name: onnx.helper.get_attribute_value(attribute)
            for attribute in node.attribute}


class _Translator:
    def __init__(self, graph: Any, where: str) -> None:
        self.where = where
        self.constants: dict[str, np.ndarray] = {
            item.name: numpy_helper.to_array(item) for item in graph.initializer}
        self.tensors: dict[str, _Tensor] = {}
        self.nodes: list[Node] = []
        self.state: dict[str, torch.Tensor] = {}
        self.taken: set[str] = set()
        self.uses: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1

    def error(self, node: Any, what: str) -> ONPInputError:
        label = node.name or (node.output[0] if node.output else "?")
        return ONPInputError(f"{self.where}: node {label!r} ({node.op_type}): {what}")

    def emit(self, node: Any, op: str, inputs: list[str], **params: Any) -> str:
        name = module_name(node.name or node.output[0] or op, self.taken)
        entry = {"name": name, "op": op, "inputs": [self.tensors[i].node for i in inputs],
                 **params}
        shapes = [self.tensors[i].shape for i in inputs]
        try:
            shape = output_shape(entry, shapes)
        except ONPInputError as error:
            raise self.error(node, str(error)) from None
        self.nodes.append(entry)
        self.tensors[node.output[0]] = _Tensor(name, shape)
        return name

    def alias(self, node: Any, source: str) -> None:
        self.tensors[node.output[0]] = self.tensors[source]

    def constant(self, node: Any, name: str) -> np.ndarray:
        if name not in self.constants:
            raise self.error(node, f"input {name!r} must be a constant (an initializer)")
        return self.constants[name]

    def tensor(self, node: Any, name: str) -> _Tensor:
        if name not in self.tensors:
            raise self.error(node, f"input {name!r} is not computed from the image input")
        return self.tensors[name]

    def padding(self, node: Any, attributes: Mapping[str, Any], shape: Shape,
                kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            top, bottom = same_padding(shape[1], kernel[0], stride[0], dilation[0])
            left, right = same_padding(shape[2], kernel[1], stride[1], dilation[1])
            if auto_pad == "SAME_LOWER":
                top, bottom, left, right = bottom, top, right, left
            return [top, bottom, left, right]
        if auto_pad not in ("NOTSET", "VALID"):
            raise self.error(node, f"auto_pad {auto_pad!r} is not supported")
        pads = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise self.error(node, f"expected 2-D pads, got {pads}")
        return [pads[0], pads[2], pads[1], pads[3]]  # ONNX: begins (h, w), then ends (h, w)

    def image(self, node: Any, name: str) -> _Tensor:
        tensor = self.tensor(node, name)
        if len(tensor.shape) != 3 or tensor.squeezed:
            raise self.error(node, f"expected a [B, C, H, W] input, found [B, {tensor.shape}]")
        return tensor

    def translate(self, node: Any) -> None:  # noqa: C901 - one branch per operator
        op, attributes = node.op_type, _attributes(node)
        if op not in SUPPORTED_OPS:
            raise self.error(node, f"operator {op} is not supported; supported: "
                                   f"{', '.join(SUPPORTED_OPS)}")
        if op in ("Dropout", "Identity"):
            if node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
            else:
                self.alias(node, node.input[0])
        elif op == "Conv":
            self.conv(node, attributes)
        elif op in ("Gemm", "MatMul"):
            self.dense(node, attributes)
        elif op == "BatchNormalization":
            self.batch_norm(node, attributes)
        elif op in _ACTIVATIONS:
            self.activation(node, attributes)
        elif op == "Clip":
            self.clip(node, attributes)
        elif op in ("MaxPool", "AveragePool"):
            self.pool(node, attributes)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
            self.global_pool(node, attributes)
        elif op in ("Flatten", "Reshape", "Squeeze"):
            self.flatten(node, attributes)
        elif op in ("Add", "Mul"):
            self.merge(node)
        elif op == "Concat":
            if int(attributes.get("axis", 1)) != 1:
                raise self.error(node, f"axis {attributes.get('axis')} is not the channel axis")
            self.emit(node, "concat", list(node.input))
        else:  # Pad
            self.pad(node, attributes)

    def conv(self, node: Any, attributes: Mapping[str, Any]) -> None:
        source = self.image(node, node.input[0])
        weight = self.constant(node, node.input[1])
        if weight.ndim != 4:
            raise self.error(node, f"only 2-D convolutions are supported, weight {weight.shape}")
        kernel = [int(k) for k in weight.shape[2:]]
        stride = [int(s) for s in attributes.get("strides", [1, 1])]
        dilation = [int(d) for d in attributes.get("dilations", [1, 1])]
        groups = int(attributes.get("group", 1))
        bias = len(node.input) > 2 and node.input[2] != ""
        name = self.emit(node, "conv2d", [node.input[0]], in_channels=source.shape[0],
                         out_channels=int(weight.shape[0]), kernel_size=kernel, stride=stride,
                         padding=self.padding(node, attributes, source.shape, kernel, stride,
                                              dilation),
                         dilation=dilation, groups=groups, bias=bias)
        self.state[f"layers.{name}.weight"] = torch.from_numpy(weight.astype(np.float32))
        if bias:
            self.state[f"layers.{name}.bias"] = torch.from_numpy(
                self.constant(node, node.input[2]).astype(np.float32))

    def dense(self, node: Any, attributes: Mapping[str, Any]) -> None:
        source = self.tensor(node, node.input[0])
        if len(source.shape) != 1:
            raise self.error(node, f"expected a [B, F] input, found [B, {source.shape}]")
        matrix = self.constant(node, node.input[1]).astype(np.float64)
        if node.op_type == "Gemm":
            if int(attributes.get("transA", 0)):
                raise self.error(node, "transA=1 is not supported")
            weight = matrix if int(attributes.get("transB", 0)) else matrix.T
            weight = weight * float(attributes.get("alpha", 1.0))
            bias = None
            if len(node.input) > 2 and node.input[2] != "":
                bias = np.broadcast_to(self.constant(node, node.input[2]).astype(np.float64)
                                       * float(attributes.get("beta", 1.0)), weight.shape[:1])
        else:
            weight, bias = matrix.T, None
        name = self.emit(node, "dense", [node.input[0]], in_features=int(weight.shape[1]),
                         out_features=int(weight.shape[0]), bias=True)
        self.state[f"layers.{name}.weight"] = torch.from_numpy(weight.astype(np.float32))
        zeros = np.zeros(weight.shape[0])
        self.state[f"layers.{name}.bias"] = torch.from_numpy(
            (zeros if bias is None else bias).astype(np.float32).copy())

    def batch_norm(self, node: Any, attributes: Mapping[str, Any]) -> None:
        source = self.tensor(node, node.input[0])
        scale, shift, mean, var = (self.constant(node, n) for n in node.input[1:5])
        name = self.emit(node, "batchnorm", [node.input[0]], num_features=source.shape[0],
                         eps=float(attributes.get("epsilon", 1e-5)))
        for key, value in (("weight", scale), ("bias", shift), ("running_mean", mean),
                           ("running_var", var)):
            self.state[f"layers.{name}.{key}"] = torch.from_numpy(value.astype(np.float32))
        self.state[f"layers.{name}.num_batches_tracked"] = torch.tensor(0)

    def activation(self, node: Any, attributes: Mapping[str, Any]) -> None:
        op = node.op_type
        source = self.tensor(node, node.input[0])
        if op == "Softmax" and int(attributes.get("axis", -1)) not in (-1, 1):
            raise self.error(node, f"axis {attributes.get('axis')} is not the class axis")
        if op == "Softmax" and len(source.shape) != 1:
            raise self.error(node, "softmax over a feature map is not supported")
        if op == "Selu" and ("alpha" in attributes or "gamma" in attributes):
            raise self.error(node, "Selu with other than the default alpha and gamma")
        params: dict[str, Any] = {}
        if op in _DEFAULT_ALPHA:
            params["alpha"] = float(attributes.get("alpha", _DEFAULT_ALPHA[op]))
        self.emit(node, "activation", [node.input[0]], function=_ACTIVATIONS[op], **params)

    def clip(self, node: Any, attributes: Mapping[str, Any]) -> None:
        bounds = [float(self.constant(node, n)) if n else None for n in node.input[1:3]]
        low = bounds[0] if bounds else attributes.get("min")
        high = bounds[1] if len(bounds) > 1 else attributes.get("max")
        if low is None or float(low) != 0.0:
            raise self.error(node, f"only Clip(min=0, max) (ReLU / ReLU6) is supported, min {low}")
        self.emit(node, "activation", [node.input[0]], function="relu",
                  max_value=None if high is None else float(high))

    def pool(self, node: Any, attributes: Mapping[str, Any]) -> None:
        source = self.image(node, node.input[0])
        kernel = [int(k) for k in attributes["kernel_shape"]]
        stride = [int(s) for s in attributes.get("strides", [1, 1])]
        if int(attributes.get("ceil_mode", 0)):
            raise self.error(node, "ceil_mode=1 is not supported")
        if any(int(d) != 1 for d in attributes.get("dilations", [1, 1])):
            raise self.error(node, "dilated pooling is not supported")
        padding = self.padding(node, attributes, source.shape, kernel, stride, [1, 1])
        if node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise self.error(node, "pooling indices are not supported")
            self.emit(node, "maxpool", [node.input[0]], kernel_size=kernel, stride=stride,
                      padding=padding)
        else:
            self.emit(node, "avgpool", [node.input[0]], kernel_size=kernel, stride=stride,
                      padding=padding,
                      count_include_pad=bool(int(attributes.get("count_include_pad", 0))))

    def global_pool(self, node: Any, attributes: Mapping[str, Any]) -> None:
        self.image(node, node.input[0])
        keepdims = True
        if node.op_type == "ReduceMean":
            axes = attributes.get("axes")
            if axes is None and len(node.input) > 1:
                axes = self.constant(node, node.input[1]).tolist()
            if sorted(int(a) for a in (axes or [])) not in ([2, 3], [-2, -1]):
                raise self.error(node, f"only a mean over the spatial axes is supported, axes "
                                       f"{axes}")
            keepdims = bool(int(attributes.get("keepdims", 1)))
        op = "global_maxpool" if node.op_type == "GlobalMaxPool" else "global_avgpool"
        self.emit(node, op, [node.input[0]])
        self.tensors[node.output[0]].squeezed = keepdims

    def flatten(self, node: Any, attributes: Mapping[str, Any]) -> None:
        source = self.tensor(node, node.input[0])
        if node.op_type == "Flatten" and int(attributes.get("axis", 1)) != 1:
            raise self.error(node, f"axis {attributes.get('axis')} is not supported (1)")
        if node.op_type == "Reshape":
            target = [int(d) for d in self.constant(node, node.input[1]).tolist()]
            size = int(np.prod(source.shape))
            if len(target) != 2 or target[1] not in (-1, size) or target[0] not in (-1, 0):
                raise self.error(node, f"only a reshape to [batch, features] is supported, "
                                       f"target {target}")
        if node.op_type == "Squeeze" and not source.squeezed:
            raise self.error(node, "only the squeeze after a global pooling is supported")
        if len(source.shape) == 1:  # already [B, F] (a global pooling's output)
            self.tensors[node.output[0]] = _Tensor(source.node, source.shape)
            return
        self.emit(node, "flatten", [node.input[0]])

    def merge(self, node: Any) -> None:
        constants = [name for name in node.input if name in self.constants]
        if node.op_type == "Add" and len(constants) == 1 and self.fold_bias(node, constants[0]):
            return
        if constants:
            raise self.error(node, "a constant operand is supported only as the bias of the "
                                   "Gemm/MatMul before it")
        self.emit(node, "add" if node.op_type == "Add" else "multiply", list(node.input))

    def fold_bias(self, node: Any, constant: str) -> bool:
        """``MatMul(x, W) + b`` -> the dense layer's bias (when the product has no other use)."""
        source = next(name for name in node.input if name != constant)
        tensor = self.tensor(node, source)
        last = self.nodes[-1] if self.nodes else None
        if last is None or last["name"] != tensor.node or last["op"] != "dense" or (
                self.uses.get(source, 0) != 1):
            return False
        key = f"layers.{tensor.node}.bias"
        bias = self.constant(node, constant).astype(np.float32).reshape(-1)
        if bias.size not in (1, tensor.shape[0]):
            return False
        self.state[key] = self.state[key] + torch.from_numpy(np.broadcast_to(
            bias, tensor.shape).copy())
        self.alias(node, source)
        return True

    def pad(self, node: Any, attributes: Mapping[str, Any]) -> None:
        mode = attributes.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        pads = attributes.get("pads")
        if pads is None:
            pads = self.constant(node, node.input[1]).tolist()
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            value = float(self.constant(node, node.input[2]))
        pads = [int(p) for p in pads]
        if mode != "constant" or value != 0.0 or len(pads) != 8 or any(pads[i] for i in
                                                                        (0, 1, 4, 5)):
            raise self.error(node, f"only zero padding of H and W is supported (mode {mode}, "
                                   f"pads {pads}, value {value})")
        self.emit(node, "pad", [node.input[0]], padding=[pads[2], pads[6], pads[3], pads[7]])


def _input_shape(graph: Any, constants: Mapping[str, np.ndarray], where: str
                 ) -> tuple[str, tuple[int, int, int]]:
    inputs = [item for item in graph.input if item.name not in constants]
    if len(inputs) != 1:
        raise ONPInputError(f"{where}: expected one image input, found "
                            f"{[item.name for item in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    sizes = [int(d.dim_value) if d.HasField("dim_value") else 0 for d in dims]
    if len(sizes) != 4 or any(s < 1 for s in sizes[1:]):
        raise ONPInputError(f"{where}: expected an image input [batch, C, H, W] with fixed C, H, W;"
                            f" input {inputs[0].name!r} has {sizes} (0: not fixed)")
    return inputs[0].name, (sizes[1], sizes[2], sizes[3])


def import_onnx(path: str | Path, options: ImportOptions | None = None) -> Classifier:
    """Import an ONNX image classifier as the zoo's ``layer_graph`` :class:`Classifier`.

    Args:
        path: The ``.onnx`` file.
        options: ``input_scale``, ``mean``, ``std`` (the preprocessing the model expects of
            ``[0, 1]`` images; not in the file), ``class_names``; ``num_classes`` and
            ``input_shape`` come from the file and must agree if given.

    Returns:
        The classifier on the CPU in eval mode; its logits are the ONNX model's pre-softmax
        output.

    Raises:
        ONPInputError: Not an ONNX file, an unsupported operator (named with its node), or
            options contradicting the file.
    """
    path = require_file(path)
    where = str(path)
    options = options or ImportOptions()
    if options.arch_options or (options.architecture is not None
                                and canonical_name(options.architecture) != LAYER_GRAPH):
        raise ONPInputError(f"{where}: an ONNX model's architecture comes from the file; "
                            f"architecture/arch_options cannot be given")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf raises its own DecodeError types
        raise ONPInputError(f"{where}: not a readable ONNX model ({error})") from None
    graph = model.graph
    translator = _Translator(graph, where)
    input_name, input_shape = _input_shape(graph, translator.constants, where)
    translator.tensors[input_name] = _Tensor(INPUT, input_shape)
    for node in graph.node:
        if node.op_type == "Constant":
            translator.constants[node.output[0]] = numpy_helper.to_array(
                _attributes(node)["value"])
            continue
        translator.translate(node)
    if len(graph.output) != 1:
        raise ONPInputError(f"{where}: expected one output, found "
                            f"{[item.name for item in graph.output]}")
    result = translator.tensor(graph.node[-1], graph.output[0].name)
    nodes, output, final = strip_final_softmax(translator.nodes, result.node)
    out_shape = infer_shapes(nodes, input_shape)[output]
    if len(out_shape) != 1:
        raise ONPInputError(f"{where}: the model's output has shape {out_shape}, expected class "
                            f"scores [batch, classes]")
    found = ImportOptions(architecture=LAYER_GRAPH, num_classes=out_shape[0],
                          input_shape=input_shape)
    merged = replace(options.merged_with(found, where),
                     arch_options={"nodes": nodes, "output": output})
    opset = {item.domain or "ai.onnx": int(item.version) for item in model.opset_import}
    provenance = source_provenance(path, "onnx", producer=model.producer_name,
                                   producer_version=model.producer_version, opset=opset,
                                   output_activation=final,
                                   input_scale_given=options.input_scale is not None)
    spec = resolve_spec(merged, translator.state, where, provenance)
    return build_classifier(spec, translator.state, where)


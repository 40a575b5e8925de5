"""A network described as data: a list of layer nodes, rebuilt as a torch module.

The importers of foreign formats (:mod:`onp.models.keras_import`, :mod:`onp.models.onnx_import`)
translate a file's layers into this description. It is JSON-ready, so a bundle stores it as the
``layer_graph`` architecture's options in ``spec.json``, and B, B' and G are rebuilt from it
without the original file and without running any code from it.

A node is a dict ``{"name": str, "op": str, "inputs": [names], **params}``; the network's input
is called :data:`INPUT`. Nodes come in an order where every input is defined before it is used.
Tensors are torch's: ``[B, C, H, W]`` feature maps and ``[B, F]`` vectors (``flatten`` flattens
``(c, h, w)``; an importer of a channels-last format reorders the weights that follow it).

======================  =======================================================================
op                      params
======================  =======================================================================
``conv2d``              ``in_channels, out_channels, kernel_size [kh, kw], stride [sh, sw],
                        padding [top, bottom, left, right], dilation [dh, dw], groups, bias``
``dense``               ``in_features, out_features, bias``
``batchnorm``           ``num_features, eps`` (on ``[B, C, H, W]`` or ``[B, F]``)
``maxpool``             ``kernel_size, stride, padding [t, b, l, r]`` (padding never wins)
``avgpool``             ``kernel_size, stride, padding [t, b, l, r], count_include_pad``
``global_avgpool``      (none): ``[B, C, H, W] -> [B, C]``
``global_maxpool``      (none): ``[B, C, H, W] -> [B, C]``
``flatten``             (none): ``[B, C, H, W] -> [B, C*H*W]``
``pad``                 ``padding [t, b, l, r]`` (zeros)
``activation``          ``function`` (one of :data:`ACTIVATIONS`), ``alpha`` for leaky_relu/elu,
                        ``max_value`` for relu (``None``: unbounded)
``add``                 (none): the sum of two or more inputs of one shape
``multiply``            (none): the product of two or more inputs of one shape
``concat``              (none): inputs joined along the channel / feature axis
======================  =======================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onp.errors import ONPInputError

INPUT = "input"
"""Name of the network's input in node ``inputs``."""
ACTIVATIONS = (
    "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "softmax", "silu", "gelu", "linear",
)
PARAMETRIC_OPS = ("conv2d", "dense", "batchnorm")
OPS = (
    *PARAMETRIC_OPS, "maxpool", "avgpool", "global_avgpool", "global_maxpool", "flatten", "pad",
    "activation", "add", "multiply", "concat",
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Shape = tuple[int, ...]
"""A tensor's shape without the batch axis: ``(C, H, W)`` or ``(F,)``."""
Node = dict[str, Any]


def module_name(text: str, taken: set[str]) -> str:
    """A node name made of ``[A-Za-z0-9_]`` (a torch module name), unique among ``taken``.

    Args:
        text: The layer's name in the foreign file (``"conv2d_1"``, ``"/features/0/Conv"``).
        taken: Names already used; the result is added to it.
    """
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "layer"
    if not _NAME.match(name):
        name = f"n_{name}"
    base, count = name, 1
    while name in taken or name == INPUT:
        count += 1
        name = f"{base}_{count}"
    taken.add(name)
    return name


def _pair(value: Any) -> tuple[int, int]:
    values = [int(v) for v in (value if isinstance(value, Sequence) else (value, value))]
    if len(values) != 2:
        raise ONPInputError(f"expected two sizes, got {value!r}")
    return values[0], values[1]


def _window_out(size: int, kernel: int, stride: int, before: int, after: int, dilation: int = 1
                ) -> int:
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Padding ``(before, after)`` of TensorFlow's ``"same"``: the output has ``ceil(size/stride)``.

    The extra pixel of an odd total goes after, as TensorFlow does.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_shape(node: Mapping[str, Any], shape: Shape) -> Shape:
    """Output of a conv, a pooling window or a pad on a ``(C, H, W)`` input."""
    op, name = node["op"], node["name"]
    channels, height, width = shape
    top, bottom, left, right = (int(p) for p in node.get("padding", (0, 0, 0, 0)))
    if op == "pad":
        return channels, height + top + bottom, width + left + right
    kh, kw = _pair(node["kernel_size"])
    # as the modules read them: a conv steps by 1, a pooling window by its size
    sh, sw = _pair(node.get("stride", 1 if op == "conv2d" else node["kernel_size"]))
    dh, dw = _pair(node.get("dilation", (1, 1)))
    if op == "conv2d":
        if channels != node["in_channels"]:
            raise ONPInputError(f"layer {name!r}: takes {node['in_channels']} channels, its "
                                f"input has {channels}")
        channels = int(node["out_channels"])
    out = (_window_out(height, kh, sh, top, bottom, dh),
           _window_out(width, kw, sw, left, right, dw))
    if min(out) < 1:
        raise ONPInputError(f"layer {name!r} ({op}): a {height}x{width} input is smaller than "
                            f"its {kh}x{kw} window")
    return channels, out[0], out[1]


def _merged_shape(node: Mapping[str, Any], shapes: Sequence[Shape]) -> Shape:
    """Output of ``add``, ``multiply`` (one shape) or ``concat`` (shapes agree but in axis 0)."""
    op, name = node["op"], node["name"]
    if op == "concat":
        if len(shapes) < 2 or any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:]
                                  for s in shapes):
            raise ONPInputError(f"layer {name!r} (concat): inputs must agree but in channels, got "
                                f"{list(shapes)}")
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
        raise ONPInputError(f"layer {name!r} ({op}): expected two or more inputs of one shape, "
                            f"got {list(shapes)}")
    return shapes[0]


def output_shape(node: Mapping[str, Any], shapes: Sequence[Shape]) -> Shape:
    """The shape a node gives for inputs of ``shapes`` (batch axis left out).

    Raises:
        ONPInputError: The inputs do not fit the node (named in the message).
    """
    op, name = node["op"], node["name"]
    if op in ("add", "multiply", "concat"):
        return _merged_shape(node, shapes)
    if op not in OPS:
        raise ONPInputError(f"layer {name!r}: unknown op {op!r}; known: {', '.join(OPS)}")
    rank = {"conv2d": 3, "maxpool": 3, "avgpool": 3, "pad": 3, "global_avgpool": 3,
            "global_maxpool": 3, "flatten": 3, "dense": 1}.get(op)
    if len(shapes) != 1 or (rank is not None and len(shapes[0]) != rank):
        raise ONPInputError(f"layer {name!r} ({op}): expected one input"
                            + (f" of rank {rank + 1} (with the batch axis)" if rank else "")
                            + f", got shapes {list(shapes)}")
    shape = shapes[0]
    if op in ("conv2d", "maxpool", "avgpool", "pad"):
        return _spatial_shape(node, shape)
    if op in ("global_avgpool", "global_maxpool"):
        return (shape[0],)
    if op == "flatten":
        return (math.prod(shape),)
    if op == "dense" and shape[0] != node["in_features"]:
        raise ONPInputError(f"layer {name!r}: takes {node['in_features']} features, its input "
                            f"has {shape[0]}")
    if op == "dense":
        return (int(node["out_features"]),)
    if op == "batchnorm" and shape[0] != node["num_features"]:
        raise ONPInputError(f"layer {name!r}: normalizes {node['num_features']} channels, its "
                            f"input is {shape}")
    return shape  # batchnorm, activation


def infer_shapes(nodes: Sequence[Node], input_shape: Shape) -> dict[str, Shape]:
    """The shape of every node's output (and of :data:`INPUT`), checking the graph on the way.

    Raises:
        ONPInputError: A name is invalid or repeated, an input is used before it is defined, or
            a node does not fit its inputs.
    """
    shapes: dict[str, Shape] = {INPUT: tuple(int(d) for d in input_shape)}
    for node in nodes:
        name = node.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in shapes:
            raise ONPInputError(f"layer graph: node name {name!r} is invalid or repeated")
        inputs = node.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise ONPInputError(f"layer {name!r}: expected a list of inputs, got {inputs!r}")
        missing = [i for i in inputs if i not in shapes]
        if missing:
            raise ONPInputError(f"layer {name!r}: inputs {missing} are not defined before it")
        shapes[name] = output_shape(node, [shapes[i] for i in inputs])
    return shapes


def strip_final_softmax(nodes: Sequence[Node], output: str) -> tuple[list[Node], str, str | None]:
    """Leave out a softmax that ends the network, so that it gives logits.

    Returns:
        The nodes, the new output and ``"softmax"`` when one was left out (else the nodes as
        they were, ``output`` and ``None``). A softmax another node reads is kept.
    """
    last = next((node for node in nodes if node["name"] == output), None)
    read = {name for node in nodes for name in node["inputs"]}
    if (last is None or last["op"] != "activation" or last["function"] != "softmax"
            or output in read):
        return list(nodes), output, None
    return [node for node in nodes if node is not last], last["inputs"][0], "softmax"


def _build_module(node: Node, shape: Shape) -> nn.Module:
    op = node["op"]
    if op == "conv2d":
        return nn.Conv2d(
            int(node["in_channels"]), int(node["out_channels"]), _pair(node["kernel_size"]),
            stride=_pair(node.get("stride", 1)), dilation=_pair(node.get("dilation", 1)),
            groups=int(node.get("groups", 1)), bias=bool(node.get("bias", True)),
        )
    if op == "dense":
        return nn.Linear(int(node["in_features"]), int(node["out_features"]),
                         bias=bool(node.get("bias", True)))
    norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    return norm(int(node["num_features"]), eps=float(node.get("eps", 1e-5)))


def _activate(x: torch.Tensor, node: Node) -> torch.Tensor:
    function = node["function"]
    if function == "relu":
        cap = node.get("max_value")
        return F.relu(x) if cap is None else torch.clamp(x, 0.0, float(cap))
    if function == "leaky_relu":
        return F.leaky_relu(x, float(node.get("alpha", 0.01)))
    if function == "elu":
        return F.elu(x, float(node.get("alpha", 1.0)))
    if function == "selu":
        return F.selu(x)
    if function == "sigmoid":
        return torch.sigmoid(x)
    if function == "tanh":
        return torch.tanh(x)
    if function == "softmax":
        return F.softmax(x, dim=1)
    if function == "silu":
        return F.silu(x)
    if function == "gelu":
        return F.gelu(x)
    return x  # linear


def _padded(x: torch.Tensor, padding: Sequence[int], value: float = 0.0) -> torch.Tensor:
    top, bottom, left, right = padding
    if not any(padding):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class LayerGraphNet(nn.Module):
    """A classifier run from a node list (see the module docstring for the ops).

    Parametric layers are ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm*d`` modules in
    :attr:`layers`, keyed by node name, so the neuron graph and the pruning code treat them like
    any zoo network's.

    Shapes:
        input: ``[B, C, H, W]`` (preprocessed); output: ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int],
                 nodes: Sequence[Node], output: str) -> None:
        super().__init__()
        for node in nodes:
            if not isinstance(node, Mapping) or node.get("op") not in OPS:
                op = node.get("op") if isinstance(node, Mapping) else node
                raise ONPInputError(f"layer graph: unknown op {op!r}; known: {', '.join(OPS)}")
            if node["op"] == "activation" and node.get("function") not in ACTIVATIONS:
                raise ONPInputError(f"layer {node.get('name')!r}: unknown activation "
                                    f"{node.get('function')!r}; known: {', '.join(ACTIVATIONS)}")
        self.nodes = [dict(node) for node in nodes]
        shapes = infer_shapes(self.nodes, input_shape)
        if output not in shapes or shapes[output] != (num_classes,):
            raise ONPInputError(f"layer graph: output {output!r} gives shape "
                                f"{shapes.get(output)}, expected ({num_classes},)")
        self.output = output
        self.layers = nn.ModuleDict({
            node["name"]: _build_module(node, shapes[node["inputs"][0]])
            for node in self.nodes if node["op"] in PARAMETRIC_OPS
        })

    def _run(self, node: Node, inputs: list[torch.Tensor]) -> torch.Tensor:
        op, x = node["op"], inputs[0]
        if op in PARAMETRIC_OPS:
            if op == "conv2d":
                x = _padded(x, node.get("padding", (0, 0, 0, 0)))
            return self.layers[node["name"]](x)
        if op == "maxpool":
            x = _padded(x, node.get("padding", (0, 0, 0, 0)), value=-math.inf)
            return F.max_pool2d(x, _pair(node["kernel_size"]), _pair(node["stride"]))
        if op == "avgpool":
            kernel, stride = _pair(node["kernel_size"]), _pair(node["stride"])
            padding = node.get("padding", (0, 0, 0, 0))
            total = F.avg_pool2d(_padded(x, padding), kernel, stride)
            if node.get("count_include_pad", False) or not any(padding):
                return total
            # TensorFlow averages over the window's pixels inside the image only.
            inside = F.avg_pool2d(_padded(torch.ones_like(x[:1, :1]), padding), kernel, stride)
            return total / inside
        if op == "global_avgpool":
            return x.mean(dim=(2, 3))
        if op == "global_maxpool":
            return x.amax(dim=(2, 3))
        if op == "flatten":
            return torch.flatten(x, 1)
        if op == "pad":
            return _padded(x, node["padding"])
        if op == "activation":
            return _activate(x, node)
        if op == "add":
            for other in inputs[1:]:
                x = x + other
            return x
        if op == "multiply":
            for other in inputs[1:]:
                x = x * other
            return x
        return torch.cat(inputs, dim=1)  # concat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch.

        Shapes:
            x: ``[B, C, H, W]``; returns ``[B, num_classes]``.
        """
        values = {INPUT: x}
        for node in self.nodes:
            values[node["name"]] = self._run(node, [values[name] for name in node["inputs"]])
        return values[self.output]

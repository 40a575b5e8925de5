"""ONNX import: outputs equal onnxruntime's, and the translated nets trace like the originals."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onp.errors import ONPInputError
from onp.graph.groups import trace_groups
from onp.models.bundle import load_bundle, save_bundle
from onp.models.loading import load_model
from onp.models.zoo import build_architecture

ZOO = {"resnet": (1, 28, 28), "vgg_bn": (1, 28, 28), "plain_cnn": (3, 32, 32)}


def _runtime(path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _export(name: str, path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_architecture(name, 10, ZOO[name]).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics (fused into the convs on export)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(model, (torch.rand(2, *ZOO[name]),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}})
    return model


@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_pytorch_export_matches_onnxruntime_and_keeps_its_channel_groups(tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    original = _export(name, path)
    imported = load_model(path)
    assert imported.spec.architecture == "layer_graph"
    assert imported.spec.num_classes == 10 and imported.spec.input_shape == ZOO[name]
    x = np.random.default_rng(0).random((5, *ZOO[name]), dtype=np.float32)
    with torch.no_grad():
        logits = imported(torch.from_numpy(x)).numpy()
    reference = _runtime(path, x)
    np.testing.assert_allclose(_softmax(logits), _softmax(reference), atol=1e-4, rtol=0)
    assert (logits.argmax(1) == reference.argmax(1)).all()
    sizes = [group.size for group in trace_groups(imported, ZOO[name]).groups]
    assert sizes == [group.size for group in trace_groups(original, ZOO[name]).groups]


def _handmade(path) -> None:
    """A graph using the operators a PyTorch export of the zoo does not."""
    rng = np.random.default_rng(1)

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    init = [
        const("w1", rng.normal(0, 0.4, (4, 3, 3, 3))), const("b1", rng.normal(0, 0.1, 4)),
        const("scale", rng.uniform(0.5, 1.5, 4)), const("shift", rng.normal(0, 0.1, 4)),
        const("mean", rng.normal(0, 0.1, 4)), const("var", rng.uniform(0.5, 1.5, 4)),
        const("w2", rng.normal(0, 0.4, (4, 1, 3, 3))),
        const("zero", 0.0), const("six", 6.0),
        numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        const("w3", rng.normal(0, 0.3, (8, 6))), const("b3", rng.normal(0, 0.1, 6)),
        const("w4", rng.normal(0, 0.3, (6, 5))), const("b4", rng.normal(0, 0.1, 5)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                         strides=[2, 2], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["bn"],
                         epsilon=1e-3),
        helper.make_node("Clip", ["bn", "zero", "six"], ["r6"]),
        helper.make_node("Conv", ["r6", "w2"], ["dw"], group=4, auto_pad="SAME_UPPER"),
        helper.make_node("LeakyRelu", ["dw"], ["lr"], alpha=0.2),
        helper.make_node("Mul", ["lr", "r6"], ["gate"]),
        helper.make_node("Pad", ["gate", "pads"], ["padded"], mode="constant"),
        helper.make_node("AveragePool", ["padded"], ["ap"], kernel_shape=[2, 2],
                         strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("MaxPool", ["padded"], ["mp"], kernel_shape=[2, 2], strides=[2, 2],
                         pads=[0, 0, 1, 1]),
        helper.make_node("Concat", ["ap", "mp"], ["cat"], axis=1),
        helper.make_node("GlobalMaxPool", ["cat"], ["gp"]),
        helper.make_node("Reshape", ["gp", "flat"], ["vec"]),
        helper.make_node("MatMul", ["vec", "w3"], ["mm"]),
        helper.make_node("Add", ["mm", "b3"], ["fc"]),
        helper.make_node("Elu", ["fc"], ["elu"], alpha=0.5),
        helper.make_node("Gemm", ["elu", "w4", "b4"], ["out"], alpha=0.9, beta=1.1),
        helper.make_node("Softmax", ["out"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "handmade", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                          ["batch", 3, 9, 9])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 5])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_handmade_operators_match_onnxruntime_and_round_trip_as_a_bundle(tmp_path):
    path = tmp_path / "handmade.onnx"
    _handmade(path)
    imported = load_model(path)
    assert imported.spec.provenance["output_activation"] == "softmax"
    x = np.random.default_rng(2).random((6, 3, 9, 9), dtype=np.float32)
    reference = _runtime(path, x)  # probabilities: the model ends in Softmax
    with torch.no_grad():
        probs = torch.softmax(imported(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(probs, reference, atol=1e-4, rtol=0)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    assert reference.max(1).min() < 0.99
    save_bundle(imported, tmp_path / "bundle")
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(tmp_path / "bundle")(torch.from_numpy(x)),
                                   imported(torch.from_numpy(x)))


def test_unsupported_operators_and_files_are_named(tmp_path):
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="stem"),
             helper.make_node("LRN", ["c"], ["n"], size=3, name="norm")]
    graph = helper.make_graph(
        nodes, "lrn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("n", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ONPInputError, match=r"lrn\.onnx: node 'norm' \(LRN\): operator LRN is "
                                            r"not supported; supported: Conv"):
        load_model(path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(ONPInputError, match=r"junk\.onnx: not a readable ONNX model"):
        load_model(junk)

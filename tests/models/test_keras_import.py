"""Keras DeepID import (CSAW-HackML): outputs equal an independent NumPy channels-last forward pass.

A weights-only file is recognised as DeepID; a full model file goes through the generic Keras
translation (``layer_graph``); both must give the Keras outputs.
"""

import json
import logging

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from onp.errors import ONPInputError
from onp.models.importers import ImportOptions
from onp.models.keras_import import import_keras
from onp.models.loading import load_model

INPUT_SHAPE = (3, 55, 47)
NUM_CLASSES = 7
# Keras layer order of CSAW-HackML's architecture.py (layers without weights included).
LAYERS = [
    ("input", "InputLayer"),
    ("conv_1", "Conv2D"),
    ("pool_1", "MaxPooling2D"),
    ("conv_2", "Conv2D"),
    ("pool_2", "MaxPooling2D"),
    ("conv_3", "Conv2D"),
    ("pool_3", "MaxPooling2D"),
    ("flatten_1", "Flatten"),
    ("fc_1", "Dense"),
    ("conv_4", "Conv2D"),
    ("flatten_2", "Flatten"),
    ("fc_2", "Dense"),
    ("add_1", "Add"),
    ("activation_1", "Activation"),
    ("output", "Dense"),
]
# The layers each layer takes (functional model_config inbound_nodes).
INBOUND = {"conv_1": "input", "pool_1": "conv_1", "conv_2": "pool_1", "pool_2": "conv_2",
           "conv_3": "pool_2", "pool_3": "conv_3", "flatten_1": "pool_3", "fc_1": "flatten_1",
           "conv_4": "pool_3", "flatten_2": "conv_4", "fc_2": "flatten_2",
           "add_1": ("fc_1", "fc_2"), "activation_1": "add_1", "output": "activation_1"}
# 55x47 -> conv 4x4, pool -> 26x22 -> conv 3x3, pool -> 12x10 -> conv 3x3, pool -> 5x4 (p3);
# conv_4 2x2 on p3 -> 4x3. So fc_1 takes 5*4*60 = 1200 inputs and fc_2 4*3*80 = 960.
SHAPES = {
    "conv_1": (4, 4, 3, 20),
    "conv_2": (3, 3, 20, 40),
    "conv_3": (3, 3, 40, 60),
    "conv_4": (2, 2, 60, 80),
    "fc_1": (1200, 160),
    "fc_2": (960, 160),
    "output": (160, NUM_CLASSES),
}


def make_weights(seed=0, conv_1_scale=1.0):
    """Random DeepID weights (Keras layouts), fan-in scaled so the softmax is not saturated."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in SHAPES.items():
        fan_in = int(np.prod(shape[:-1]))
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        if name == "conv_1":
            kernel *= conv_1_scale
        weights[name] = (kernel, rng.normal(0.0, 0.1, shape[-1]).astype(np.float32))
    return weights


# ----------------------------------------------------------- NumPy reference (channels-last)
def _conv_valid(x, kernel, bias):
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))  # [B, H', W', C, kh, kw]
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel) + bias


def _maxpool2(x):
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def keras_forward(x_nhwc, weights):
    """The Keras DeepID forward pass in float64: logits (pre-softmax) and softmax."""
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    w = {name: (k.astype(np.float64), b.astype(np.float64)) for name, (k, b) in weights.items()}
    x = _maxpool2(relu(_conv_valid(x_nhwc.astype(np.float64), *w["conv_1"])))
    x = _maxpool2(relu(_conv_valid(x, *w["conv_2"])))
    p3 = _maxpool2(relu(_conv_valid(x, *w["conv_3"])))
    branch_a = p3.reshape(len(p3), -1) @ w["fc_1"][0] + w["fc_1"][1]  # flatten in (h, w, c) order
    c4 = relu(_conv_valid(p3, *w["conv_4"]))
    branch_b = c4.reshape(len(c4), -1) @ w["fc_2"][0] + w["fc_2"][1]
    logits = relu(branch_a + branch_b) @ w["output"][0] + w["output"][1]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def test_numpy_reference_is_independent_of_torch_by_hand():
    # A 1x1 "image" of ones through a single valid 1x1 conv: the einsum must be a plain dot.
    x = np.ones((1, 1, 1, 2))
    kernel = np.arange(6.0).reshape(1, 1, 2, 3)
    assert _conv_valid(x, kernel, np.zeros(3)).tolist() == [[[[3.0, 5.0, 7.0]]]]
    assert _maxpool2(np.arange(8.0).reshape(1, 2, 2, 2))[0, 0, 0].tolist() == [6.0, 7.0]


# ----------------------------------------------------------- Keras HDF5 writers
def _config(names, input_shape=INPUT_SHAPE, overrides=None):
    """A Keras 2.3-style functional model_config for DeepID with the given layer names."""
    c, h, w = input_shape
    per_class = {
        "InputLayer": {"batch_input_shape": [None, h, w, c], "dtype": "float32"},
        "Conv2D": {
            "padding": "valid",
            "strides": [1, 1],
            "dilation_rate": [1, 1],
            "activation": "relu",
            "data_format": "channels_last",
            "use_bias": True,
        },
        "MaxPooling2D": {
            "pool_size": [2, 2],
            "strides": [2, 2],
            "padding": "valid",
            "data_format": "channels_last",
        },
        "Dense": {"activation": "linear", "use_bias": True},
        "Activation": {"activation": "relu"},
        "Flatten": {"data_format": "channels_last"},
        "Add": {},
    }
    layers = []
    renamed = dict(zip([n for n, _ in LAYERS], names, strict=True))
    for (default, kind), name in zip(LAYERS, names, strict=True):
        config = {"name": name, "trainable": True, **per_class[kind]}
        if default == "output":
            config["activation"] = "softmax"
        if kind in ("Conv2D", "Dense"):
            config["filters" if kind == "Conv2D" else "units"] = SHAPES[default][-1]
        config.update((overrides or {}).get(default, {}))
        sources = INBOUND.get(default, ())
        sources = [sources] if isinstance(sources, str) else list(sources)
        inbound = [[[renamed[s], 0, 0, {}] for s in sources]] if sources else []
        layers.append({"name": name, "class_name": kind, "config": config,
                       "inbound_nodes": inbound})
    model = {"name": "model_1", "layers": layers, "input_layers": [[names[0], 0, 0]],
             "output_layers": [[renamed["output"], 0, 0]]}
    return json.dumps({"class_name": "Model", "config": model})


def _write_layers(group, weights, names, chunked=False):
    encoded = np.array([n.encode("utf8") for n in names])
    if chunked:  # Keras splits long attributes into layer_names0, layer_names1, ...
        for i, part in enumerate(np.array_split(encoded, 2)):
            group.attrs[f"layer_names{i}"] = part
    else:
        group.attrs["layer_names"] = encoded
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = b"2.3.1"
    for name in names:
        layer = group.create_group(name)
        if name not in weights:
            layer.attrs["weight_names"] = np.array([], dtype="S1")
            continue
        kernel, bias = weights[name]
        layer.attrs["weight_names"] = np.array(
            [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
        )
        layer.create_dataset(f"{name}/kernel:0", data=kernel)
        layer.create_dataset(f"{name}/bias:0", data=bias)


def write_keras(
    path, weights, layout="model", rename=None, config_overrides=None, chunked=False, order=None
):
    """Write ``weights`` as Keras would: ``save_weights`` or ``save`` (``layout="model"``)."""
    rename = rename or {}
    names = [rename.get(name, name) for name in (order or [name for name, _ in LAYERS])]
    renamed = {rename.get(name, name): value for name, value in weights.items()}
    with h5py.File(path, "w") as f:
        if layout == "weights":
            _write_layers(f, renamed, names, chunked)
        else:
            f.attrs["keras_version"] = b"2.3.1"
            f.attrs["backend"] = b"tensorflow"
            f.attrs["model_config"] = _config(names, overrides=config_overrides).encode("utf8")
            f.attrs["training_config"] = json.dumps({"loss": "sparse_categorical_crossentropy"})
            _write_layers(f.create_group("model_weights"), renamed, names, chunked)
            f.create_group("optimizer_weights")
    return path


def _images(n=4, seed=1):
    return torch.rand(n, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def _assert_matches_keras(model, weights, x, scale=1.0):
    with torch.no_grad():
        logits = model(x).double()
    ref_logits, ref_probs = keras_forward(x.permute(0, 2, 3, 1).numpy() * scale, weights)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), ref_probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------- tests
@pytest.mark.parametrize("layout", ["weights", "model"])
def test_both_layouts_match_the_keras_forward_pass(tmp_path, layout):
    weights = make_weights()
    path = write_keras(tmp_path / f"bd_{layout}.h5", weights, layout)
    model = load_model(path)
    assert model.spec.architecture == ("deepid" if layout == "weights" else "layer_graph")
    assert model.spec.num_classes == NUM_CLASSES  # from the output kernel
    assert model.spec.input_shape == INPUT_SHAPE
    assert model.spec.input_scale == 1.0
    x = _images()
    _assert_matches_keras(model, weights, x)
    _, probs = keras_forward(x.permute(0, 2, 3, 1).numpy(), weights)
    assert probs.max(axis=1).min() < 0.99, "softmax saturated: the comparison would be weak"
    provenance = model.spec.provenance
    assert provenance["format"] == f"keras-h5-{layout}"
    assert provenance["source"] == str(path.resolve())
    assert provenance["keras_version"] == "2.3.1"
    if layout == "weights":
        assert provenance["layer_mapping"]["fc_2"] == "fc_2"
    else:
        assert provenance["output_activation"] == "softmax"  # left out: the net gives logits


def test_input_shape_comes_from_model_config(tmp_path):
    weights = make_weights()
    path = write_keras(tmp_path / "m.h5", weights)
    with h5py.File(path, "a") as f:  # claim a different input size: fc_1 then no longer fits
        f.attrs["model_config"] = _config([n for n, _ in LAYERS], input_shape=(3, 64, 64))
    with pytest.raises(ONPInputError,
                       match=r"layer 'fc_1' \(Dense\): kernel \(1200, 160\) does not fit 2160 in"):
        import_keras(path)


def test_input_scale_255_feeds_raw_pixels(tmp_path):
    weights = make_weights(conv_1_scale=1 / 255)  # a net trained on 0-255 pixels
    path = write_keras(tmp_path / "raw.h5", weights)
    x = _images()
    raw = import_keras(path, ImportOptions(input_scale=255))
    assert raw.spec.input_scale == 255.0
    assert raw.spec.provenance["input_scale_given"] is True
    _assert_matches_keras(raw, weights, x, scale=255.0)
    unit = import_keras(path)  # default: Keras saw x/255
    _assert_matches_keras(unit, weights, x, scale=1.0)
    with torch.no_grad():
        assert not torch.allclose(raw(x), unit(x), atol=1e-3)


def test_other_layer_names_are_inferred_from_kernel_shapes(tmp_path, caplog):
    rename = {"conv_1": "conv2d_1", "conv_2": "conv2d_2", "conv_3": "conv2d_3"}
    rename |= {"conv_4": "conv2d_4", "fc_1": "dense_1", "fc_2": "dense_2", "output": "dense_3"}
    weights = make_weights(seed=3)
    path = write_keras(tmp_path / "renamed_weights.h5", weights, "weights", rename=rename)
    with caplog.at_level(logging.WARNING, logger="onp.models.keras_import"):
        model = import_keras(path)
    assert "inferred from kernel shapes" in caplog.text
    assert model.spec.provenance["layer_mapping"] == {k: rename[k] for k in SHAPES}
    _assert_matches_keras(model, weights, _images())
    # A full model names its layers in its config: any names translate.
    path = write_keras(tmp_path / "renamed_model.h5", weights, "model", rename=rename)
    _assert_matches_keras(import_keras(path), weights, _images())
    # Dense layers listed out of order: fc_1/fc_2/output are told apart by their input sizes.
    order = [name for name, _ in LAYERS if name not in ("fc_1", "fc_2", "output")]
    order += ["output", "fc_2", "fc_1"]
    path = write_keras(tmp_path / "shuffled.h5", weights, "weights", rename=rename, order=order)
    _assert_matches_keras(import_keras(path), weights, _images())


def test_chunked_layer_names_attribute(tmp_path):
    weights = make_weights()
    path = write_keras(tmp_path / "chunked.h5", weights, "weights", chunked=True)
    _assert_matches_keras(import_keras(path), weights, _images(2))


def test_missing_and_non_keras_files_are_clear_errors(tmp_path):
    with pytest.raises(ONPInputError, match="no such file"):
        load_model(tmp_path / "bd_net.h5")
    data = tmp_path / "valid.h5"  # a CSAW data file, not a model
    with h5py.File(data, "w") as f:
        f["data"] = np.zeros((2, 3, 55, 47), np.uint8)
        f["label"] = np.zeros(2)
    with pytest.raises(ONPInputError, match=r"valid\.h5: not a Keras model.*'data', 'label'"):
        load_model(data)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(ONPInputError, match="not an HDF5 file"):
        load_model(text)


def test_unknown_architecture_lists_the_layers_found(tmp_path):
    weights = make_weights()
    weights["conv_5"] = (np.zeros((3, 3, 80, 80), np.float32), np.zeros(80, np.float32))
    path = tmp_path / "bigger.h5"
    with h5py.File(path, "w") as f:
        _write_layers(f, weights, [n for n, _ in LAYERS] + ["conv_5"])
    with pytest.raises(ONPInputError, match=r"bigger\.h5: not the DeepID architecture.*conv_5 \("):
        import_keras(path)
    batchnorm = {"gamma": np.ones(20), "beta": np.zeros(20)}
    path = tmp_path / "bn.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv_1", b"bn_1"])
        for name, arrays in (
            ("conv_1", dict(zip(("kernel", "bias"), weights["conv_1"], strict=True))),
            ("bn_1", batchnorm),
        ):
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in arrays])
            for k, v in arrays.items():
                group.create_dataset(f"{name}/{k}:0", data=v)
    with pytest.raises(ONPInputError, match=r"not the DeepID.*bn_1 \(gamma \(20,\), beta"):
        import_keras(path)


def test_model_config_settings_are_translated_not_assumed(tmp_path):
    # conv_2 with "same" padding (26x22 stays 26x22) is another network than DeepID's.
    weights = make_weights()
    path = write_keras(tmp_path / "same.h5", weights,
                       config_overrides={"conv_2": {"padding": "same"}})
    model = import_keras(path)
    conv_2 = next(n for n in model.spec.arch_options["nodes"] if n["name"] == "conv_2")
    assert conv_2["padding"] == [1, 1, 1, 1]
    x = _images()
    _, deepid_probs = keras_forward(x.permute(0, 2, 3, 1).numpy(), weights)
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), 1).numpy()
    assert np.abs(probs - deepid_probs).max() > 1e-3


def test_nan_weights_are_refused(tmp_path):
    weights = make_weights()
    weights["fc_2"][0][3, 5] = np.nan
    path = write_keras(tmp_path / "nan.h5", weights, "weights")
    with pytest.raises(ONPInputError, match=r"nan\.h5.*NaN.*fc_2\.weight"):
        import_keras(path)


def test_options_that_contradict_the_file_are_refused(tmp_path):
    path = write_keras(tmp_path / "m.h5", make_weights())
    with pytest.raises(ONPInputError, match="num_classes=10 was passed but the file says 7"):
        load_model(path, num_classes=10)
    with pytest.raises(ONPInputError, match="input_shape"):
        load_model(path, input_shape=(3, 56, 47))
    with pytest.raises(ONPInputError, match="imported as 'layer_graph', got architecture 'resnet'"):
        load_model(path, architecture="resnet")
    with pytest.raises(ONPInputError, match="read as 'deepid'.*--keras-config"):
        load_model(write_keras(tmp_path / "w1.h5", make_weights(), "weights"),
                   architecture="resnet")
    weights_only = write_keras(tmp_path / "w.h5", make_weights(), "weights")
    with pytest.raises(ONPInputError, match=r"fc_1 takes 1200 inputs"):
        load_model(weights_only, input_shape=(3, 64, 64))

"""Generic Keras import: every supported layer class, Keras 2 and 3 layouts, against Keras itself.

The files and Keras's outputs in ``tests/data/keras`` were made with TensorFlow 2.21 (Keras 3.15
and tf-keras 2.21) by ``benchmarks/keras_reference.py``; ONP's import must give the same softmax
to 1e-4 and the same argmax.
"""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from onp.errors import ONPInputError
from onp.graph.groups import trace_groups
from onp.models.bundle import load_bundle, save_bundle
from onp.models.keras_graph import SUPPORTED_LAYERS
from onp.models.loading import load_model

DATA = Path(__file__).parent.parent / "data" / "keras"
MODELS = ("every_layer", "sequential", "preprocessing")
# (file suffix, needs the JSON beside it) per Keras version
LAYOUTS = {2: (("-full.h5", False), ("-weights.h5", True)),
           3: (("-full.h5", False), (".weights.h5", True), (".keras", False))}
CASES = [(model, version, suffix, needs_json) for model in MODELS
         for version, layouts in LAYOUTS.items() for suffix, needs_json in layouts]


def _load(model: str, version: int, suffix: str, needs_json: bool):
    stem = DATA / f"{model}-k{version}"
    options = {"keras_config": str(stem.with_suffix(".json"))} if needs_json else {}
    return load_model(Path(f"{stem}{suffix}"), **options)


def _reference(model: str, version: int) -> tuple[torch.Tensor, np.ndarray]:
    with np.load(DATA / f"{model}-k{version}.npz") as ref:
        return torch.from_numpy(ref["x"]).permute(0, 3, 1, 2), ref["softmax"]


@pytest.mark.parametrize(("model", "version", "suffix", "needs_json"), CASES)
def test_outputs_equal_keras(model, version, suffix, needs_json):
    classifier = _load(model, version, suffix, needs_json)
    assert classifier.spec.architecture == "layer_graph"
    x, keras_softmax = _reference(model, version)
    with torch.no_grad():
        softmax = torch.softmax(classifier(x), 1).numpy()
    np.testing.assert_allclose(softmax, keras_softmax, atol=1e-4, rtol=0)
    assert (softmax.argmax(1) == keras_softmax.argmax(1)).all()
    assert keras_softmax.max(1).min() < 0.99, "saturated softmax: the comparison would be weak"


def test_rescaling_at_the_input_says_the_model_takes_raw_pixels(tmp_path):
    for version in (2, 3):
        classifier = _load("preprocessing", version, "-full.h5", False)
        spec = classifier.spec
        assert spec.input_scale == 255.0 and spec.provenance["preprocessing_from_file"]
        # Rescaling(1/127.5, offset -1) then Normalization: no layer of the net is left for them
        assert [node["op"] for node in spec.arch_options["nodes"]][:1] == ["conv2d"]
        with pytest.raises(ONPInputError, match="input_scale=1.0 was passed but the file says 255"):
            _load_with("preprocessing", version, input_scale=1.0)


def _load_with(model: str, version: int, **options):
    return load_model(DATA / f"{model}-k{version}-full.h5", **options)


def test_the_reference_models_use_every_supported_layer_class():
    used = set()
    for model in MODELS:
        config = json.loads((DATA / f"{model}-k3.json").read_text())
        used |= {layer["class_name"] for layer in config["config"]["layers"]}
    identity_only = {"GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"}
    assert set(SUPPORTED_LAYERS) - identity_only <= used


def test_imported_models_trace_into_channel_groups_and_round_trip_as_bundles(tmp_path):
    classifier = _load("every_layer", 3, ".keras", False)
    groups = trace_groups(classifier, classifier.spec.input_shape)
    # The depthwise conv (6 x 2 = 12 channels) and the grouped 1x1 conv (12) meet in an Add:
    # one coupled group of 12 channels, as the graph code must find by tracing.
    kinds = [(group.kind, group.size) for group in groups.groups]
    assert kinds == [("conv", 6), ("conv", 12), ("conv", 8), ("conv", 8), ("linear", 7)]
    x, _ = _reference("every_layer", 3)
    save_bundle(classifier, tmp_path / "bundle")
    again = load_bundle(tmp_path / "bundle")
    with torch.no_grad():
        torch.testing.assert_close(again(x), classifier(x))


def _edited_json(tmp_path: Path, edit) -> Path:
    config = json.loads((DATA / "sequential-k3.json").read_text())
    edit(config["config"]["layers"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(config))
    return path


def _weights(tmp_path: Path) -> Path:
    return Path(shutil.copy(DATA / "sequential-k3.weights.h5", tmp_path / "w.weights.h5"))


def test_an_unsupported_layer_is_named_with_its_class(tmp_path):
    def to_lstm(layers):
        layers[2]["class_name"] = "LSTM"
    config = _edited_json(tmp_path, to_lstm)
    with pytest.raises(ONPInputError, match=r"layer 'max_pooling2d\w*' \(LSTM\): layer class LSTM "
                                            r"is not supported; supported: InputLayer, Conv2D"):
        load_model(_weights(tmp_path), keras_config=str(config))


def test_unsupported_settings_are_named(tmp_path):
    def channels_first(layers):
        layers[1]["config"]["data_format"] = "channels_first"
    config = _edited_json(tmp_path, channels_first)
    with pytest.raises(ONPInputError, match=r"'conv2d\w*' \(Conv2D\): data_format channels_first"):
        load_model(_weights(tmp_path), keras_config=str(config))

    def odd_activation(layers):
        layers[1]["config"]["activation"] = "hard_sigmoid"
    config = _edited_json(tmp_path, odd_activation)
    with pytest.raises(ONPInputError, match=r"'conv2d\w*': activation 'hard_sigmoid' is not supp"):
        load_model(_weights(tmp_path), keras_config=str(config))


def test_a_weights_file_needs_its_own_architecture(tmp_path):
    with pytest.raises(ONPInputError, match=r"Keras 3 weights-only file.*--keras-config"):
        load_model(_weights(tmp_path))
    other = str(DATA / "every_layer-k3.json")
    with pytest.raises(ONPInputError, match=r"is the architecture JSON this model's\?"):
        load_model(_weights(tmp_path), keras_config=other)
    with pytest.raises(ONPInputError, match=r"holds its own architecture; drop --keras-config"):
        load_model(DATA / "sequential-k3.keras", keras_config=other)


def test_a_shared_layer_is_refused_clearly(tmp_path):
    config = json.loads((DATA / "every_layer-k2.json").read_text())
    layer = next(entry for entry in config["config"]["layers"] if entry["class_name"] == "Add")
    layer["inbound_nodes"].append(layer["inbound_nodes"][0])
    path = tmp_path / "shared.json"
    path.write_text(json.dumps(config))
    weights = shutil.copy(DATA / "every_layer-k2-weights.h5", tmp_path / "w.h5")
    with pytest.raises(ONPInputError, match=r"layer 'add' is called 2 times \(a shared layer\)"):
        load_model(weights, keras_config=str(path))


def test_weights_that_are_not_floats_are_refused(tmp_path):
    path = Path(shutil.copy(DATA / "sequential-k2-full.h5", tmp_path / "int.h5"))
    with h5py.File(path, "a") as handle:
        weights = handle["model_weights"]
        dense = next(name for name in weights if name.startswith("dense"))
        bias = next(name for name in weights[f"{dense}/{dense}"] if name.startswith("bias"))
        del weights[f"{dense}/{dense}/{bias}"]
        weights[f"{dense}/{dense}/{bias}"] = np.zeros(16, np.int64)
    with pytest.raises(ONPInputError,
                       match=r"int\.h5: layer 'dense\w*' \(Dense\): weight 'bias' is not fl"):
        load_model(path)

"""onp.apply on a user's model: own architectures, input scaling, pixel ranges, attack records."""

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from onp.apply import main as apply_main
from onp.data.hdf5 import load_hdf5, pixel_scale
from onp.detect import main as detect_main
from onp.errors import ONPInputError
from onp.models import zoo
from onp.models.bundle import load_bundle
from onp.subjects import load_subject

from .test_apply_cli import _tiny

USER_MODULE = "onp_test_user_nets"
USER_CLASS = f"{USER_MODULE}:WrappedResNet"
# The user's module: their own nn.Module class (here wrapping the zoo ResNet so that the infected
# test model's weights fit it, under other names).
USER_SOURCE = '''
from torch import nn
from onp.models.zoo import build_architecture

class WrappedResNet(nn.Module):
    def __init__(self, num_classes, width, depth, channels=1):
        super().__init__()
        self.body = build_architecture("resnet", num_classes, (channels, 12, 12),
                                       width=width, depth=depth)

    def forward(self, x):
        return self.body(x)
'''


def test_pixel_scale_is_read_off_the_values_unless_given():
    assert pixel_scale(np.array([0, 3], np.uint8), None, "f") == 255.0
    assert pixel_scale(np.array([0.0, 200.0], np.float32), None, "f") == 255.0
    assert pixel_scale(np.array([0.0, 0.9], np.float32), None, "f") == 1.0
    assert pixel_scale(np.array([0.0, 0.9], np.float32), 255.0, "f") == 255.0
    with pytest.raises(ONPInputError, match="pixel scale must be positive"):
        pixel_scale(np.zeros(2), 0.0, "f")


def test_an_hdf5_file_of_float_pixels_in_0_1_reads_as_the_same_images(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(4)
    for name, data in (("uint8", pixels), ("float255", pixels.astype(np.float32)),
                       ("float01", pixels.astype(np.float32) / 255.0)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as handle:
            handle["data"], handle["label"] = data, labels
    reference = load_hdf5(tmp_path / "uint8.h5").images
    for name in ("float255", "float01"):
        torch.testing.assert_close(load_hdf5(tmp_path / f"{name}.h5").images, reference)
    with pytest.raises(ONPInputError, match=r"float01\.h5: expected pixel values in \[0, 0\.5\]"):
        load_hdf5(tmp_path / "float01.h5", scale=0.5)


@pytest.fixture()
def user_model(infected_run, tiny_data, tmp_path, monkeypatch):
    """The infected test model saved as a user would: a state dict of their own class."""
    (tmp_path / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(zoo._REGISTRY, USER_CLASS, raising=False)
    infected = load_bundle(infected_run / "model")
    state = {f"body.{key}": value for key, value in infected.net.state_dict().items()}
    torch.save(state, tmp_path / "mine.pt")
    train = np.load(tiny_data / "train.npz")
    with h5py.File(tmp_path / "defense.h5", "w") as handle:  # [N, H, W, C] pixels 0..255
        handle["data"], handle["label"] = train["x"][:200, ..., None], train["y"][:200]
    options = infected.spec.arch_options
    yield tmp_path, ["--model", str(tmp_path / "mine.pt"), "--architecture", USER_CLASS,
                     "--arch-options", json.dumps(options),
                     "--num-classes", str(infected.spec.num_classes),
                     "--input-shape", *map(str, infected.spec.input_shape),
                     "--data", str(tmp_path / "defense.h5")]
    monkeypatch.delitem(zoo._REGISTRY, USER_CLASS, raising=False)


def test_a_users_own_architecture_is_repaired_and_reloads_only_when_named(user_model, caplog,
                                                                       monkeypatch):
    root, args = user_model
    out = root / "apply"
    assert apply_main(args + _tiny(out, "--mode", "prune-only")) == 0
    repaired = load_bundle(out / "repaired")
    assert repaired.spec.architecture == USER_CLASS
    # A new process has not imported the user's module: the bundle names it, which is not enough.
    monkeypatch.delitem(zoo._REGISTRY, USER_CLASS)
    with pytest.raises(ONPInputError, match=rf"--architecture {USER_CLASS}"):
        load_bundle(out / "repaired")
    with caplog.at_level(logging.ERROR):
        assert detect_main(["--detector", str(out / "detector"),
                            "--input", str(root / "defense.h5")]) == 2
    assert "never because a file names it" in caplog.text
    assert detect_main(["--detector", str(out / "detector"), "--input", str(root / "defense.h5"),
                        "--architecture", USER_CLASS]) == 0


def test_apply_stops_when_the_model_is_fed_the_wrong_pixel_scale(user_model, caplog):
    root, args = user_model
    with caplog.at_level(logging.ERROR):
        assert apply_main(args + ["--input-scale", "255"] + _tiny(root / "wrong")) == 2
    assert "defense.h5: B classifies" in caplog.text
    assert "--input-scale 1 gives" in caplog.text
    assert not (root / "wrong").exists()


def test_an_attack_record_onp_cannot_rebuild_does_not_block_the_repair(infected_run, tiny_data,
                                                                      tmp_path):
    bundle = Path(shutil.copytree(infected_run / "model", tmp_path / "model"))
    spec = json.loads((bundle / "spec.json").read_text())
    spec["attack"]["config"]["kind"] = "my-own-trigger"
    (bundle / "spec.json").write_text(json.dumps(spec))
    subject = load_subject(bundle, "npz", str(tiny_data))
    assert subject.test_poisoned is None
    assert "attack kind 'my-own-trigger' is unknown" in (subject.attack_note or "")


def test_an_onnx_export_of_the_infected_model_is_repaired_end_to_end(infected_run, tiny_data,
                                                                      tmp_path):
    infected = load_bundle(infected_run / "model")
    path = tmp_path / "infected.onnx"
    torch.onnx.export(infected.net.eval(), (torch.rand(2, *infected.spec.input_shape),),
                      str(path), dynamo=False, input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}})
    train = np.load(tiny_data / "train.npz")
    np.savez(tmp_path / "defense.npz", x=train["x"][:200], y=train["y"][:200])
    out = tmp_path / "apply"
    assert apply_main(["--model", str(path), "--data", str(tmp_path / "defense.npz")]
                      + _tiny(out, "--mode", "prune-only")) == 0
    repaired = load_bundle(out / "repaired")
    assert repaired.spec.architecture == "layer_graph"
    assert json.loads((out / "report.json").read_text())["mode"] == "prune-only"

"""PyTorch checkpoint import: layouts round-trip outputs exactly; unsafe or unfit files fail."""

import numpy as np
import pytest
import torch
from torch import nn

from onp.errors import ONPInputError
from onp.models.bundle import ModelSpec, make_classifier
from onp.models.importers import ImportOptions
from onp.models.loading import load_model
from onp.models.torch_import import BACKDOORBENCH_NORMALIZATION, import_torch_checkpoint
from onp.models.zoo import PreActResNet18

SHAPE = (3, 32, 32)
NUM_CLASSES = 10
WIDTH = {"width": 8}  # small enough to keep the tests fast
BACKDOORBENCH_NAMES = {"preact_resnet18": "preactresnet18", "resnet": "resnet"}
CIFAR_MEAN, CIFAR_STD = BACKDOORBENCH_NORMALIZATION["cifar10"]


def reference(architecture, seed=0, **spec_fields):
    """A zoo classifier with random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = make_classifier(ModelSpec(architecture, NUM_CLASSES, SHAPE, dict(WIDTH), **spec_fields))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def images(n=3):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(5))


def backdoorbench_payload(state, model_name):
    """An ``attack_result.pt`` as BackdoorBench's save_attack_result writes it."""
    poison = np.zeros(20, dtype=np.int64)
    poison[[2, 7]] = 1
    return {
        "model_name": model_name,
        "num_classes": NUM_CLASSES,
        "model": state,
        "data_path": "./data/cifar10",
        "img_size": [32, 32, 3],
        "clean_data": "cifar10",
        "bd_train": {
            "bd_data_container": {
                "save_folder_path": "record/badnet/bd_train_dataset",
                "data_dict": {np.int64(2): {"path": "0/2.png", "other_info": [0, 3]}},
                "save_file_format": ".png",
            },
            "getitem_all": True,
            "getitem_all_switch": False,
            "original_index_array": np.arange(20),
            "poison_indicator": poison,
            "save_folder_path": "record/badnet/bd_train_dataset",
        },
        "bd_test": {"x": torch.zeros(2, 3, 32, 32), "y": torch.zeros(2, dtype=torch.long)},
    }


def _assert_same_outputs(imported, ref):
    x = images()
    with torch.no_grad():
        assert torch.equal(imported(x), ref(x))


# ----------------------------------------------------------------- layouts
@pytest.mark.parametrize("architecture", ["preact_resnet18", "resnet"])
def test_bare_and_wrapped_state_dicts_round_trip(tmp_path, architecture):
    ref = reference(architecture)
    state = ref.net.state_dict()
    bare, wrapped = tmp_path / "bare.pth", tmp_path / "ckpt.pt"
    torch.save(state, bare)
    torch.save({"state_dict": state, "epoch": 12, "best_acc": 91.5}, wrapped)
    for path in (bare, wrapped):
        model = load_model(path, architecture=architecture, input_shape=SHAPE, arch_options=WIDTH)
        assert model.spec.num_classes == NUM_CLASSES  # read off the classifier head
        assert model.spec.provenance["source"] == str(path.resolve())
        assert model.spec.provenance["format"] == "torch-checkpoint"
        _assert_same_outputs(model, ref)
    options = ImportOptions(architecture=architecture, input_shape=SHAPE, arch_options=WIDTH)
    assert import_torch_checkpoint(bare, options).spec.provenance["layout"] == "state_dict"
    assert (
        import_torch_checkpoint(wrapped, options).spec.provenance["layout"] == "dict['state_dict']"
    )


@pytest.mark.parametrize("architecture", ["preact_resnet18", "resnet"])
def test_backdoorbench_attack_result_round_trips(tmp_path, architecture):
    ref = reference(architecture, mean=CIFAR_MEAN, std=CIFAR_STD)
    path = tmp_path / "attack_result.pt"
    torch.save(backdoorbench_payload(ref.net.state_dict(), BACKDOORBENCH_NAMES[architecture]), path)
    model = load_model(path, arch_options=WIDTH)  # architecture, classes, input size from the file
    assert model.spec.architecture == architecture
    assert model.spec.input_shape == SHAPE
    assert (model.spec.mean, model.spec.std) == (CIFAR_MEAN, CIFAR_STD)
    assert model.spec.provenance["layout"] == "backdoorbench"
    assert model.spec.provenance["dataset"] == "cifar10"
    _assert_same_outputs(model, ref)


def test_data_parallel_prefix_is_stripped(tmp_path):
    ref = reference("resnet")
    path = tmp_path / "dp.pt"
    torch.save({"module." + k: v for k, v in ref.net.state_dict().items()}, path)
    _assert_same_outputs(
        load_model(path, architecture="resnet", input_shape=SHAPE, arch_options=WIDTH), ref
    )


def test_checkpoint_without_batchnorm_counters_loads(tmp_path):
    ref = reference("resnet")
    state = {k: v for k, v in ref.net.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    _assert_same_outputs(
        load_model(path, architecture="resnet", input_shape=SHAPE, arch_options=WIDTH), ref
    )


def test_numpy_1_pickles_of_arrays_load(tmp_path):
    ref = reference("resnet")
    legacy = tmp_path / "legacy.pt"
    torch.save(
        {"state_dict": ref.net.state_dict(), "index": np.arange(3)},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    # A file written under NumPy 1 names the array rebuilder numpy.core.multiarray._reconstruct.
    raw = legacy.read_bytes()
    assert b"numpy._core.multiarray" in raw
    legacy.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    _assert_same_outputs(
        load_model(legacy, architecture="resnet", input_shape=SHAPE, arch_options=WIDTH), ref
    )


# ----------------------------------------------------------------- BackdoorBench's PreActResNet18
class BackdoorBenchPreAct(PreActResNet18):
    """BackdoorBench's models/preact_resnet.py: no final BatchNorm+ReLU before pooling."""

    def __init__(self):
        super().__init__(NUM_CLASSES, 3, width=8)
        del self.bn

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _backdoorbench_preact_file(tmp_path):
    torch.manual_seed(0)
    net = BackdoorBenchPreAct().eval()
    path = tmp_path / "attack_result.pt"
    torch.save(backdoorbench_payload(net.state_dict(), "preactresnet18"), path)
    return net, path


def test_backdoorbench_preact_without_final_bn_round_trips(tmp_path):
    net, path = _backdoorbench_preact_file(tmp_path)
    model = load_model(path, arch_options=WIDTH)
    assert model.spec.arch_options["final_bn"] is False
    x = images()
    with torch.no_grad():
        expected = net(
            (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
            / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        )
        torch.testing.assert_close(model(x), expected)


# ----------------------------------------------------------------- errors
def test_missing_architecture_or_input_shape_names_the_argument(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(reference("resnet").net.state_dict(), path)
    with pytest.raises(ONPInputError, match=r"bare\.pt: .*pass architecture=\.\.\."):
        load_model(path)
    with pytest.raises(ONPInputError, match=r"pass input_shape=\(C, H, W\)"):
        load_model(path, architecture="resnet")


def test_mismatched_weights_are_clear_errors(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(reference("resnet").net.state_dict(), path)
    with pytest.raises(ONPInputError, match=r"do not fit architecture 'preact_resnet18': missing"):
        load_model(path, architecture="preact_resnet18", input_shape=SHAPE, arch_options=WIDTH)
    with pytest.raises(ONPInputError, match=r"wrong shape.*conv1\.weight: file \(8, 3, 3, 3\)"):
        load_model(path, architecture="resnet", input_shape=SHAPE)  # default width 16
    with pytest.raises(ONPInputError, match=r"fc\.weight: file \(10, 32\) vs model \(5, 32\)"):
        load_model(
            path, architecture="resnet", input_shape=SHAPE, arch_options=WIDTH, num_classes=5
        )
    with pytest.raises(ONPInputError, match=r"does not accept options \{'widht': 8\}"):
        load_model(path, architecture="resnet", input_shape=SHAPE, arch_options={"widht": 8})


def test_file_and_caller_must_agree(tmp_path):
    path = tmp_path / "attack_result.pt"
    torch.save(backdoorbench_payload(reference("resnet").net.state_dict(), "resnet"), path)
    with pytest.raises(ONPInputError, match="num_classes=5 was passed but the file says 10"):
        load_model(path, arch_options=WIDTH, num_classes=5)
    with pytest.raises(ONPInputError, match="architecture='preact_resnet18' was passed"):
        load_model(path, arch_options=WIDTH, architecture="preact_resnet18")
    payload = backdoorbench_payload(reference("resnet").net.state_dict(), "vgg19")
    torch.save(payload, path)
    with pytest.raises(ONPInputError, match=r"model_name 'vgg19' is not in the zoo"):
        load_model(path)


def test_nan_weights_are_refused(tmp_path):
    state = reference("resnet").net.state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(ONPInputError, match=r"nan\.pt: weights contain NaN.*layer2\.0\.conv1"):
        load_model(path, architecture="resnet", input_shape=SHAPE, arch_options=WIDTH)


EXECUTED = []


def _record(*args):
    EXECUTED.append(args)
    return args


class Payload:
    """An object whose unpickling would call a function: what a malicious checkpoint does."""

    def __reduce__(self):
        return (_record, ("payload ran",))


class CustomConfig:
    """A plain user class stored beside the weights."""

    def __init__(self):
        self.lr = 0.1


def test_pickled_code_and_objects_are_refused_and_never_run(tmp_path):
    state = reference("resnet").net.state_dict()
    cases = {
        "reduce.pt": ({"state_dict": state, "extra": Payload()}, "_record"),
        "custom.pt": ({"state_dict": state, "config": CustomConfig()}, "CustomConfig"),
        "module.pt": (reference("resnet").net, "CifarResNet"),
    }
    for name, (payload, culprit) in cases.items():
        torch.save(payload, tmp_path / name)
        refusal = rf"{name}: refused: this file is a pickle that carries code.*{culprit}.*never"
        with pytest.raises(ONPInputError, match=refusal):
            load_model(tmp_path / name, architecture="resnet", input_shape=SHAPE)
    assert EXECUTED == []


def test_unreadable_or_weightless_files_are_clear_errors(tmp_path):
    with pytest.raises(ONPInputError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ONPInputError, match="not a readable PyTorch checkpoint"):
        load_model(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ONPInputError, match="not a readable PyTorch checkpoint"):
        load_model(empty)
    weightless = tmp_path / "log.pt"
    torch.save({"epoch": 3, "acc": torch.tensor(0.9)}, weightless)
    with pytest.raises(
        ONPInputError, match=r"no weights found.*top-level keys are \['acc', 'epoch'\]"
    ):
        load_model(weightless)


def test_round_trips_are_not_vacuous():
    # Equal outputs must come from the loaded weights: another seed gives other outputs.
    x = images()
    with torch.no_grad():
        for architecture in ("preact_resnet18", "resnet"):
            a, b = reference(architecture, seed=0)(x), reference(architecture, seed=1)(x)
            assert not torch.allclose(a, b)

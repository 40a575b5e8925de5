import copy

import torch

from onp.models.bundle import ModelSpec, load_bundle, make_classifier, save_bundle
from onp.models.layout import channels_last_copy
from onp.models.zoo import build_architecture


def test_eval_mode_input_gradients_match_float64():
    """What a universal-trigger fit needs: d(loss)/d(input) through a frozen copy."""
    torch.manual_seed(0)
    model = build_architecture("resnet", 5, (1, 28, 28)).eval()
    fast = channels_last_copy(model).requires_grad_(False)
    reference = copy.deepcopy(model).double()
    x = torch.rand(4, 1, 28, 28)
    x_fast = x.clone().requires_grad_(True)
    x_reference = x.double().requires_grad_(True)
    fast(x_fast).logsumexp(1).sum().backward()
    reference(x_reference).logsumexp(1).sum().backward()
    assert x_reference.grad is not None and x_reference.grad.abs().max() > 1e-4
    torch.testing.assert_close(x_fast.grad, x_reference.grad.float(), rtol=1e-4, atol=1e-7)


def test_a_channels_last_model_saves_and_loads(tmp_path):
    spec = ModelSpec(architecture="plain_cnn", num_classes=4, input_shape=(1, 12, 12),
                     arch_options={"width": 4})
    model = channels_last_copy(make_classifier(spec)).eval()
    save_bundle(model, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert all(p.is_contiguous() for p in loaded.parameters())
    x = torch.rand(2, 1, 12, 12)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-6)

"""CLP: the channel Lipschitz upper bound by hand, the outlier rule, data-free pruning."""

from __future__ import annotations

import torch
from torch import nn

from onp.defenses import build_defense, clp
from onp.defenses.clp import channels_to_prune, layer_bounds
from onp.graph.evidence import channel_lipschitz_bound


def _conv() -> nn.Conv2d:
    """Two output channels, two input channels, 1x2 kernels, with known singular values."""
    conv = nn.Conv2d(2, 2, (1, 2), bias=False)
    with torch.no_grad():
        # channel 0: rows (3, 4) and (0, 0): one singular value, 5.
        # channel 1: rows (1, 0) and (0, 2): singular values 2 and 1.
        conv.weight.copy_(torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]],
                                        [[[1.0, 0.0]], [[0.0, 2.0]]]]))
    return conv


def test_bound_of_a_conv_with_known_weights() -> None:
    torch.testing.assert_close(channel_lipschitz_bound(_conv()), torch.tensor([5.0, 2.0]))


def test_batchnorm_scales_the_bound_by_gamma_over_sigma() -> None:
    bn = nn.BatchNorm2d(2, eps=0.0)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-2.0, 1.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    # |gamma| / sigma = 2 / 2 = 1 and 1 / 0.5 = 2
    torch.testing.assert_close(channel_lipschitz_bound(_conv(), bn), torch.tensor([5.0, 4.0]))


def test_outliers_above_mean_plus_u_std_are_pruned() -> None:
    bound = torch.tensor([1.0] * 9 + [10.0])  # mean 1.9, std 2.846
    bounds = {"conv": (bound, None)}
    assert channels_to_prune(bounds, u=2.0) == {"conv": [9]}
    assert channels_to_prune(bounds, u=3.0) == {"conv": []}  # 10 < 1.9 + 3 * 2.846


def test_layers_pair_convs_with_their_batchnorm_and_none_without(tiny_models) -> None:
    bounds = layer_bounds(tiny_models["resnet"], (1, 12, 12))
    assert bounds["net.conv1"][1] == "net.bn1"
    assert bounds["net.layer2.0.shortcut.0"][1] == "net.layer2.0.shortcut.1"
    bounds = layer_bounds(tiny_models["plain_cnn"], (1, 12, 12))
    assert {name: bn for name, (_b, bn) in bounds.items()} == {
        "net.features.0": None, "net.features.3": None}


def test_runs_data_free_on_both_nets(tiny_model, defense_set, checks, held_in_spy) -> None:
    seen = held_in_spy(clp)
    before = checks.state_of(tiny_model)
    result = build_defense("clp", {"u": 1.0}).repair(tiny_model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(tiny_model))
    checks.assert_repaired_shape(tiny_model, result.model)
    assert seen == []  # the fixed-u rule needs no data
    assert result.info["pruned"] > 0
    modules = dict(result.model.named_modules())
    for name, layer in result.info["layers"].items():
        target = modules[layer["batchnorm"] or name]
        for channel in layer["pruned"]:
            assert target.weight[channel].abs().sum() == 0


def test_u_is_chosen_on_held_in_defense_data_when_candidates_are_given(
    tiny_models, defense_set, checks, held_in_spy
) -> None:
    seen = held_in_spy(clp)
    settings = {"u_candidates": [3.0, 2.0, 1.0, 0.0], "max_drop": 0.0}
    result = build_defense("clp", settings).repair(tiny_models["resnet"], defense_set, seed=0)
    checks.assert_only_defense_data(seen, defense_set)
    scan = result.info["scan"]
    assert [u for u, _acc in scan["curve"]] == [3.0, 2.0, 1.0, 0.0][: len(scan["curve"])]
    assert result.info["u"] == scan["chosen"]

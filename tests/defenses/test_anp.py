"""ANP: neuron masks robust to adversarial neuron perturbation, pruned as held-in data allow."""

from __future__ import annotations

import torch

from onp.defenses import build_defense, neuron_masks
from onp.defenses.anp import AnpSettings, optimize_mask
from onp.defenses.neuron_masks import mask_units
from onp.graph.groups import trace_groups

FAST = {"iterations": 6, "batch_size": 16}


def test_node_granularity_prunes_channel_group_nodes(tiny_models, defense_set) -> None:
    model = tiny_models["plain_cnn"]
    info = build_defense("anp", {**FAST, "granularity": "node"}).repair(model, defense_set).info
    assert info["units"] == trace_groups(model, (1, 12, 12)).num_nodes
    assert all(isinstance(unit, int) for unit in info["pruned_units"])


def test_runs_on_both_nets_and_prunes_only_by_defense_data(
    tiny_model, defense_set, checks, held_in_spy
) -> None:
    seen = held_in_spy(neuron_masks)
    before = checks.state_of(tiny_model)
    result = build_defense("anp", FAST).repair(tiny_model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(tiny_model))
    checks.assert_repaired_shape(tiny_model, result.model)
    checks.assert_only_defense_data(seen, defense_set)
    info = result.info
    values = torch.tensor(info["mask_values"])
    assert values.min() >= 0 and values.max() <= 1
    assert info["pruned"] == len(info["pruned_units"]) == (info["chosen"] or 0)
    assert info["granularity"] == "layer" and len(values) == info["units"]
    floor = info["scan"]["held_in_min_accuracy"]
    assert all(acc >= floor for count, acc in info["scan"]["curve"] if count <= info["pruned"])
    pruned = torch.zeros(len(values), dtype=torch.bool)
    pruned[torch.argsort(values, stable=True)[: info["pruned"]]] = True
    assert 0 < info["pruned"] < len(values)  # the scan chose some units, not all
    assert values[pruned].max() <= values[~pruned].min()  # the lowest mask values go first


def test_threshold_mode_prunes_every_unit_at_or_under_the_chosen_threshold(
    tiny_models, defense_set
) -> None:
    settings = {**FAST, "pruning_by": "threshold", "max_drop": 1.0}
    info = build_defense("anp", settings).repair(tiny_models["resnet"], defense_set).info
    values = torch.tensor(info["mask_values"])
    assert info["chosen"] == 0.9  # any drop allowed: the largest threshold
    assert info["pruned"] == int((values <= 0.9).sum())


def test_the_perturbation_is_what_moves_the_mask(tiny_models, defense_set) -> None:
    model = tiny_models["resnet"]
    units = mask_units(model, trace_groups(model, (1, 12, 12)))
    robust = optimize_mask(model, units, defense_set, AnpSettings(iterations=5, batch_size=16),
                           seed=0)
    natural = optimize_mask(model, units, defense_set,
                            AnpSettings(iterations=5, batch_size=16, eps=0.0), seed=0)
    assert robust.shape == natural.shape == (units.count,)
    assert not torch.allclose(robust, natural)
    again = optimize_mask(model, units, defense_set, AnpSettings(iterations=5, batch_size=16),
                          seed=0)
    torch.testing.assert_close(again, robust)

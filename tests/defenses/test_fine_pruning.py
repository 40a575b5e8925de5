"""Fine-Pruning: least-active channels of the last conv group first, stop on held-in accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onp.data.types import DatasetMeta, ImageSet
from onp.defenses import build_defense, fine_pruning
from onp.defenses.fine_pruning import mean_activations
from onp.graph.groups import trace_groups

FAST = {"finetune_epochs": 1, "step_fraction": 0.25}


class _OneConv(nn.Module):
    """conv 1->3 (1x1, weights 2, -1, 1) -> ReLU -> mean -> dense: activations 2, 0, 1 on ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0, 1.0]).view(3, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def _ones(n: int = 16) -> ImageSet:
    meta = DatasetMeta("ones", ("a", "b"), (1, 4, 4))
    return ImageSet(torch.ones(n, 1, 4, 4), torch.arange(n) % 2, meta)


def test_activations_and_pruning_order_by_hand() -> None:
    model = _OneConv()
    groups = trace_groups(model, (1, 4, 4))
    activations = mean_activations(model, groups.groups[0], _ones().images)
    torch.testing.assert_close(activations, torch.tensor([2.0, 0.0, 1.0]))
    settings = {"max_drop": 1.0, "step_fraction": 1 / 3, "max_fraction": 0.67,
                "finetune_epochs": 0}
    result = build_defense("fine-pruning", settings).repair(model, _ones(), seed=0)
    assert result.info["pruned_nodes"] == [1, 2]  # least active first: 0.0, then 1.0
    weight = result.model.conv.weight.flatten()
    assert weight[1] == 0 and weight[2] == 0 and weight[0] == 2.0


def test_runs_on_both_nets_prunes_least_active_and_uses_only_defense_data(
    tiny_model, defense_set, checks, held_in_spy
) -> None:
    seen = held_in_spy(fine_pruning)
    before = checks.state_of(tiny_model)
    # Any accuracy drop allowed: the scan prunes its largest count (90% of the layer), so the
    # order of pruning is always on show.
    settings = {**FAST, "max_drop": 1.0}
    result = build_defense("fine-pruning", settings).repair(tiny_model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(tiny_model))
    checks.assert_repaired_shape(tiny_model, result.model)
    checks.assert_only_defense_data(seen, defense_set)
    info = result.info
    assert info["pruned"] == len(info["pruned_nodes"]) == (info["scan"]["chosen"] or 0)
    activations = torch.tensor(info["activations"])
    kept = torch.ones(len(activations), dtype=torch.bool)
    groups = trace_groups(tiny_model, (1, 12, 12))
    first = int(groups.offsets[info["layer"]["group"]])
    kept[[n - first for n in info["pruned_nodes"]]] = False
    assert 0 < info["pruned"] < len(activations)  # the scan chose some channels, not all
    assert activations[~kept].max() <= activations[kept].min()  # the least active go first


def test_the_choice_depends_only_on_the_defense_data_and_seed(tiny_models, defense_set) -> None:
    model = tiny_models["plain_cnn"]
    first = build_defense("fine-pruning", FAST).repair(model, defense_set, seed=0).info
    torch.manual_seed(123)  # global randomness elsewhere must not move the choice
    second = build_defense("fine-pruning", FAST).repair(model, defense_set, seed=0).info
    assert first["pruned_nodes"] == second["pruned_nodes"]
    assert first["scan"] == second["scan"]

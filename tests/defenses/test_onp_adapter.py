"""The ONP adapters: the pipeline gets the defense data only, and B' is read back."""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from onp.defenses import build_defense, onp_adapter
from onp.graph.groups import trace_groups
from onp.models.bundle import save_bundle

TINY_PIPELINE = {
    "signal": {"trigger_steps": 20, "unlearn_max_steps": 30, "probe_size": 32},
    "rounds": 1, "agent_timesteps": 16, "batch_size": 32,
    "ppo": {"n_steps": 16, "batch_size": 8, "n_epochs": 1, "hidden": 8, "layers": 1},
}


def _fake_pipeline(calls: list[dict]) -> types.ModuleType:
    """A stand-in with the pipeline's entry points, recording what it was given."""

    @dataclass(frozen=True)
    class ApplyConfig:
        model: str = ""
        seed: int = 0
        out: str = ""
        overwrite: bool = False
        rounds: int = 10
        unlearn_fraction: float = 0.2
        distill_weight: float = 0.25
        refit: bool = True
        importance: str = "activation"
        extra: dict = field(default_factory=dict)

    @dataclass
    class ApplyInputs:
        name: str
        model: torch.nn.Module
        defense: object
        test_clean: object
        test_poisoned: object
        sources: dict

    def run_apply(config, seed_mask, prepared):
        inputs, stage = prepared
        calls.append({"config": config, "mask": seed_mask, "inputs": inputs, "stage": stage})
        save_bundle(inputs.model, Path(config.out) / "repaired")
        return {"mask": {"pruned": 0 if seed_mask is None else int((~seed_mask).sum())},
                "sparse": {"best_round": 2}, "test": "never asked for"}

    fake = types.ModuleType("fake_pipeline")
    fake.ApplyConfig, fake.ApplyInputs, fake.run_apply = ApplyConfig, ApplyInputs, run_apply
    fake.make_probe = lambda inputs, config: "probe"
    return fake


def test_the_pipeline_gets_the_defense_data_only_and_b_prime_is_read_back(
    tiny_models, defense_set, monkeypatch, checks
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(onp_adapter, "pipeline", _fake_pipeline(calls))
    model = tiny_models["resnet"]
    result = build_defense("onp", {"options": {"rounds": 3}}).repair(model, defense_set, seed=4)
    call = calls[-1]
    assert call["mask"] is None and call["stage"] == "probe"
    assert call["config"].rounds == 3 and call["config"].seed == 4
    assert call["inputs"].defense is defense_set
    assert call["inputs"].test_clean is None and call["inputs"].test_poisoned is None
    checks.assert_repaired_shape(model, result.model)
    assert result.info["sparse"]["best_round"] == 2 and "test" not in result.info

    result = build_defense("sfp-random", {"fraction": 0.25, "options": {"rounds": 3}}).repair(
        model, defense_set, seed=1)
    mask, config = calls[-1]["mask"], calls[-1]["config"]
    groups = trace_groups(model, (1, 12, 12))
    assert int((~mask).sum()) == round(0.25 * groups.num_nodes) == result.info["mask"]["pruned"]
    # a suite's shortening keeps the published recipe: no unlearning, no distillation, no refit
    assert config.rounds == 3 and config.unlearn_fraction == 0.0 and config.distill_weight == 0.0
    assert config.refit is False and config.importance == "weight"
    assert all(bool(keep.any()) for keep in groups.split(mask))  # no group cut entirely


@pytest.mark.parametrize("name", ["onp", "sfp-random"])
def test_the_real_pipeline_repairs_a_tiny_model(
    name: str, tiny_models, defense_set, checks
) -> None:
    model = tiny_models["resnet"]
    before = checks.state_of(model)
    result = build_defense(name, {"options": TINY_PIPELINE}).repair(model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(model))
    checks.assert_repaired_shape(model, result.model)
    assert result.info["mask"]["num_nodes"] == trace_groups(model, (1, 12, 12)).num_nodes

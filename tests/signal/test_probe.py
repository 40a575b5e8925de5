import json

import pytest
import torch

from onp.attacks import AttackConfig, build_attack
from onp.config import config_from_dict
from onp.data.splits import split_defense
from onp.errors import ONPInputError
from onp.signal import (
    KNOWN_TRIGGER,
    SYNTHESIZED,
    BackdoorProbe,
    SignalConfig,
    concat_probes,
    estimate_probe,
    known_trigger_probe,
    poisoned_probe,
    proxy_asr,
)


def _probe(targets: list[int], true: list[int]) -> BackdoorProbe:
    return BackdoorProbe(torch.zeros(len(targets), 1, 4, 4), torch.tensor(targets),
                         torch.tensor(true), known_trigger=False, source="synthesized")


def test_proxy_asr_of_constant_models_by_hand(constant_model):
    probe = _probe([2, 2, 2, 3], [0, 1, 3, 0])
    assert proxy_asr(constant_model(4, 2), probe) == pytest.approx(3 / 4)
    assert proxy_asr(constant_model(4, 3), probe) == pytest.approx(1 / 4)
    assert proxy_asr(constant_model(4, 0), probe) == 0.0
    assert probe.asr_of(torch.tensor([2, 0, 2, 3])) == pytest.approx(3 / 4)


def test_proxy_asr_restores_the_training_mode(constant_model):
    model = constant_model(4, 2).train()
    proxy_asr(model, _probe([2], [0]))
    assert model.training


def test_probe_rejects_target_class_images_and_mismatched_labels():
    with pytest.raises(ONPInputError, match="target class"):
        _probe([2, 2], [2, 0])
    with pytest.raises(ONPInputError, match="expected images"):
        BackdoorProbe(torch.zeros(3, 1, 4, 4), torch.tensor([1, 1]), torch.tensor([0, 0]),
                      known_trigger=False, source="synthesized")
    with pytest.raises(ONPInputError, match="source"):
        BackdoorProbe(torch.zeros(1, 1, 4, 4), torch.tensor([1]), torch.tensor([0]),
                      known_trigger=False, source="known-trigger")


def test_known_trigger_probe_stamps_the_real_trigger(toy_set_factory):
    clean = toy_set_factory(40, 0)
    attack = build_attack(AttackConfig(kind="badnets", target=1), clean.meta.image_shape)
    for given in (attack, attack.describe()):  # an Attack or a bundle spec's description
        probe = known_trigger_probe(given, clean.images, clean.labels)
        assert probe.known_trigger and probe.source == "known-trigger"
        assert len(probe) == 30  # the 10 images of class 1 are dropped
        assert bool((probe.true_labels != 1).all()) and bool((probe.target_labels == 1).all())
        torch.testing.assert_close(probe.images, attack.apply(clean.images[clean.labels != 1]))
    assert len(known_trigger_probe(attack, clean.images, clean.labels, max_images=7)) == 7


def test_known_trigger_probe_needs_a_trigger(toy_set_factory):
    clean = toy_set_factory(8, 0)
    attack = build_attack(AttackConfig(kind="none"), clean.meta.image_shape)
    with pytest.raises(ONPInputError, match="no trigger"):
        known_trigger_probe(attack, clean.images, clean.labels)


def test_poisoned_probe_from_user_images():
    images = torch.rand(3, 1, 4, 4)
    probe = poisoned_probe(images, torch.tensor([0, 0, 0]))
    assert probe.known_trigger and len(probe) == 3 and bool((probe.true_labels == -1).all())
    dropped = poisoned_probe(images, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    assert len(dropped) == 2


def test_split_defense_is_disjoint_and_stratified(toy_set_factory):
    defense = toy_set_factory(100, 0)
    fit, held = split_defense(defense, 0.2, seed=0)
    assert len(fit) + len(held) == 100
    assert not set(fit.indices.tolist()) & set(held.indices.tolist())
    assert torch.bincount(held.labels, minlength=4).tolist() == [5, 5, 5, 5]


def test_estimate_probe_end_to_end(toy_backdoor):
    result = estimate_probe(toy_backdoor.model, toy_backdoor.defense, toy_backdoor.config, seed=0)
    assert result.estimate.target == toy_backdoor.target
    probe = result.probe
    assert not probe.known_trigger and probe.source == "synthesized"
    assert len(probe) == toy_backdoor.config.probe_size
    assert bool((probe.target_labels == toy_backdoor.target).all())
    assert bool((probe.true_labels != toy_backdoor.target).all())
    assert result.initial_proxy_asr > 0.8
    assert result.initial_proxy_asr == proxy_asr(toy_backdoor.model, probe)
    report = json.loads(json.dumps(result.to_json()))
    assert report["probe"]["known_trigger"] is False
    assert report["target"]["targets"] == [toy_backdoor.target]


def test_estimate_probe_rejects_a_tiny_defense_set(toy_backdoor):
    with pytest.raises(ONPInputError, match="at least 16 images"):
        estimate_probe(toy_backdoor.model, toy_backdoor.defense.subset(torch.arange(30)))


def test_signal_config_loads_from_a_mapping_and_validates():
    config = config_from_dict(SignalConfig, {"trigger_steps": 50, "held_in_fraction": 0.5}, "t")
    assert config.trigger_steps == 50 and config.unlearn_lr == SignalConfig().unlearn_lr
    with pytest.raises(ONPInputError, match="unknown config keys"):
        config_from_dict(SignalConfig, {"trigger_step": 50}, "t")
    with pytest.raises(ONPInputError, match="held_in_fraction"):
        SignalConfig(held_in_fraction=1.0)
    with pytest.raises(ONPInputError, match="positive"):
        SignalConfig(unlearn_max_steps=0)


def test_attack_description_errors_are_clear():
    with pytest.raises(ONPInputError, match="expected the keys"):
        known_trigger_probe({"config": {}}, torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))


def test_concat_probes_joins_probes_of_one_kind() -> None:
    images = torch.rand(3, 1, 4, 4)
    a = BackdoorProbe(images, torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3]), False,
                      SYNTHESIZED)
    b = BackdoorProbe(images[:1], torch.zeros(1, dtype=torch.long), torch.tensor([4]), False,
                      SYNTHESIZED)
    joined = concat_probes(a, b)
    assert len(joined) == 4 and joined.true_labels.tolist() == [1, 2, 3, 4]
    known = BackdoorProbe(images, torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3]), True,
                          KNOWN_TRIGGER)
    with pytest.raises(ONPInputError, match="same kind"):
        concat_probes(a, known)

"""SAU: its two loss terms by hand, the shared PGD's bound, and the defense end to end."""

from __future__ import annotations

import math

import torch

from onp.defenses import build_defense, sau
from onp.defenses.sau import SAUSettings, jensen_shannon, shared_perturbation, shared_risk

FAST = {"rounds": 2, "batch_size": 64}


def test_jensen_shannon_by_hand() -> None:
    p, q = [0.5, 0.5], [0.75, 0.25]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    expected = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m, strict=True)) + 0.5 * sum(
        b * math.log(b / c) for b, c in zip(q, m, strict=True))
    logits = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    other = torch.tensor([[math.log(3.0), 0.0], [1.0, -2.0]])
    got = jensen_shannon(logits, other)
    torch.testing.assert_close(got[0], torch.tensor(expected))
    assert float(got[1]) == 0.0  # identical outputs


def test_shared_risk_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]))
    classes = torch.tensor([1, 0, 1])  # the reference's adversarial classes
    fooled = torch.tensor([True, True, False])
    # image 0: p(c) = 0.8, p(not c) = 0.2; image 1: p(c) = 0.6, p(not c) = 0.4; image 2 ignored
    expected = (-(math.log(1e-6 + 0.2) + math.log(1e-6 + 0.4))
                - (math.log(1 + 1e-6 - 0.8) + math.log(1 + 1e-6 - 0.6))) / 2 / 3
    torch.testing.assert_close(shared_risk(logits, classes, fooled, 3),
                               torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert float(shared_risk(logits, classes, torch.zeros(3, dtype=torch.bool), 3)) == 0.0


def test_shared_perturbations_stay_in_the_bound(tiny_models, defense_set) -> None:
    model = tiny_models["plain_cnn"]
    images, labels = defense_set.images[:16], defense_set.labels[:16]
    settings = SAUSettings(norm_bound=0.1)
    delta = shared_perturbation(model, model, images, labels, settings)
    assert delta.shape == images.shape and float(delta.abs().max()) <= 0.1 + 1e-6


def test_runs_on_both_nets_and_uses_only_defense_data(tiny_model, defense_set, checks,
                                                      held_in_spy) -> None:
    seen = held_in_spy(sau)
    before = checks.state_of(tiny_model)
    result = build_defense("sau", FAST).repair(tiny_model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(tiny_model))
    checks.assert_repaired_shape(tiny_model, result.model)
    checks.assert_only_defense_data(seen, defense_set)
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(result.info["held_in_accuracy_by_round"]) == 2

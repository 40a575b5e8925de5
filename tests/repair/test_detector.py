"""The detector G: hand-checked decisions, N + 1 outputs, save and load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from onp.errors import ONPInputError
from onp.models.bundle import ModelSpec, make_classifier
from onp.repair.detector import (
    BackdoorDetector,
    choose_rule,
    decide,
    load_detector,
    save_detector,
)

SHAPE = (1, 4, 4)


def test_disagreement_gives_the_extra_class_and_agreement_gives_b_prime() -> None:
    original = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    repaired = torch.tensor([[5.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # agree on 0; B says 1, B' says 0 -> 3 (= N); agree on 2.
    assert decide(original, repaired).tolist() == [0, 3, 2]


def test_reject_rule_flags_only_when_b_prime_rejects_b_class() -> None:
    original = torch.tensor([[0.0, 9.0, 0.0], [0.0, 9.0, 0.0]])
    # Row 0: B' prefers class 0 but gives B's class 1 about 0.42: kept, answered with B''s 0.
    # Row 1: B' gives class 1 about 0.0025: flagged.
    repaired = torch.tensor([[0.3, 0.0, -5.0], [6.0, 0.0, 0.0]])
    assert decide(original, repaired, "reject", 0.1).tolist() == [0, 3]
    assert decide(original, repaired, "disagree").tolist() == [3, 3]


def test_target_rule_flags_only_disagreements_where_b_answers_a_suspected_target() -> None:
    original = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])
    repaired = torch.tensor([[0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])
    # Row 0: B says the target 0, B' says 1 -> flagged. Row 1: B says 1 (not a target), B' says 2
    # -> not flagged, answered with B's 1. Rows 2, 3: agreement.
    assert decide(original, repaired, "target", targets=[0]).tolist() == [3, 1, 2, 0]
    assert decide(original, repaired, "target", targets=[0, 1]).tolist() == [3, 3, 2, 0]
    assert decide(original, repaired, "disagree").tolist() == [3, 3, 2, 0]
    with pytest.raises(ONPInputError, match="suspected target"):
        decide(original, repaired, "target")


class _ByPixel(nn.Module):
    """Stub net: class = which of the first ``k`` pixels is brightest (hand-checkable)."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.order = order
        self.weight = nn.Parameter(torch.zeros(1))  # predict() needs a parameter for the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * x.flatten(1)[:, self.order] + self.weight


def _stub(order: list[int]):
    model = make_classifier(ModelSpec("plain_cnn", 3, SHAPE, arch_options={"width": 2}))
    model.net = _ByPixel(order)
    return model.eval()


def test_detector_module_has_n_plus_one_outputs_and_flags_disagreement() -> None:
    # B reads pixels (0, 1, 2) as classes 0..2; B' reads them as (0, 2, 1): they agree on
    # class 0 only.
    detector = BackdoorDetector(_stub([0, 1, 2]), _stub([0, 2, 1]))
    x = torch.zeros(3, *SHAPE)
    x[0, 0, 0, 0] = 1.0  # pixel 0: both say 0
    x[1, 0, 0, 1] = 1.0  # pixel 1: B says 1, B' says 2 -> flagged
    x[2, 0, 0, 2] = 1.0  # pixel 2: B says 2, B' says 1 -> flagged
    out = detector(x)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.sum(1), torch.ones(3))
    assert detector.predict(x).tolist() == [0, 3, 3]
    assert detector.num_classes == 3
    # Under "target" with target 1, the pixel-2 disagreement is clean and B answers it; the
    # probabilities are B's, so the argmax is G's class.
    targeted = BackdoorDetector(_stub([0, 1, 2]), _stub([0, 2, 1]), "target", targets=[1])
    assert targeted.predict(x).tolist() == [0, 3, 2]


def test_detector_saves_and_loads_with_the_same_decisions(tmp_path) -> None:
    torch.manual_seed(0)
    original = make_classifier(ModelSpec("plain_cnn", 5, SHAPE, arch_options={"width": 2}))
    repaired = make_classifier(ModelSpec("plain_cnn", 5, SHAPE, arch_options={"width": 2}))
    detector = BackdoorDetector(original.eval(), repaired.eval(), "reject", 0.2)
    save_detector(detector, tmp_path / "g")
    loaded = load_detector(tmp_path / "g")
    x = torch.rand(64, *SHAPE)
    assert torch.equal(loaded.predict(x), detector.predict(x))
    assert (loaded.rule, loaded.threshold) == ("reject", 0.2)
    save_detector(BackdoorDetector(original.eval(), repaired.eval(), "target", targets=[3]),
                  tmp_path / "t")
    targeted = load_detector(tmp_path / "t")
    assert (targeted.rule, targeted.targets) == ("target", (3,))
    spec = json.loads((tmp_path / "g" / "detector.json").read_text())
    assert spec["backdoor_class"] == spec["num_classes"] == 5


def test_bad_detectors_are_clear_errors(tmp_path) -> None:
    three = make_classifier(ModelSpec("plain_cnn", 3, SHAPE, arch_options={"width": 2}))
    four = make_classifier(ModelSpec("plain_cnn", 4, SHAPE, arch_options={"width": 2}))
    with pytest.raises(ONPInputError, match="agree on classes"):
        BackdoorDetector(three, four)
    with pytest.raises(ONPInputError, match="rule"):
        BackdoorDetector(three, three, rule="vote")
    with pytest.raises(ONPInputError, match="detector.json"):
        load_detector(tmp_path)


def test_choose_rule_takes_the_best_clean_accuracy_among_rules_that_catch_enough() -> None:
    scores = {("disagree", 1.0): {"clean_accuracy": 90.2, "flagged_or_true": 99.0},
              ("reject", 0.1): {"clean_accuracy": 91.9, "flagged_or_true": 97.7},
              ("reject", 0.2): {"clean_accuracy": 91.6, "flagged_or_true": 98.4},
              ("reject", 0.3): {"clean_accuracy": 91.4, "flagged_or_true": 98.7}}
    assert choose_rule(scores) == ("reject", 0.2)
    assert choose_rule(scores, min_flagged_or_true=99.0) == ("disagree", 1.0)
    # none reaches the bar: the one that catches most
    assert choose_rule(scores, min_flagged_or_true=99.5) == ("disagree", 1.0)
    unmeasured = {("reject", 0.1): {"clean_accuracy": None, "flagged_or_true": None},
                  ("reject", 0.2): {"clean_accuracy": 80.0, "flagged_or_true": 50.0}}
    assert choose_rule(unmeasured) == ("reject", 0.2)

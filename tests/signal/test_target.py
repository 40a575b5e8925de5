import copy

import pytest
import torch

from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.signal import (
    SignalConfig,
    UnlearnCheckpoint,
    anomaly_index,
    collapse_shares,
    identify_target,
)
from onp.signal.target import _estimate, _stop_reason


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unlearning_names_the_planted_target(toy_backdoor):
    estimate = identify_target(toy_backdoor.model, toy_backdoor.defense, toy_backdoor.config)
    assert estimate.targets == (toy_backdoor.target,)
    assert estimate.stop_reason == "dominance"
    assert estimate.significant
    assert estimate.shares[toy_backdoor.target] >= toy_backdoor.config.dominance_threshold
    assert estimate.margin > 0.2
    # The history starts at the untouched model, which still classifies right.
    assert estimate.history[0].step == 0 and estimate.history[0].accuracy > 0.95
    assert estimate.history[-1].step == estimate.decided_at == estimate.steps
    assert all(sum(c.counts) == 256 for c in estimate.history)
    assert estimate.to_json()["history"][0]["counts"] == list(estimate.history[0].counts)


def test_identify_target_leaves_the_callers_model_alone(toy_backdoor):
    model = toy_backdoor.model
    before = copy.deepcopy(model)
    model.train()
    identify_target(model, toy_backdoor.defense, toy_backdoor.config)
    assert model.training  # mode untouched too
    model.eval()
    assert _same_state(model, before)


def test_identify_target_is_reproducible(toy_backdoor):
    first = identify_target(toy_backdoor.model, toy_backdoor.defense, toy_backdoor.config, seed=3)
    second = identify_target(toy_backdoor.model, toy_backdoor.defense, toy_backdoor.config, seed=3)
    assert first == second


def test_collapse_shares_by_hand():
    # Class 0 gets 2 of the 3 images not labelled 0; class 1 gets 1 of 3; class 2 none of 2.
    predictions = torch.tensor([0, 0, 0, 1])
    labels = torch.tensor([0, 1, 2, 2])
    shares = collapse_shares(predictions, labels, 3)
    torch.testing.assert_close(shares, torch.tensor([2 / 3, 1 / 3, 0.0]))


def test_anomaly_index_by_hand():
    # median 0.1, |deviations| (0.8, 0, 0, 0.1, 0.1) -> MAD 0.1, scaled 0.14826.
    shares = torch.tensor([0.9, 0.1, 0.1, 0.0, 0.2])
    assert anomaly_index(shares) == pytest.approx(0.8 / 0.14826, rel=1e-4)
    # Identical shares: the spread floor keeps the index finite.
    assert anomaly_index(torch.full((4,), 0.25)) == 0.0


def test_a_single_class_is_rejected(toy_backdoor):
    defense = toy_backdoor.defense
    one_class = defense.subset(defense.labels == 2)
    with pytest.raises(ONPInputError, match="at least 2"):
        identify_target(toy_backdoor.model, one_class)


def test_too_few_images_are_rejected(toy_backdoor):
    with pytest.raises(ONPInputError, match="at least 16 images"):
        identify_target(toy_backdoor.model, toy_backdoor.defense.subset(torch.arange(8)))


def test_a_model_with_other_classes_is_rejected(toy_backdoor, constant_model):
    with pytest.raises(ONPInputError, match="logits of shape"):
        identify_target(constant_model(7, 0), toy_backdoor.defense)


def test_a_constant_model_is_named_at_once(toy_set_factory, constant_model):
    defense: ImageSet = toy_set_factory(64, 0)
    estimate = identify_target(constant_model(4, 3), defense)
    assert estimate.targets == (3,)
    assert estimate.steps == 0 and estimate.shares == (0.0, 0.0, 0.0, 1.0)


def _checkpoint(step: int, shares: tuple[float, ...]) -> UnlearnCheckpoint:
    return UnlearnCheckpoint(step, 0.5, (0,) * len(shares), shares)


def test_dominance_needs_the_share_and_the_lead():
    assert _checkpoint(1, (0.35, 0.2, 0.0)).dominated(0.3, 0.1)
    assert not _checkpoint(1, (0.35, 0.3, 0.0)).dominated(0.3, 0.1)  # a tie is no decision
    assert not _checkpoint(1, (0.25, 0.0, 0.0)).dominated(0.3, 0.1)
    assert _checkpoint(1, (0.1, 0.5, 0.45)).margin == pytest.approx(0.05)


def test_without_dominance_the_clearest_lead_decides():
    # Class 0 leads early; class 2 catches up later and tops it (the Blended pattern).
    history = [_checkpoint(0, (0.02, 0.02, 0.02)), _checkpoint(2, (0.25, 0.01, 0.03)),
               _checkpoint(4, (0.40, 0.01, 0.45))]
    estimate = _estimate(history, "accuracy-floor", 4, SignalConfig())
    assert estimate.targets == (0,) and estimate.decided_at == 2
    assert estimate.margin == pytest.approx(0.22) and not estimate.significant


def _counted(step: int, counts: tuple[int, ...], shares: tuple[float, ...]) -> UnlearnCheckpoint:
    return UnlearnCheckpoint(step, 0.8, counts, shares)


def test_a_class_that_vanishes_before_any_collapse_is_the_clean_label_target():
    # The SIG pattern: class 0 loses its images to a look-alike (class 2) before anyone collapses.
    config = SignalConfig()
    history = [_counted(0, (20, 40, 40), (0.02, 0.02, 0.02)),
               _counted(2, (10, 40, 50), (0.02, 0.02, 0.05)),
               _counted(4, (0, 40, 60), (0.0, 0.02, 0.10))]
    assert history[2].vanished(history[0], config.vanish_fraction) == (0,)
    assert _stop_reason(history[:2], config) is None
    assert _stop_reason(history, config) == "vanished"
    estimate = _estimate(history, "vanished", 4, config)
    assert estimate.targets == (0,) and estimate.significant and estimate.decided_at == 4


def test_a_class_lost_in_a_collapse_is_not_named():
    # Class 2 vanishes, but class 0 already holds more than vanish_max_share: a collapse in
    # progress, whose victims must not be taken for a clean-label target.
    config = SignalConfig()
    history = [_counted(0, (40, 40, 40), (0.02, 0.02, 0.02)),
               _counted(2, (80, 40, 0), (0.25, 0.02, 0.0))]
    assert history[1].vanished(history[0], config.vanish_fraction) == (2,)
    assert _stop_reason(history, config) is None
    # Dominance wins over a vanished class at the same checkpoint.
    collapsed = history + [_counted(4, (120, 0, 0), (0.9, 0.0, 0.0))]
    assert _stop_reason(collapsed, config) == "dominance"
    # With the rule off, a vanished class never decides.
    off = SignalConfig(vanish_max_share=0.0)
    quiet = [_counted(0, (20, 40, 40), (0.02,) * 3), _counted(2, (0, 40, 60), (0.0, 0.0, 0.0))]
    assert _stop_reason(quiet, off) is None


def test_a_class_the_model_rarely_predicted_cannot_vanish():
    # 0 and 9 predictions are too few to vanish from (many classes, few histogram images).
    initial = _counted(0, (0, 9, 51), (0.0, 0.0, 0.5))
    assert _counted(2, (0, 0, 60), (0.0, 0.0, 0.5)).vanished(initial, 0.02) == ()

"""The reach test that arbitrates between the unlearning's candidate targets."""

from __future__ import annotations

import torch
from torch import nn

from onp.data.types import DatasetMeta, ImageSet
from onp.signal import SignalConfig
from onp.signal.candidates import arbitrate_target, candidate_targets, contested, reach_of
from onp.signal.target import UnlearnCheckpoint, _estimate

SIDE = 12
BAR = 5  # the column every image lights
WARPED = 6  # the column one pixel to the right: the backdoor class watches it
FAR = 1  # a column no small trigger can light: the decoy class watches it


def _counted(step: int, counts: tuple[int, ...], shares: tuple[float, ...],
             accuracy: float = 0.8) -> UnlearnCheckpoint:
    return UnlearnCheckpoint(step, accuracy, counts, shares)


def test_a_vanished_contest_puts_the_first_to_vanish_against_the_named_class():
    # The SIG seed-2 pattern: class 0 vanishes while class 2 already holds 0.2 (above the
    # vanished rule's guard); class 2 then dominates and is named: a contested verdict.
    config = SignalConfig()
    history = [_counted(0, (20, 40, 40, 40), (0.02, 0.02, 0.02, 0.02)),
               _counted(2, (0, 30, 70, 20), (0.0, 0.02, 0.2, 0.05)),
               _counted(4, (0, 10, 110, 0), (0.0, 0.01, 0.6, 0.0))]
    estimate = _estimate(history, "dominance", 4, config)
    assert estimate.targets == (2,)
    assert contested(estimate, config) == "a class vanished before the decision"
    # Class 3 vanishes only at the deciding checkpoint, after class 0, and the runner-up 1 was
    # named by no rule: both left out.
    assert candidate_targets(estimate, config) == (2, 0)


def test_a_victim_that_vanishes_into_the_named_class_is_its_only_rival():
    # The Blended seed-2 pattern: class 0 collapses, class 3's images go to it and class 3
    # vanishes a checkpoint before 0 dominates; class 2 is the runner-up at the decision.
    config = SignalConfig()
    history = [_counted(0, (40, 40, 40, 40), (0.02, 0.02, 0.02, 0.02)),
               _counted(2, (70, 40, 50, 0), (0.2, 0.02, 0.1, 0.0)),
               _counted(4, (110, 20, 30, 0), (0.6, 0.0, 0.12, 0.0), accuracy=0.6)]
    estimate = _estimate(history, "dominance", 4, config)
    assert estimate.targets == (0,)
    assert contested(estimate, config) == "a class vanished before the decision"
    assert candidate_targets(estimate, config) == (0, 3)
    # Without the vanished class the verdict is uncontested; measured on request, the
    # candidates are the named class and the runner-up.
    history[1] = _counted(2, (70, 40, 50, 20), (0.2, 0.02, 0.1, 0.0))
    history[2] = _counted(4, (110, 20, 30, 20), (0.6, 0.0, 0.12, 0.0), accuracy=0.6)
    estimate = _estimate(history, "dominance", 4, config)
    assert contested(estimate, config) is None
    assert candidate_targets(estimate, config) == (0, 2)


def test_a_clean_collapse_is_not_contested_and_fits_nothing():
    config = SignalConfig()
    history = [_counted(0, (40, 40, 40, 40), (0.02, 0.02, 0.02, 0.02)),
               _counted(2, (100, 30, 20, 10), (0.5, 0.02, 0.02, 0.02), accuracy=0.6)]
    estimate = _estimate(history, "dominance", 2, config)
    assert contested(estimate, config) is None
    # An uncontested verdict returns before any fitting (the model is never called).
    assert arbitrate_target(None, None, None, estimate, config) == (0, [])
    late = [history[0], _counted(2, (100, 30, 20, 10), (0.5, 0.02, 0.02, 0.02), accuracy=0.3)]
    assert contested(_estimate(late, "dominance", 2, config), config) == (
        "decided at the accuracy floor")  # 0.3 <= 1/4 + 0.1


def _images(n: int) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, SIDE, SIDE, generator=generator) * 0.1
    images[:, :, :, BAR] = 0.9
    meta = DatasetMeta("bars", ("bar", "warped", "far"), (1, SIDE, SIDE))
    return ImageSet(images, torch.zeros(n, dtype=torch.long), meta)


def _warp_backdoored_model() -> nn.Module:
    """Class 0 sums the lit column; class 1 the column next to it, with a larger weight (a warp
    of under a pixel is its backdoor); class 2 a far column (nothing small reaches it)."""
    linear = nn.Linear(SIDE * SIDE, 3, bias=False)
    weights = torch.zeros(3, 1, SIDE, SIDE)
    weights[0, :, :, BAR], weights[1, :, :, WARPED], weights[2, :, :, FAR] = 1.0, 1.6, 1.0
    with torch.no_grad():
        linear.weight.copy_(weights.flatten(1))
    return nn.Sequential(nn.Flatten(), linear)


def _decoy_named(accuracy: float, config: SignalConfig):
    """Unlearning names the decoy (class 2), with the backdoor class as runner-up, at the
    deciding checkpoint's clean ``accuracy``."""
    history = [_counted(0, (64, 0, 0), (1.0, 0.0, 0.0)),
               _counted(2, (10, 14, 40), (0.16, 0.22, 0.62), accuracy=accuracy)]
    return _estimate(history, "dominance", 2, config)


def test_the_backdoor_class_is_reached_and_wins_over_the_named_decoy():
    model, fit, held_in = _warp_backdoored_model(), _images(64), _images(32)
    config = SignalConfig()
    # Named at a clean accuracy below the floor (1/3 + 0.1): a contested verdict.
    estimate = _decoy_named(0.15, config)
    assert estimate.target == 2
    backdoor = reach_of(model, fit, held_in, 1, steps=60)
    decoy = reach_of(model, fit, held_in, 2, steps=60)
    assert backdoor.warp > 0.9 and backdoor.reach == backdoor.warp
    assert decoy.reach == 0.0
    target, reaches = arbitrate_target(model, fit, held_in, estimate, config)
    assert target == 1
    assert [r.target for r in reaches] == [2, 1]


def test_an_uncontested_verdict_is_measured_on_request_and_still_stands():
    model, fit, held_in = _warp_backdoored_model(), _images(64), _images(32)
    config = SignalConfig()
    # The decoy is named at a healthy accuracy, nothing vanished: uncontested. Asked to measure
    # anyway, the reach test reads both candidates, and the backdoor class reaches further, but
    # the verdict is not overturned.
    estimate = _decoy_named(0.7, config)
    assert contested(estimate, config) is None
    target, reaches = arbitrate_target(model, fit, held_in, estimate, config,
                                       measure_uncontested=True)
    assert target == 2
    assert [r.target for r in reaches] == [2, 1]
    assert reaches[1].reach > reaches[0].reach


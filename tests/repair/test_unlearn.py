"""Trigger unlearning: the universal perturbation, the stamps and their use in the rounds."""

from __future__ import annotations

import copy

import pytest
import torch

from onp.attacks import AttackConfig, build_attack
from onp.errors import ONPInputError
from onp.eval.metrics import predict
from onp.graph.mask import full_mask
from onp.repair.sparse import SparseConfig, prune_and_regrow, round_training_set
from onp.repair.unlearn import KnownTriggerStamp, SuspectedTriggers
from onp.signal.fitted import FIT_BATCH_SIZE, UniversalTrigger, fit_universal
from onp.signal.perturbation import stamp_perturbation, universal_perturbation
from onp.signal.probe import SYNTHESIZED, BackdoorProbe
from onp.signal.warp import stamp_warp
from onp.training import TrainSettings, train_classifier

from .test_sparse import SHAPE, _model, _probe, _toy


def _corner(images: torch.Tensor) -> torch.Tensor:
    stamped = images.clone()
    stamped[:, :, -2:, -2:] = 1.0
    return stamped


def test_the_perturbation_stays_in_its_bound_and_reaches_the_target() -> None:
    model, _ = _model()
    data = _toy(128, 0)
    train_classifier(model, data.images, data.labels, TrainSettings(epochs=8, batch_size=32))
    images, target = data.images[data.labels != 0], 0
    before = copy.deepcopy(model.state_dict())
    start = float((predict(model, images) == target).float().mean())
    delta = universal_perturbation(model, images, target, eps=0.3, steps=60, batch_size=32)
    assert delta.shape == (1, *SHAPE) and float(delta.abs().max()) <= 0.3 + 1e-6
    reached = float((predict(model, stamp_perturbation(images, delta)) == target).float().mean())
    assert start < 0.3 and reached > start + 0.3, (start, reached)
    for key, value in model.state_dict().items():  # the model is not touched
        torch.testing.assert_close(value, before[key])
    with pytest.raises(ONPInputError, match="eps"):
        universal_perturbation(model, images, target, eps=0.0)


def test_a_round_adds_stamped_copies_with_their_true_labels() -> None:
    fit = _toy(40, 1)
    images, labels, augmentable, originals = round_training_set(fit, _corner, 0.25, seed=3)
    assert images.shape == (50, *SHAPE) and labels.shape == (50,)
    assert torch.equal(images[:40], fit.images) and augmentable[:40].all()
    assert not augmentable[40:].any() and (images[40:, :, -2:, -2:] == 1.0).all()
    assert torch.equal(originals[:40], fit.images)
    assert torch.equal(_corner(originals[40:]), images[40:])  # each copy's own clean original
    unstamped = fit.images[:, :, :-2, :-2]  # the part of each image the corner leaves alone
    for image, label in zip(images[40:], labels[40:], strict=True):  # a copy keeps its label
        match = torch.nonzero((unstamped == image[:, :-2, :-2]).flatten(1).all(1)).flatten()
        assert match.numel() == 1 and int(fit.labels[match]) == int(label)
    same, _, _, same_originals = round_training_set(fit, None, 0.25, seed=3)
    assert torch.equal(same, fit.images)  # no stamp, no unlearning
    assert torch.equal(same_originals, fit.images)


def _additive(delta: torch.Tensor, bound: float = 0.2) -> UniversalTrigger:
    return UniversalTrigger("perturbation", bound, delta)


def test_suspected_triggers_stamp_both_halves_and_follow_the_model() -> None:
    model, _ = _model()
    images = _toy(32, 0).images
    delta = torch.full((1, *SHAPE), 0.05)
    stamp = SuspectedTriggers(_corner, [_additive(delta)], 1, images, refresh_steps=5)
    stamped = stamp(images[:6])
    assert (stamped[:3, :, -2:, -2:] == 1.0).all()  # the patch on the first half
    torch.testing.assert_close(stamped[3:], (images[3:6] + 0.05).clamp(0, 1))
    stamp.refresh(model)
    refreshed = stamp.universal[0].params
    assert not torch.equal(refreshed, delta)
    assert float(refreshed.abs().max()) <= 0.2 + 1e-6 and stamp.refreshes == 1
    held = _toy(8, 3)
    others = torch.tensor([0, 2, 3])  # held-in images of classes other than the target 1
    with_probe = SuspectedTriggers(None, [_additive(delta)], 1, images,
                                   base_probe=_probe(held), probe_images=held.images[others],
                                   probe_labels=held.labels[others])
    joined = with_probe.probe()
    assert joined is not None and len(joined) == len(_probe(held)) + 3
    torch.testing.assert_close(joined.images[-3:], (held.images[others] + 0.05).clamp(0, 1))
    assert (joined.target_labels[-3:] == 1).all()
    fixed = SuspectedTriggers(None, [_additive(delta)], 1, images, refresh_steps=0)
    fixed.refresh(model)
    assert torch.equal(fixed.universal[0].params, delta) and fixed.probe() is None
    with pytest.raises(ValueError, match="patch"):
        SuspectedTriggers(None, [], 1, images)


def test_a_patch_a_perturbation_and_a_warp_share_a_batch_in_thirds() -> None:
    model, _ = _model()
    images, toy = _toy(32, 0).images, _toy(8, 3)
    held = toy.subset(toy.labels != 1)  # held-in images of classes other than the target 1
    delta = torch.full((1, *SHAPE), 0.05)
    control = torch.full((1, 2, 4, 4), 0.4)  # every pixel moved by 0.4 px right and down
    warp = UniversalTrigger("warp", 0.5, control)
    stamp = SuspectedTriggers(_corner, [_additive(delta), warp], 1, images, refresh_steps=4,
                              base_probe=_probe(toy), probe_images=held.images,
                              probe_labels=held.labels)
    stamped = stamp(images[:6])
    torch.testing.assert_close(stamped[:2], _corner(images[:2]))
    torch.testing.assert_close(stamped[2:4], (images[2:4] + 0.05).clamp(0, 1))
    torch.testing.assert_close(stamped[4:], stamp_warp(images[4:6], control))
    assert not torch.allclose(stamped[4:], images[4:6])
    probe = stamp.probe()  # the patch probe, then the held-in images with each trigger
    assert probe is not None and len(probe) == len(_probe(toy)) + 2 * len(held)
    torch.testing.assert_close(probe.images[-len(held):], stamp_warp(held.images, control))
    stamp.refresh(model)
    assert [t.kind for t in stamp.universal] == ["perturbation", "warp"]
    assert float(stamp.universal[1].params.abs().max()) <= 0.5 + 1e-6
    assert not torch.equal(stamp.universal[1].params, control)
    assert stamp.describe()["universal"] == [{"kind": "perturbation", "bound": 0.2},
                                             {"kind": "warp", "bound": 0.5}]
    with pytest.raises(ValueError, match="kind"):
        fit_universal("rotation", model, images, 1, 0.5, 1)


def test_every_universal_fit_reads_the_batch_size_it_is_given() -> None:
    model, _ = _model()
    sizes: list[int] = []  # the hook's closure survives the fits' deep copy of the model
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    images = _toy(32, 0).images
    fit_universal("warp", model, images, 1, 0.5, 3, batch_size=7)
    assert sizes == [7, 7, 7]
    sizes.clear()
    toy = _toy(8, 3)
    held = toy.subset(toy.labels != 1)
    stamp = SuspectedTriggers(None, [_additive(torch.zeros(1, *SHAPE))], 1, images,
                              refresh_steps=2, probe_images=held.images,
                              probe_labels=held.labels, batch_size=5)
    stamp.refresh(model)
    stamp.fresh_probe(model, steps=4)
    assert sizes == [5] * 6 and stamp.describe()["batch_size"] == 5
    sizes.clear()
    SuspectedTriggers(None, [_additive(torch.zeros(1, *SHAPE))], 1, images,
                      refresh_steps=1).refresh(model)
    assert sizes == [FIT_BATCH_SIZE]  # the default


def test_a_known_trigger_stamp_puts_the_real_trigger_on() -> None:
    attack = build_attack(AttackConfig("badnets", target=0), SHAPE)
    images = _toy(8, 0).images
    ids = torch.zeros(8, dtype=torch.long)
    assert torch.equal(KnownTriggerStamp(attack)(images), attack.apply(images, ids))
    assert KnownTriggerStamp(attack).describe()["known_trigger"] is True


class _CountingStamp:
    """A corner patch that counts refreshes and stamped images in ``counts``, which its copies
    share; scores rounds with ``current`` if given."""

    def __init__(self, current: BackdoorProbe | None = None,
                 counts: dict[str, int] | None = None) -> None:
        self.counts = counts if counts is not None else {"refreshes": 0, "stamped": 0}
        self.current = current
        self.copies = 0

    def __deepcopy__(self, memo: dict) -> _CountingStamp:
        self.copies += 1
        return _CountingStamp(self.current, self.counts)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.counts["stamped"] += len(images)
        return _corner(images)

    def refresh(self, model: torch.nn.Module) -> None:
        self.counts["refreshes"] += 1

    def probe(self) -> BackdoorProbe | None:
        return self.current


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_the_rounds_refresh_and_stamp_only_when_unlearning(fraction: float) -> None:
    model, groups = _model()
    fit, held = _toy(64, 1), _toy(32, 2)
    stamp = _CountingStamp()
    config = SparseConfig(sparsity=0.25, rounds=3, batch_size=32, unlearn_fraction=fraction)
    prune_and_regrow(model, groups, fit, held, _probe(held), full_mask(groups), config,
                     stamp=stamp)
    assert stamp.counts == {"refreshes": 3 if fraction else 0,
                            "stamped": 3 * 32 if fraction else 0}
    assert stamp.copies == 1  # the rounds use a copy: the stamp given stays as it was


def test_rounds_are_scored_with_the_stamps_current_probe() -> None:
    model, groups = _model()
    fit, held = _toy(64, 1), _toy(32, 2)
    fixed = _probe(held)
    current = BackdoorProbe(held.images[:8], torch.ones(8, dtype=torch.long),
                            torch.full((8,), 2, dtype=torch.long), False, SYNTHESIZED)
    config = SparseConfig(sparsity=0.25, rounds=2, batch_size=32, unlearn_fraction=0.5)
    for stamp_probe, expected in ((current, current), (None, fixed)):
        result = prune_and_regrow(model, groups, fit, held, fixed, full_mask(groups), config,
                                  stamp=_CountingStamp(stamp_probe))
        kept = result.rounds[result.best_round]  # result.model is that round, mask baked in
        assert kept.proxy_asr == expected.asr_of(predict(result.model, expected.images))


def test_the_rounds_leave_the_suspected_triggers_given_as_they_were() -> None:
    model, groups = _model()
    fit, held = _toy(64, 1), _toy(32, 2)
    delta = torch.full((1, *SHAPE), 0.05)
    stamp = SuspectedTriggers(_corner, [_additive(delta.clone())], 1, fit.images,
                              refresh_steps=3)
    config = SparseConfig(sparsity=0.25, rounds=2, batch_size=32, unlearn_fraction=0.5)
    prune_and_regrow(model, groups, fit, held, _probe(held), full_mask(groups), config,
                     stamp=stamp)
    assert stamp.refreshes == 0 and torch.equal(stamp.universal[0].params, delta)


def test_a_fresh_probe_fits_a_new_perturbation_and_leaves_the_stamp_alone() -> None:
    model, _ = _model()
    data = _toy(128, 0)
    train_classifier(model, data.images, data.labels, TrainSettings(epochs=8, batch_size=32))
    images = data.images[data.labels != 1]
    held = _toy(16, 3)
    others = held.labels != 1
    delta = torch.zeros(1, *SHAPE)
    stamp = SuspectedTriggers(None, [_additive(delta.clone(), 0.3)], 1, images,
                              base_probe=_probe(held), probe_images=held.images[others],
                              probe_labels=held.labels[others])
    fresh = stamp.fresh_probe(model, steps=40)
    assert fresh is not None and len(fresh) == len(_probe(held)) + int(others.sum())
    added = fresh.images[len(_probe(held)):] - held.images[others]
    assert float(added.abs().max()) > 0.0  # a perturbation fitted to the model, not the zero one
    assert float(added.abs().max()) <= 0.3 + 1e-6
    assert torch.equal(stamp.universal[0].params, delta) and stamp.refreshes == 0
    assert fresh.asr_of(predict(model, fresh.images)) >= stamp.probe().asr_of(
        predict(model, stamp.probe().images))


def test_the_rounds_train_on_the_stamped_copies_as_non_clean_rows(monkeypatch) -> None:
    import onp.repair.sparse as sparse

    seen: list[int] = []

    def recording(model, images, labels, settings, augment_mask=None, **kwargs):
        seen.append(int((~augment_mask).sum()))
        return train_classifier(model, images, labels, settings, augment_mask=augment_mask,
                                **kwargs)

    monkeypatch.setattr(sparse, "train_classifier", recording)
    model, groups = _model()
    fit, held = _toy(64, 1), _toy(32, 2)
    config = SparseConfig(sparsity=0.25, rounds=2, batch_size=32, unlearn_fraction=0.5)
    prune_and_regrow(model, groups, fit, held, _probe(held), full_mask(groups), config,
                     stamp=_CountingStamp())
    assert seen == [32, 32]  # the 32 stamped copies are the non-clean rows

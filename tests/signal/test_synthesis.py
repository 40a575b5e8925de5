import copy

import pytest
import torch

from onp.errors import ONPInputError
from onp.eval.metrics import predict
from onp.signal import SignalConfig, SynthesizedTrigger, synthesize_trigger
from onp.signal.synthesis import _LambdaSchedule


@pytest.fixture(scope="module")
def toy_trigger(toy_backdoor, single_thread) -> SynthesizedTrigger:
    with single_thread():
        return synthesize_trigger(toy_backdoor.model, toy_backdoor.defense, toy_backdoor.target,
                                  toy_backdoor.config, seed=0)


def test_synthesized_trigger_flips_unseen_images_to_the_target(toy_backdoor, toy_trigger):
    test = toy_backdoor.test
    others = test.images[test.labels != toy_backdoor.target]
    predictions = predict(toy_backdoor.model, toy_trigger.apply(others))
    assert float((predictions == toy_backdoor.target).float().mean()) > 0.8
    assert toy_trigger.success_rate > 0.8
    # Small: a few pixels of the 144, as the planted 2x2 patch.
    assert toy_trigger.mask_l1 < 15


def test_apply_blends_mask_and_pattern_by_hand():
    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 0] = 1.0
    mask[0, 1, 1] = 0.5
    trigger = SynthesizedTrigger(mask, torch.ones(3, 2, 2), target=1, steps=0, success_rate=0.0)
    images = torch.zeros(2, 3, 2, 2)
    out = trigger.apply(images)
    expected = torch.zeros(2, 3, 2, 2)
    expected[:, :, 0, 0], expected[:, :, 1, 1] = 1.0, 0.5
    torch.testing.assert_close(out, expected)
    assert torch.equal(images, torch.zeros(2, 3, 2, 2))  # input untouched
    assert trigger.mask_l1 == pytest.approx(1.5)
    with pytest.raises(ONPInputError, match="expected images"):
        trigger.apply(torch.zeros(2, 1, 2, 2))


def test_save_and_load_round_trip(tmp_path, toy_trigger):
    directory = toy_trigger.save(tmp_path / "trigger")
    loaded = SynthesizedTrigger.load(directory)
    assert torch.equal(loaded.mask, toy_trigger.mask)
    assert torch.equal(loaded.pattern, toy_trigger.pattern)
    assert loaded.describe() == toy_trigger.describe()
    assert not list(tmp_path.glob(".trigger.*"))  # no temporary left behind


def test_load_reports_a_missing_file(tmp_path, toy_trigger):
    directory = toy_trigger.save(tmp_path / "trigger")
    (directory / "trigger.json").unlink()
    with pytest.raises(ONPInputError, match="trigger.json is missing"):
        SynthesizedTrigger.load(directory)


def test_synthesis_leaves_the_callers_model_alone(toy_backdoor):
    model = toy_backdoor.model
    before = copy.deepcopy(model.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    config = SignalConfig(trigger_steps=3, trigger_batch_size=16)
    synthesize_trigger(model, toy_backdoor.defense, 0, config)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    for p, grad in zip(model.parameters(), grads, strict=True):  # no gradient leaked into it
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)


def test_bad_target_is_rejected(toy_backdoor):
    with pytest.raises(ONPInputError, match="not a class"):
        synthesize_trigger(toy_backdoor.model, toy_backdoor.defense, 4)


def test_lambda_schedule_follows_neural_cleanse():
    schedule = _LambdaSchedule(init=1e-3, patience=2)
    schedule.update(True)
    assert schedule.value == 0.0  # one success is not yet `patience` of them
    schedule.update(True)
    assert schedule.value == 1e-3  # set once the trigger works
    schedule.update(True)
    schedule.update(True)
    assert schedule.value == pytest.approx(1.5e-3)  # raised while it keeps working
    schedule.update(False)
    schedule.update(False)
    assert schedule.value == pytest.approx(1.5e-3 / 1.5**1.5)  # lowered while it fails


def test_load_reports_malformed_json(tmp_path, toy_trigger):
    directory = toy_trigger.save(tmp_path / "trigger")
    (directory / "trigger.json").write_text("{not json")
    with pytest.raises(ONPInputError, match="malformed saved trigger"):
        SynthesizedTrigger.load(directory)

import pytest
import torch

from onp.eval.metrics import accuracy_of, predict
from onp.models.bundle import ModelSpec, make_classifier
from onp.training import TrainSettings, distillation_loss, train_classifier


def _toy_data(n: int = 256):
    """Class = which quadrant holds the bright square: learnable in a few steps."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.rand(n, 1, 8, 8, generator=generator) * 0.2
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 0.8
    return images, labels


def _model():
    torch.manual_seed(0)
    return make_classifier(ModelSpec("plain_cnn", 4, (1, 8, 8), arch_options={"width": 4}))


def test_training_learns_a_separable_task_and_loss_falls():
    images, labels = _toy_data()
    model = _model()
    losses = train_classifier(
        model, images, labels, TrainSettings(epochs=10, batch_size=32, lr=0.05)
    )
    assert losses[-1] < losses[0]
    assert accuracy_of(predict(model, images), labels) > 0.9


def test_training_is_reproducible_for_a_seed():
    images, labels = _toy_data(64)
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.05, augment=True)
    first, second = _model(), _model()
    train_classifier(first, images, labels, settings, seed=3)
    train_classifier(second, images, labels, settings, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    torch.manual_seed(0)
    images, labels = torch.rand(64, 1, 6, 6), torch.randint(0, 3, (64,))

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))

    teacher, student, plain = net(), net(), net()
    plain.load_state_dict(student.state_dict())
    for model, weight in ((student, 1.0), (plain, 0.0)):
        settings = TrainSettings(epochs=20, batch_size=16, lr=0.05, schedule="constant",
                                 distill_weight=weight)
        train_classifier(model, images, labels, settings, teacher=teacher)
    with torch.no_grad():
        target = teacher(images).softmax(1)
        gap = {name: float((m(images).softmax(1) - target).abs().mean())
               for name, m in (("student", student), ("plain", plain))}
    assert gap["student"] < 0.5 * gap["plain"]
    assert float(distillation_loss(target.log(), target.log(), 2.0)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        train_classifier(net(), images, labels, TrainSettings(distill_weight=0.5))


import pytest
import torch

from onp.eval.metrics import accuracy_of, predict
from onp.models.bundle import ModelSpec, make_classifier
from onp.training import (
    TrainSettings,
    batch_loss,
    distillation_loss,
    train_classifier,
)


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
    assert float(distillation_loss(target.log(), target.log(), 2.0).mean()) == pytest.approx(
        0, abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        train_classifier(net(), images, labels, TrainSettings(distill_weight=0.5))


def test_stamped_distillation_replaces_the_stamped_rows_labels_with_the_teacher() -> None:
    """With weight 1 a stamped row's label is never read: it learns the teacher's output on its
    clean original. With weight 0 the labels drive training as usual."""
    images, labels = _toy_data(96)
    stamped = images.clone()
    stamped[:, :, :2, :2] = 1.0  # a corner trigger on every copy
    inputs = torch.cat([images, stamped])
    originals = torch.cat([images, images])
    clean = torch.arange(192) < 96
    teacher = _model()
    train_classifier(teacher, images, labels, TrainSettings(epochs=6, batch_size=32, lr=0.05))

    def trained(weight: float, stamped_labels: torch.Tensor) -> torch.nn.Module:
        model = _model()
        settings = TrainSettings(epochs=3, batch_size=32, lr=0.05, schedule="constant",
                                 stamped_distill_weight=weight)
        train_classifier(model, inputs, torch.cat([labels, stamped_labels]), settings,
                         augment_mask=clean, teacher=teacher, teacher_images=originals)
        return model

    first, second = torch.zeros(96, dtype=torch.long), torch.full((96,), 3)
    soft_a, soft_b = trained(1.0, first), trained(1.0, second)
    for p, q in zip(soft_a.parameters(), soft_b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    hard_a, hard_b = trained(0.0, first), trained(0.0, second)
    assert not all(torch.allclose(p, q) for p, q in
                   zip(hard_a.parameters(), hard_b.parameters(), strict=True))
    # what the teacher says of the originals, the soft student says of the stamped copies
    said = predict(teacher, images)
    assert accuracy_of(predict(soft_a, stamped), said) > accuracy_of(predict(hard_a, stamped),
                                                                     said)
    rows = distillation_loss(torch.randn(5, 4), torch.randn(5, 4), 2.0)
    assert rows.shape == (5,) and bool((rows >= 0).all())
    with pytest.raises(ValueError, match="teacher image"):
        train_classifier(_model(), inputs, torch.cat([labels, first]),
                         TrainSettings(stamped_distill_weight=0.5), augment_mask=clean,
                         teacher=teacher)


def test_batch_loss_mixes_each_weight_into_its_own_rows_only() -> None:
    """Worked by hand on two rows: a clean one and a stamped one. Full distillation of the
    clean rows (a = 1) leaves the stamped row's loss, the trigger unlearning, in place."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    clean = torch.tensor([True, False])
    clean_soft, stamped_soft = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits.detach(), labels, reduction="none")
    kd_clean = distillation_loss(logits.detach()[:1], clean_soft, 2.0)[0]
    kd_stamped = distillation_loss(logits.detach()[1:], stamped_soft, 2.0)[0]

    def loss(a: float, b: float) -> float:
        settings = TrainSettings(distill_weight=a, stamped_distill_weight=b)
        return float(batch_loss(logits, labels, clean, settings, clean_soft, stamped_soft).detach())

    assert loss(0.0, 0.0) == pytest.approx(float(ce.mean()))
    assert loss(1.0, 0.0) == pytest.approx(float(kd_clean + ce[1]) / 2)
    assert loss(0.25, 1.0) == pytest.approx(float(0.75 * ce[0] + 0.25 * kd_clean + kd_stamped)
                                            / 2)
    # the stamped row still gets a gradient when the clean rows are fully distilled
    settings = TrainSettings(distill_weight=1.0)
    batch_loss(logits, labels, clean, settings, clean_soft).backward()
    assert logits.grad is not None and float(logits.grad[1].abs().sum()) > 0
    with pytest.raises(ValueError, match="teacher"):
        batch_loss(logits, labels, clean, settings)

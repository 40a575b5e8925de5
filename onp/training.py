"""The one supervised training loop ONP uses (attacks now; fine-tuning defenses later)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SCHEDULES = ("one-cycle", "constant")
"""Learning-rate schedules :class:`TrainSettings` accepts."""


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and schedule for :func:`train_classifier`.

    Attributes:
        epochs: Passes over the data.
        batch_size: Images per step.
        lr: Peak learning rate of SGD with Nesterov momentum and a one-cycle schedule
            (Smith 2018), which trains our small nets to high accuracy in few epochs.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        augment: Random horizontal flips and 2-pixel shifts of the clean (non-trigger) images.
        schedule: ``"one-cycle"`` (default) or ``"constant"``: ``lr`` throughout, as the
            fine-tuning defenses use it (e.g. Liu et al. 2018 fine-tune at a fixed small rate).
        distill_weight: Weight ``a`` of knowledge distillation from a teacher (Hinton et al.
            2015) on the augmentable (clean) images: each one's loss is ``(1 - a) * CE + a *
            T^2 * KL(teacher(x) || model(x))`` at temperature ``T``; ``0`` (default) is plain
            cross-entropy. The batch's loss is the mean of its images' losses
            (:func:`batch_loss`).
        distill_temperature: ``T``.
        stamped_distill_weight: Weight ``b`` of distillation on the other (stamped) images:
            each one's loss is ``(1 - b) * CE + b * T^2 *
            KL(teacher(original) || model(stamped))``, the teacher reading each one's clean
            original (``teacher_images`` of :func:`train_classifier`). A stamped copy then
            learns what the teacher says of the clean image, soft, instead of the hard true
            label (the consistency target of TRADES, Zhang et al. 2019); ``0`` (default) is
            plain cross-entropy.
    """

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False
    schedule: str = "one-cycle"
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    stamped_distill_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainSettings.schedule: expected one of {SCHEDULES}, found "
                             f"{self.schedule!r}")
        if (not 0.0 <= self.distill_weight <= 1.0 or not 0.0 <= self.stamped_distill_weight
                <= 1.0 or self.distill_temperature <= 0):
            raise ValueError(f"TrainSettings: distill_weight and stamped_distill_weight must "
                             f"lie in [0, 1] and distill_temperature be positive, found "
                             f"{self.distill_weight}, {self.stamped_distill_weight}, "
                             f"{self.distill_temperature}")


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(logits / T))`` of each row.

    Shapes:
        logits, teacher_logits: ``[B, K]``; returns ``[B]``.
    """
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1) * temperature**2


def batch_loss(
    logits: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor, settings: TrainSettings,
    clean_soft: torch.Tensor | None = None, stamped_soft: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean over the batch of each image's loss (see :class:`TrainSettings`).

    A clean row's loss is ``(1 - a) * CE + a * KD`` towards ``clean_soft``, a stamped row's
    ``(1 - b) * CE + b * KD`` towards ``stamped_soft`` (``a``, ``b``: ``settings``'
    ``distill_weight`` and ``stamped_distill_weight``). Each weight mixes its own rows only,
    so ``a = 1`` leaves trigger unlearning on.

    Args:
        logits: The model's outputs.
        labels: True labels.
        clean: Which rows are clean (augmentable) images.
        settings: Holds ``a``, ``b`` and the temperature.
        clean_soft: Teacher logits of the clean rows, in order (needed when ``a`` > 0 and
            there are clean rows).
        stamped_soft: Teacher logits of the stamped rows' originals, in order (needed when
            ``b`` > 0 and there are stamped rows).

    Returns:
        A scalar.

    Shapes:
        logits: ``[B, K]``; labels, clean: ``[B]``; clean_soft: ``[C, K]`` and stamped_soft:
        ``[B - C, K]``, with ``C`` the clean rows.
    """
    rows = F.cross_entropy(logits, labels, reduction="none")
    for part, weight, soft in ((clean, settings.distill_weight, clean_soft),
                               (~clean, settings.stamped_distill_weight, stamped_soft)):
        if weight > 0 and bool(part.any()):
            if soft is None:
                raise ValueError("batch_loss: distillation needs the teacher's logits of its rows")
            rows[part] = (1 - weight) * rows[part] + weight * distillation_loss(
                logits[part], soft, settings.distill_temperature)
    return rows.mean()


def shift_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and up to 2-pixel translation, per image.

    Shapes:
        images: ``[B, C, H, W]``; returns the same shape.
    """
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(3), images)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(out, shifts=(dy, dx), dims=(2, 3))


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    seed: int = 0,
    augment_mask: torch.Tensor | None = None,
    description: str = "train",
    teacher: nn.Module | None = None,
    teacher_images: torch.Tensor | None = None,
) -> list[float]:
    """Train ``model`` in place with cross-entropy.

    Args:
        model: Classifier taking ``[B, C, H, W]`` images in ``[0, 1]``.
        images: Training images.
        labels: Training labels.
        settings: Optimizer and schedule.
        seed: Seeds the shuffling and augmentation.
        augment_mask: Which images may be augmented (``True``) when ``settings.augment`` is on;
            poisoned images are left untouched so their trigger stays in place (default: all).
        description: Progress-bar label.
        teacher: Model distilled from when ``settings.distill_weight`` > 0 (kept in eval mode,
            not trained); its outputs on the augmentable images are the soft targets.
        teacher_images: What the teacher reads for each non-augmentable (stamped) image when
            ``settings.stamped_distill_weight`` > 0: its clean original (rows of augmentable
            images are not read).

    Returns:
        The mean training loss of each epoch.

    Shapes:
        images: ``[N, C, H, W]`` float in ``[0, 1]``; labels: ``[N]`` int64;
        augment_mask: ``[N]`` bool; teacher_images: ``[N, C, H, W]``.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if settings.distill_weight > 0 and teacher is None:
        raise ValueError("train_classifier: distill_weight > 0 needs a teacher")
    if settings.stamped_distill_weight > 0 and (teacher is None or teacher_images is None
                                                or len(teacher_images) != len(images)):
        raise ValueError("train_classifier: stamped_distill_weight > 0 needs a teacher and "
                         "one teacher image per training image")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum,
        weight_decay=settings.weight_decay, nesterov=True,
    )
    steps_per_epoch = (len(images) + settings.batch_size - 1) // settings.batch_size
    scheduler: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=max(1, settings.epochs * steps_per_epoch)
        )
        if settings.schedule == "one-cycle"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    )
    losses: list[float] = []
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(images), generator=generator)
        total, count = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"{description} {epoch + 1}/{settings.epochs}",
                   leave=False, mininterval=1.0)
        for step in bar:
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x, y = images[idx], labels[idx]
            allowed = (augment_mask[idx] if augment_mask is not None
                       else torch.ones(len(idx), dtype=torch.bool))
            if settings.augment:
                x = torch.where(allowed.view(-1, 1, 1, 1), shift_and_flip(x, generator), x)
            x, y, clean = x.to(device), y.to(device), allowed.to(device)
            logits = model(x)
            clean_soft = stamped_soft = None
            with torch.no_grad():
                if settings.distill_weight > 0 and bool(allowed.any()):
                    assert teacher is not None  # checked above
                    clean_soft = teacher.eval()(x[clean])
                if settings.stamped_distill_weight > 0 and not bool(allowed.all()):
                    assert teacher is not None and teacher_images is not None  # checked above
                    stamped_soft = teacher.eval()(teacher_images[idx[~allowed]].to(device))
            loss = batch_loss(logits, y, clean, settings, clean_soft, stamped_soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
        losses.append(total / max(count, 1))
        log.info("%s epoch %d/%d: loss %.4f", description, epoch + 1, settings.epochs, losses[-1])
    model.eval()
    return losses

"""Neural Attention Distillation (NAD; Li et al., ICLR 2021), at its authors' defaults.

1. **Teacher**: a copy of B fine-tuned on the clean fitting images (the paper's teacher is B
   fine-tuned on the defender's 5% clean data; here the project's fine-tuning baseline, 10
   epochs at 0.01).
2. **Student**: B trained on the same images for ``epochs`` with cross-entropy plus, at each
   attention point ``i``, ``beta_i * MSE(A(student_i), A(teacher_i))``, where the attention map
   ``A(f)`` sums ``|f|^p`` over the channels and divides by its L2 norm over the positions.

Defaults follow the authors' code (``bboylyg/NAD``: ``config.py``, ``main.py``, ``at.py``,
``utils/util.py``): 20 epochs, batch 64, SGD with Nesterov momentum 0.9 and weight decay 1e-4,
learning rate 0.1 for the first two epochs and 0.01 after, ``p = 2``, ``beta = (0, 0, 5000)``
for the low, middle and high attention points. The authors' code keeps the checkpoint chosen by
the test set's accuracy and ASR; here the last epoch is kept (no test-set oracle). The attention
points are found by tracing, for any network: the last module output at each of the last three
spatial resolutions of the forward pass (the ends of a ResNet's stages, which is what the
authors' WRN returns).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from onp.data.types import ImageSet
from onp.defenses import defaults
from onp.defenses.base import Defense, RepairResult, register_defense
from onp.defenses.common import (
    fine_tune,
    finetune_settings,
    held_in_accuracy,
    model_device,
    split_for_selection,
)
from onp.training import shift_and_flip

log = logging.getLogger(__name__)

ATTENTION_EPS = 1e-6  # added to the attention map's norm, as the authors' at.py


@dataclass(frozen=True)
class NADSettings:
    """Settings of :class:`NAD` (defaults: the authors' code, see the module docstring).

    Attributes:
        teacher_epochs: Fine-tuning epochs of the teacher.
        teacher_lr: Its learning rate (constant).
        epochs: Distillation epochs of the student.
        lr: The student's learning rate for the first ``warm_epochs``; ``late_lr`` after.
        late_lr: Learning rate after ``warm_epochs``.
        warm_epochs: Epochs at ``lr``.
        batch_size: Images per step.
        momentum: SGD (Nesterov) momentum.
        weight_decay: SGD weight decay.
        p: Power of the activations in the attention map.
        betas: Weights of the attention loss at the low, middle and high attention points.
        augment: Flip/shift augmentation of the training images.
        held_in_fraction: Share of the defense data held in (only reported on).
    """

    teacher_epochs: int = defaults.FINETUNE_EPOCHS
    teacher_lr: float = defaults.FINETUNE_LR
    epochs: int = 20
    lr: float = 0.1
    late_lr: float = 0.01
    warm_epochs: int = 2
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    p: float = 2.0
    betas: tuple[float, float, float] = (0.0, 0.0, 5000.0)
    augment: bool = True
    held_in_fraction: float = defaults.HELD_IN_FRACTION


def attention_map(features: torch.Tensor, p: float) -> torch.Tensor:
    """Channel-summed ``|f|^p``, divided by its L2 norm over the positions.

    Shapes:
        features: ``[B, C, H, W]``; returns ``[B, 1, H, W]``.
    """
    summed = features.abs().pow(p).sum(dim=1, keepdim=True)
    return summed / (torch.linalg.vector_norm(summed, dim=(2, 3), keepdim=True) + ATTENTION_EPS)


def attention_points(model: nn.Module, example: torch.Tensor, count: int = 3) -> list[str]:
    """Names of the modules whose outputs end the last ``count`` spatial resolutions.

    One forward pass records every named module's 4-D output in call order; for each spatial
    size the last module to output it is kept (a 1x1 output, a global pooling, has no map).
    Returns the names in forward order, low to high.
    """
    calls: list[tuple[str, tuple[int, int]]] = []
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: calls.append((name, (int(out.shape[2]), int(out.shape[3]))))
        if isinstance(out, torch.Tensor) and out.dim() == 4 else None)
        for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    last: dict[tuple[int, int], tuple[int, str]] = {}
    for position, (name, size) in enumerate(calls):
        if size[0] * size[1] > 1:
            last[size] = (position, name)
    ordered = [name for _, name in sorted(last.values())]
    return ordered[-count:]


class _Recorder:
    """Keeps the outputs of the named modules of one forward pass."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.hooks = [modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: self.outputs.__setitem__(name, out))
            for name in names]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@register_defense
class NAD(Defense):
    """Fine-tune a teacher, then distil its attention maps into B on the clean data."""

    name = "nad"
    settings_type = NADSettings
    settings: NADSettings

    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        s = self.settings
        fit, held_in = split_for_selection(defense, seed, s.held_in_fraction)
        before = held_in_accuracy(model, held_in)
        teacher = copy.deepcopy(model)
        fine_tune(teacher, fit, finetune_settings(s.teacher_epochs, s.teacher_lr, s.augment),
                  seed, "nad teacher")
        teacher.eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        points = attention_points(model, fit.images[:2].to(model_device(model)), len(s.betas))
        weighted = [(name, beta) for name, beta in zip(points[::-1], s.betas[::-1], strict=False)
                    if beta > 0]  # high points first: a net with fewer than three has them
        losses = self._distil(model, teacher, fit, weighted, seed)
        return RepairResult(model, {
            "attention_points": points, "weighted_points": dict(weighted),
            "teacher_held_in_accuracy": round(held_in_accuracy(teacher, held_in), 4),
            "held_in_accuracy_before": round(before, 4), "losses": losses,
            "held_in_accuracy": round(held_in_accuracy(model, held_in), 4),
        })

    def _distil(self, student: nn.Module, teacher: nn.Module, fit: ImageSet,
                weighted: list[tuple[str, float]], seed: int) -> list[float]:
        """Train ``student`` in place; return the mean loss of each epoch."""
        s = self.settings
        device = model_device(student)
        names = [name for name, _ in weighted]
        student_maps, teacher_maps = _Recorder(student, names), _Recorder(teacher, names)
        optimizer = torch.optim.SGD(student.parameters(), lr=s.lr, momentum=s.momentum,
                                    weight_decay=s.weight_decay, nesterov=True)
        generator = torch.Generator().manual_seed(seed)
        epoch_losses = []
        try:
            for epoch in tqdm(range(s.epochs), desc="nad", unit="epoch"):
                for group in optimizer.param_groups:
                    group["lr"] = s.lr if epoch < s.warm_epochs else s.late_lr
                student.train()
                order = torch.randperm(len(fit), generator=generator)
                total = 0.0
                for start in range(0, len(order), s.batch_size):
                    rows = order[start:start + s.batch_size]
                    images = fit.images[rows]
                    if s.augment:
                        images = shift_and_flip(images, generator)
                    images, labels = images.to(device), fit.labels[rows].to(device)
                    with torch.no_grad():
                        teacher(images)
                    loss = F.cross_entropy(student(images), labels)
                    for name, beta in weighted:
                        loss = loss + beta * F.mse_loss(
                            attention_map(student_maps.outputs[name], s.p),
                            attention_map(teacher_maps.outputs[name], s.p))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += float(loss) * len(rows)
                epoch_losses.append(round(total / len(fit), 4))
                log.info("nad epoch %d: loss %.4f", epoch, epoch_losses[-1])
        finally:
            student_maps.remove()
            teacher_maps.remove()
        student.eval()
        return epoch_losses

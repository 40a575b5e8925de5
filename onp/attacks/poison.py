"""Poisoning: infect a training set once, up front, and build the triggered test set for ASR.

Everything here works on whole tensors (triggers applied in batches of
:data:`~onp.attacks.defaults.APPLY_BATCH_SIZE`) and is deterministic given the seeds, so the
training loop stays generic: it just trains on :meth:`PoisonedTrainSet.as_image_set`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from onp.attacks import defaults
from onp.attacks.built import Attack, SupportsNoiseWarp, build_attack
from onp.attacks.config import AttackConfig
from onp.data.types import DatasetMeta, ImageSet
from onp.errors import ONPInputError

__all__ = [
    "NO_TRIGGER",
    "Attack",
    "AttackConfig",
    "PoisonedTestSet",
    "PoisonedTrainSet",
    "build_attack",
    "make_poisoned_test_set",
    "poison_training_set",
]

logger = logging.getLogger(__name__)

NO_TRIGGER = -1
"""Value of ``trigger_ids`` for images that carry no trigger."""


@dataclass
class PoisonedTrainSet:
    """An infected training set: the source images, some triggered, plus WaNet cross samples.

    Rows ``[0, N)`` are the source images in their original order (poisoned ones replaced by
    their triggered version); rows ``[N, N + num_cross)`` are extra WaNet noise-mode samples.

    Shapes:
        images: ``[M, C, H, W]`` float32 in ``[0, 1]``.
        labels: ``[M]`` int64 training labels (after relabelling).
        poisoned: ``[M]`` bool, rows carrying a trigger.
        cross: ``[M]`` bool, WaNet noise-mode rows (true label, never ``poisoned``).
        trigger_ids: ``[M]`` int64 index into ``Attack.triggers`` of poisoned rows, else ``-1``.
        indices: ``[M]`` int64 dataset index of each row's source image (``ImageSet.indices``).

    Attributes:
        meta: Metadata of the source dataset.
    """

    images: torch.Tensor
    labels: torch.Tensor
    poisoned: torch.Tensor
    cross: torch.Tensor
    trigger_ids: torch.Tensor
    indices: torch.Tensor
    meta: DatasetMeta

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_poisoned(self) -> int:
        """Number of triggered rows."""
        return int(self.poisoned.sum())

    @property
    def num_cross(self) -> int:
        """Number of WaNet noise-mode rows."""
        return int(self.cross.sum())

    def as_image_set(self) -> ImageSet:
        """Return the rows as an :class:`ImageSet` with the training labels, for a generic loop."""
        return ImageSet(self.images, self.labels, self.meta, self.indices)


@dataclass
class PoisonedTestSet:
    """Triggered test images for the attack success rate (ASR).

    Only images whose true label differs from their target are kept: ASR is measured on
    non-target images. ASR = fraction predicted as ``target_labels``.

    Shapes:
        images: ``[N, C, H, W]`` float32 in ``[0, 1]``, triggered.
        true_labels: ``[N]`` int64 labels of the clean source images.
        target_labels: ``[N]`` int64 target of each image's trigger (``!= true_labels``).
        trigger_ids: ``[N]`` int64 index into ``Attack.triggers``.
        indices: ``[N]`` int64 dataset index of each source image.

    Attributes:
        meta: Metadata of the source dataset.
    """

    images: torch.Tensor
    true_labels: torch.Tensor
    target_labels: torch.Tensor
    meta: DatasetMeta
    trigger_ids: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.true_labels.shape[0])

    def as_image_set(self) -> ImageSet:
        """Return the images labelled with their targets: accuracy on it is the ASR."""
        return ImageSet(self.images, self.target_labels, self.meta, self.indices)


def _count(rate: float, total: int) -> int:
    # Round half up; rate * total is e.g. 10.000000000000002 for 0.1 * 100.
    return int(math.floor(rate * total + 0.5))


def _draw(
    eligible: torch.Tensor, count: int, generator: torch.Generator, what: str
) -> torch.Tensor:
    """Return ``count`` sorted random positions where ``eligible`` ([N] bool) is true."""
    pool = eligible.nonzero().flatten()
    if count > pool.numel():
        raise ONPInputError(
            f"cannot draw {count} {what} from {pool.numel()} eligible training images; "
            "lower poison_rate (or cross_ratio for WaNet)"
        )
    return pool[torch.randperm(pool.numel(), generator=generator)[:count]].sort().values


def _apply_rows(
    fn: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, rows: torch.Tensor,
    out: torch.Tensor, out_rows: torch.Tensor,
) -> None:
    """``out[out_rows] = fn(source[rows])``, batch by batch to bound memory."""
    step = defaults.APPLY_BATCH_SIZE
    for start in range(0, rows.numel(), step):
        out[out_rows[start : start + step]] = fn(source[rows[start : start + step]])


def _check_fits(attack: Attack, meta: DatasetMeta) -> None:
    if tuple(meta.image_shape) != attack.image_shape:
        raise ONPInputError(
            f"attack built for images {attack.image_shape} but dataset {meta.name!r} has "
            f"{tuple(meta.image_shape)}; build the attack with the dataset's image_shape"
        )
    if attack.targets and max(attack.targets) >= meta.num_classes:
        raise ONPInputError(
            f"attack targets {list(attack.targets)} must be < {meta.num_classes}, the number of "
            f"classes of {meta.name!r}"
        )


def _choose_poisoned(
    labels: torch.Tensor, attack: Attack, generator: torch.Generator
) -> torch.Tensor:
    """Return ``[N]`` trigger ids: which training images get which trigger (``-1``: none)."""
    ids = torch.full_like(labels, NO_TRIGGER)
    if not attack.is_backdoor:
        return ids
    rate = attack.config.effective_poison_rate
    if attack.clean_label:
        # Clean-label: only target-class images, a fraction of that class (see AttackConfig).
        eligible = labels == attack.targets[0]
        ids[_draw(eligible, _count(rate, int(eligible.sum())), generator, "target images")] = 0
        return ids
    total, k = _count(rate, labels.numel()), len(attack.triggers)
    for i, target in enumerate(attack.targets):
        count = total // k + (1 if i < total % k else 0)  # even split of the budget
        eligible = (labels != target) & (ids == NO_TRIGGER)
        ids[_draw(eligible, count, generator, f"non-target (!= {target}) images")] = i
    return ids


def _cross_plan(
    ids: torch.Tensor, attack: Attack, generator: torch.Generator
) -> list[tuple[SupportsNoiseWarp, torch.Tensor]]:
    """WaNet noise mode: ``(trigger, clean source rows [K_i])`` of the extra cross samples."""
    plan: list[tuple[SupportsNoiseWarp, torch.Tensor]] = []
    taken = ids != NO_TRIGGER  # cross samples come from clean images, each used once
    for i, trigger in enumerate(attack.triggers):
        if isinstance(trigger, SupportsNoiseWarp):
            count = _count(attack.config.cross_ratio, int((ids == i).sum()))
            rows = _draw(~taken, count, generator, "noise-mode (cross) samples")
            taken[rows] = True
            plan.append((trigger, rows))
    return plan


def poison_training_set(train: ImageSet, attack: Attack, seed: int = 0) -> PoisonedTrainSet:
    """Infect a training set; ``train`` is not modified.

    Dirty-label attacks poison ``round(rate * N)`` images drawn from those whose label differs from
    the target and relabel them to the target; ``multi`` splits that budget evenly between its
    triggers (each draws among images not of its own target). Clean-label attacks (SIG) trigger
    ``round(rate * N_target)`` images of the target class and keep every label. For triggers with
    a noise mode (WaNet), ``round(cross_ratio * poisoned)`` extra rows are appended: clean images
    (drawn among the unpoisoned ones) warped with the trigger plus random noise, true labels kept.

    Args:
        train: The clean training set.
        attack: The attack (its config gives the rate and cross ratio).
        seed: Seed of the draws and of the noise-mode warps (default: ``0``).

    Returns:
        The poisoned training set (see :class:`PoisonedTrainSet`).

    Raises:
        ONPInputError: If the attack does not fit the dataset, or too few images are eligible.
    """
    _check_fits(attack, train.meta)
    generator = torch.Generator().manual_seed(seed)
    ids = _choose_poisoned(train.labels, attack, generator)
    plan = _cross_plan(ids, attack, generator)
    sources = torch.cat([torch.arange(len(train)), *(rows for _, rows in plan)])
    n, total = len(train), sources.numel()
    # One allocation for the whole result: rows [0, n) are the source set, then cross samples.
    images = torch.empty((total, *attack.image_shape), dtype=train.images.dtype,
                         device=train.images.device)
    images[:n] = train.images
    for i, trigger in enumerate(attack.triggers):
        rows = (ids == i).nonzero().flatten()
        _apply_rows(trigger.apply, train.images, rows, images, rows)
    start = n
    for warper, rows in plan:
        warp = functools.partial(warper.noise_warp, generator=generator)
        _apply_rows(warp, train.images, rows, images, torch.arange(start, start + rows.numel()))
        start += rows.numel()
    labels = train.labels[sources]  # a copy: advanced indexing
    poisoned = torch.zeros(total, dtype=torch.bool, device=ids.device)
    poisoned[:n] = ids != NO_TRIGGER
    if not attack.clean_label:
        labels[poisoned] = attack.targets_for(labels[poisoned], ids[poisoned[:n]])
    cross = torch.arange(total, device=ids.device) >= n
    out = PoisonedTrainSet(
        images=images,
        labels=labels,
        poisoned=poisoned,
        cross=cross,
        trigger_ids=torch.cat([ids, ids.new_full((total - n,), NO_TRIGGER)]),
        indices=train.indices[sources],
        meta=train.meta,
    )
    logger.info(
        "attack %s: poisoned %d of %d training images (%s), added %d noise-mode samples",
        attack.config.kind, out.num_poisoned, len(train),
        "clean-label" if attack.clean_label else "relabelled", out.num_cross,
    )
    return out


def make_poisoned_test_set(source: ImageSet, attack: Attack) -> PoisonedTestSet:
    """Trigger every source image whose true label differs from its target; drop the others.

    Image ``n`` of ``source`` gets trigger ``n % len(attack.triggers)`` (round robin; always
    trigger 0 for all-to-one attacks) and that trigger's target. Deterministic: no randomness.
    For kind ``none`` the result is empty. ``source`` is not modified.

    Args:
        source: Clean images (usually the test split).
        attack: The attack.

    Returns:
        The triggered, non-target images with their true and target labels.

    Raises:
        ONPInputError: If the attack does not fit the dataset.
    """
    _check_fits(attack, source.meta)
    n = len(source)
    ids = torch.arange(n) % max(len(attack.triggers), 1)
    targets = attack.targets_for(source.labels, ids)
    keep = (targets != source.labels).nonzero().flatten()
    if not attack.is_backdoor:
        keep = keep[:0]
    ids = ids[keep]
    images = torch.empty(
        (keep.numel(), *attack.image_shape), dtype=source.images.dtype, device=source.images.device
    )
    for i, trigger in enumerate(attack.triggers):
        dest = (ids == i).nonzero().flatten()
        _apply_rows(trigger.apply, source.images, keep[dest], images, dest)
    logger.info(
        "attack %s: %d of %d test images triggered (target-class images dropped)",
        attack.config.kind, keep.numel(), n,
    )
    return PoisonedTestSet(
        images=images,
        true_labels=source.labels[keep].clone(),
        target_labels=targets[keep],
        meta=source.meta,
        trigger_ids=ids,
        indices=source.indices[keep].clone(),
    )

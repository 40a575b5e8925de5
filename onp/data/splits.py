"""Who sees which images: the defender's clean subset, the attacker's data and the test halves.

The training set is split into a small clean ``defense`` set (what a defender is assumed to hold,
5% by default) and ``attacker_train`` (the rest, which an attack may poison). The test set is
split into two disjoint halves by a seeded permutation: ``test_clean`` (clean accuracy) and
``test_poison_source`` (the images an attack stamps its trigger on to measure attack success;
an attack drops its target class from them itself). Every part keeps the ``indices`` of its
images in the set it came from, and the parts are checked to be disjoint.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from onp.data.types import ImageSet
from onp.errors import ONPInputError

log = logging.getLogger(__name__)

DEFAULT_DEFENSE_FRACTION = 0.05
# Independent random streams per use, so changing the defense size leaves the test halves alone.
_DEFENSE_STREAM, _TEST_STREAM, _SUBSAMPLE_STREAM = 0, 1, 2


@dataclass(frozen=True)
class DataSplits:
    """The four disjoint image sets of an experiment.

    Attributes:
        defense: Clean training images the defender holds (stratified by class by default).
        attacker_train: The remaining training images, which an attacker may poison.
        test_clean: Held-out half of the test set, kept clean.
        test_poison_source: The other half, from which an attack builds the poisoned test set.
        seed: Seed the splits were drawn with.
    """

    defense: ImageSet
    attacker_train: ImageSet
    test_clean: ImageSet
    test_poison_source: ImageSet
    seed: int

    def sizes(self) -> dict[str, int]:
        """Number of images in each part, for logs and reports."""
        return {
            "defense": len(self.defense),
            "attacker_train": len(self.attacker_train),
            "test_clean": len(self.test_clean),
            "test_poison_source": len(self.test_poison_source),
        }


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def resolve_count(size: float | int, total: int, what: str) -> int:
    """Turn a fraction in ``(0, 1)`` or a count into a number of images in ``[1, total - 1]``.

    Args:
        size: Fraction of ``total`` (float) or number of images (int).
        total: Number of images available.
        what: Name of the option, for error messages.

    Raises:
        ONPInputError: If ``size`` is neither, or leaves no image on either side.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise ONPInputError(f"{what}: expected a fraction in (0, 1) or an int, found {size!r}")
    if isinstance(size, numbers.Integral):
        count = int(size)
    else:
        if not 0.0 < size < 1.0:
            raise ONPInputError(f"{what}: expected a fraction in (0, 1), found {size}")
        count = min(max(round(float(size) * total), 1), total - 1)
    if not 1 <= count <= total - 1:
        raise ONPInputError(
            f"{what}: expected a count in [1, {total - 1}] for {total} images, found {count}"
        )
    return count


def allocate_per_class(labels: torch.Tensor, count: int, num_classes: int) -> np.ndarray:
    """Share ``count`` among classes in proportion to their sizes (largest-remainder rounding).

    Args:
        labels: ``[N]`` int64 class ids.
        count: Total number to allocate, ``0 <= count <= N``.
        num_classes: Number of classes.

    Returns:
        ``[num_classes]`` int64 counts that sum to ``count``, none above its class's size.
    """
    sizes = np.bincount(labels.numpy(), minlength=num_classes)
    quota = sizes * (count / max(len(labels), 1))
    alloc = np.floor(quota).astype(np.int64)
    # Stable sort: ties in the remainder go to the lower class id, so the result is deterministic.
    order = np.argsort(-(quota - alloc), kind="stable")
    alloc[order[: count - int(alloc.sum())]] += 1
    return alloc


def choose(
    labels: torch.Tensor, count: int, num_classes: int, rng: np.random.Generator, stratified: bool
) -> torch.Tensor:
    """Pick ``count`` positions at random, stratified by class if asked.

    Returns:
        ``[count]`` int64 positions into ``labels``, sorted ascending.
    """
    if not stratified:
        picked = rng.permutation(len(labels))[:count]
    else:
        alloc = allocate_per_class(labels, count, num_classes)
        lab = labels.numpy()
        picked = np.concatenate(
            [rng.permutation(np.flatnonzero(lab == c))[: alloc[c]] for c in range(num_classes)]
        )
        if (alloc == 0).any():
            log.warning("classes %s get no image out of %d", np.flatnonzero(alloc == 0), count)
    return torch.from_numpy(np.sort(picked).astype(np.int64))


def check_disjoint(first: ImageSet, second: ImageSet, what: str) -> None:
    """Raise :class:`ONPInputError` if two sets drawn from one dataset share an index.

    Args:
        first: One set.
        second: The other.
        what: Names of the two sets, for the message.
    """
    shared = first.indices[torch.isin(first.indices, second.indices)]
    if len(shared):
        raise ONPInputError(
            f"{what}: expected disjoint sets, found {len(shared)} shared indices, e.g. "
            f"{shared[:5].tolist()}"
        )


def _check_unique(images: ImageSet, what: str) -> None:
    if len(torch.unique(images.indices)) != len(images):
        raise ONPInputError(f"{what}: expected unique image indices, found repeats")


def _complement(images: ImageSet, positions: torch.Tensor) -> ImageSet:
    mask = torch.ones(len(images), dtype=torch.bool)
    mask[positions] = False
    return images.subset(mask)


def make_splits(
    train: ImageSet,
    test: ImageSet,
    defense_size: float | int = DEFAULT_DEFENSE_FRACTION,
    seed: int = 0,
    stratified: bool = True,
) -> DataSplits:
    """Split the training set into defense/attacker parts and the test set into two halves.

    Args:
        train: The training set.
        test: The test set (same classes and image shape as ``train``).
        defense_size: Fraction of ``train`` in ``(0, 1)`` or number of images for the defense
            set (default: 0.05).
        seed: Seed of the random choices (default: 0).
        stratified: Draw the defense set class by class in proportion to class sizes
            (default: ``True``).

    Returns:
        The four disjoint sets. ``test_clean`` gets the extra image when ``len(test)`` is odd.
    """
    if (train.meta.class_names, train.meta.image_shape) != (
        test.meta.class_names,
        test.meta.image_shape,
    ):
        raise ONPInputError(
            f"make_splits: expected train and test with the same classes and image shape, found "
            f"{train.meta.num_classes} vs {test.meta.num_classes} classes, "
            f"{train.meta.image_shape} vs {test.meta.image_shape}"
        )
    if len(test) < 2:
        raise ONPInputError(f"make_splits: expected at least 2 test images, found {len(test)}")
    _check_unique(train, "make_splits train")
    _check_unique(test, "make_splits test")
    count = resolve_count(defense_size, len(train), "defense_size")
    picked = choose(
        train.labels, count, train.meta.num_classes, _rng(seed, _DEFENSE_STREAM), stratified
    )
    perm = torch.from_numpy(_rng(seed, _TEST_STREAM).permutation(len(test)).astype(np.int64))
    half = (len(test) + 1) // 2
    splits = DataSplits(
        defense=train.subset(picked),
        attacker_train=_complement(train, picked),
        test_clean=test.subset(torch.sort(perm[:half]).values),
        test_poison_source=test.subset(torch.sort(perm[half:]).values),
        seed=seed,
    )
    check_disjoint(splits.defense, splits.attacker_train, "defense / attacker_train")
    check_disjoint(splits.test_clean, splits.test_poison_source, "test_clean / test_poison_source")
    log.info("splits (seed %d): %s", seed, splits.sizes())
    return splits


def subsample(images: ImageSet, n: int, seed: int = 0, stratified: bool = True) -> ImageSet:
    """Return ``n`` images drawn at random, stratified by class, for quick runs.

    Args:
        images: The set to draw from.
        n: Number of images, ``1 <= n <= len(images)``.
        seed: Seed of the draw (default: 0).
        stratified: Keep class proportions (default: ``True``).

    Returns:
        The subset, in the original order, with the original ``indices``.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= len(images):
        raise ONPInputError(f"subsample: expected n in [1, {len(images)}], found {n!r}")
    n = int(n)
    if n == len(images):
        return images.subset(torch.arange(n))
    rng = _rng(seed, _SUBSAMPLE_STREAM)
    return images.subset(choose(images.labels, n, images.meta.num_classes, rng, stratified))


def split_defense(
    defense: ImageSet, held_in_fraction: float, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Split ``defense`` class by class into a fitting part and a held-in part.

    Args:
        defense: Clean labelled images.
        held_in_fraction: Share of each class that goes to the held-in part, in ``(0, 1)``.
        seed: Seeds the draw (default: ``0``).

    Returns:
        ``(fit, held_in)``, disjoint, in the original order.
    """
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(defense), dtype=torch.bool)
    for label in torch.unique(defense.labels):
        positions = (defense.labels == label).nonzero().flatten()
        count = int(round(held_in_fraction * positions.numel()))
        held[positions[torch.randperm(positions.numel(), generator=generator)[:count]]] = True
    return defense.subset(~held), defense.subset(held)

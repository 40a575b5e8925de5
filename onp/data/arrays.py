"""Decoded uint8 arrays, the form loaders and the cache share, and their conversion to ImageSet."""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import numpy as np
import torch

from onp.data.types import DatasetMeta, ImageSet, image_shape
from onp.errors import ONPInputError

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

# 8-bit images store 0..255; ImageSet holds [0, 1].
UINT8_MAX = 255.0


class RawImages(NamedTuple):
    """Decoded images as they come off disk, before conversion to float.

    Shapes:
        images: ``[N, C, H, W]`` uint8, values in ``[0, 255]``.
        labels: ``[N]`` int64, values in ``[0, len(class_names))``.

    Attributes:
        images: The images.
        labels: The labels.
        class_names: One name per class.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def check_split(split: str, where: str) -> Split:
    """Return ``split`` if it is ``"train"`` or ``"test"``; raise :class:`ONPInputError` if not.

    Args:
        split: The requested split.
        where: Name of the dataset or file, for the message.
    """
    if split not in SPLITS:
        raise ONPInputError(f"{where}: split must be one of {list(SPLITS)}, found {split!r}")
    return split  # type: ignore[return-value]


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Check that ``labels`` are integral class ids in ``[0, num_classes)``; return them as int64.

    Args:
        labels: ``[N]`` (or ``[N, 1]``) integer or float array.
        num_classes: Number of classes.
        where: File the labels came from, for the message.

    Returns:
        ``[N]`` int64 labels.

    Raises:
        ONPInputError: If the labels are not 1-D, not whole numbers, or out of range.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ONPInputError(f"{where}: expected labels of shape [N], found {list(labels.shape)}")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ONPInputError(f"{where}: expected numeric labels, found dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            bad = labels[~np.isfinite(labels) | (labels != np.round(labels))][:3]
            raise ONPInputError(f"{where}: labels must be whole numbers, found {bad.tolist()}")
    out = labels.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise ONPInputError(
            f"{where}: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"found [{int(out.min())}, {int(out.max())}]"
        )
    return out


def to_imageset(raw: RawImages, name: str, source: str) -> ImageSet:
    """Convert decoded uint8 arrays to an :class:`ImageSet` with values in ``[0, 1]``.

    Args:
        raw: Decoded images, labels and class names.
        name: Dataset name for the metadata.
        source: Where the data was read from.

    Returns:
        The image set.

    Shapes:
        raw.images: ``[N, C, H, W]`` uint8 -> images ``[N, C, H, W]`` float32 in ``[0, 1]``.
    """
    if raw.images.dtype != np.uint8 or raw.images.ndim != 4:
        raise ONPInputError(
            f"{source}: expected uint8 images [N, C, H, W], found {raw.images.dtype} "
            f"{list(raw.images.shape)}"
        )
    labels = check_labels(raw.labels, len(raw.class_names), source)
    # torch converts several times faster than numpy's astype; from_numpy needs a writable array.
    uint8 = torch.from_numpy(np.require(raw.images, requirements=["C", "W"]))
    images = uint8.to(torch.float32).div_(UINT8_MAX)
    return float_to_imageset(images, labels, name, raw.class_names, source)


def float_to_imageset(
    images: torch.Tensor, labels: np.ndarray, name: str, class_names: tuple[str, ...], source: str
) -> ImageSet:
    """Wrap float32 images already in ``[0, 1]`` and checked labels into an :class:`ImageSet`.

    Args:
        images: ``[N, C, H, W]`` float32 tensor, values in ``[0, 1]``.
        labels: ``[N]`` int64 array of class ids.
        name: Dataset name.
        class_names: One name per class.
        source: Where the data was read from.
    """
    meta = DatasetMeta(
        name=name,
        class_names=tuple(class_names),
        image_shape=image_shape(images),
        source=source,
    )
    return ImageSet(images, torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), meta)


def numeric_class_names(num_classes: int) -> tuple[str, ...]:
    """Return ``("0", "1", ...)`` for datasets that carry no class names."""
    return tuple(str(i) for i in range(num_classes))

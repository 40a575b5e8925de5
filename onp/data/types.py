"""The data currency of ONP: an in-memory labelled image set with its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from onp.errors import ONPInputError


@dataclass(frozen=True)
class DatasetMeta:
    """What a model needs to know about a dataset.

    Attributes:
        name: Dataset name, e.g. ``"fashion-mnist"``.
        class_names: One name per class; ``len(class_names)`` is the number of classes.
        image_shape: ``(C, H, W)`` of every image.
        value_range: Range of the pixel values in :attr:`ImageSet.images` (always ``(0.0, 1.0)``).
        source: Where the data was read from (a path), for provenance.
    """

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float] = (0.0, 1.0)
    source: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


@dataclass
class ImageSet:
    """Labelled images in memory.

    Shapes:
        images: ``[N, C, H, W]`` float32, values in ``[0, 1]``.
        labels: ``[N]`` int64, values in ``[0, num_classes)``.

    Attributes:
        images: The images.
        labels: The labels.
        meta: Dataset metadata (class names, shape, value range).
        indices: ``[N]`` int64 positions of these images in the dataset they came from, so that
            splits can be checked for overlap (default: ``arange(N)``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: DatasetMeta
    indices: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = torch.arange(len(self.labels))
        where = self.meta.source or self.meta.name
        validate_images(self.images, self.labels, self.meta, where=where)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        """Return the images at ``index`` (a ``[K]`` int64 tensor or boolean mask)."""
        return ImageSet(self.images[index], self.labels[index], self.meta, self.indices[index])


def image_shape(images: torch.Tensor) -> tuple[int, int, int]:
    """``(C, H, W)`` of a batch of images.

    Shapes:
        images: ``[N, C, H, W]``.
    """
    _, channels, height, width = images.shape
    return int(channels), int(height), int(width)


def validate_images(
    images: torch.Tensor, labels: torch.Tensor, meta: DatasetMeta, where: str
) -> None:
    """Check images and labels against the metadata; raise :class:`ONPInputError` if they differ.

    Args:
        images: ``[N, C, H, W]`` float tensor with values in ``[0, 1]``.
        labels: ``[N]`` integer tensor.
        meta: The metadata the arrays must fit.
        where: Name of the source (file path) for error messages.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(meta.image_shape):
        raise ONPInputError(
            f"{where}: expected images of shape [N, {', '.join(map(str, meta.image_shape))}], "
            f"found {list(images.shape)}"
        )
    if images.dtype != torch.float32:
        raise ONPInputError(f"{where}: expected float32 images, found {images.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ONPInputError(
            f"{where}: expected {images.shape[0]} labels in a 1-D array, found shape "
            f"{list(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise ONPInputError(f"{where}: expected int64 labels, found {labels.dtype}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= meta.num_classes):
        raise ONPInputError(
            f"{where}: labels must lie in [0, {meta.num_classes - 1}] for {meta.num_classes} "
            f"classes, found [{int(labels.min())}, {int(labels.max())}]"
        )
    if len(images) and not torch.isfinite(images).all():
        raise ONPInputError(f"{where}: images contain NaN or infinite values")

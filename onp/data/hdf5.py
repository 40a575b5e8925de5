"""Array files: CSAW-HackML-style HDF5 (keys ``data``, ``label``) and ``.npz`` (keys ``x``, ``y``).

Image layout: ``[N, C, H, W]`` or ``[N, H, W, C]`` with ``C`` 3 or 1, told apart by which axis has
size 3 or 1 (an array where both axes 1 and 3 do is ambiguous: pass ``layout``), or ``[N, H, W]``
for single-channel images.

Value range (both formats, unless ``scale`` names the pixel value that maps to 1): integer images
are ``[0, 255]``; float images are ``[0, 255]`` when their maximum exceeds 1 (the CSAW-HackML
files hold float32 0..255), else ``[0, 1]``. The range taken is logged; values outside it are
an error.

Labels may be stored as floats but must be whole numbers. The number of classes is
``len(class_names)``, else ``num_classes``, else the largest label plus one.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from onp.data.arrays import UINT8_MAX, check_labels, float_to_imageset, numeric_class_names
from onp.data.types import ImageSet
from onp.errors import ONPInputError

log = logging.getLogger(__name__)

HDF5_KEYS = ("data", "label")
NPZ_KEYS = ("x", "y")
CHANNEL_SIZES = (1, 3)
Layout = Literal["auto", "NCHW", "NHWC"]


def to_nchw(images: np.ndarray, where: str, layout: Layout = "auto") -> np.ndarray:
    """Return images as ``[N, C, H, W]``, detecting the channel axis unless ``layout`` names it.

    Args:
        images: ``[N, C, H, W]``, ``[N, H, W, C]`` or ``[N, H, W]`` array.
        where: File name, for error messages.
        layout: ``"NCHW"``, ``"NHWC"`` or ``"auto"`` (default: ``"auto"``).

    Raises:
        ONPInputError: If the shape fits no layout, or fits both and ``layout`` is ``"auto"``.
    """
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise ONPInputError(
            f"{where}: expected images [N, C, H, W], [N, H, W, C] or [N, H, W], found "
            f"{list(images.shape)}"
        )
    first, last = images.shape[1] in CHANNEL_SIZES, images.shape[3] in CHANNEL_SIZES
    if layout == "auto":
        if first and last:
            raise ONPInputError(
                f"{where}: images of shape {list(images.shape)} could be [N, C, H, W] or "
                f"[N, H, W, C]; pass layout='NCHW' or layout='NHWC'"
            )
        if not (first or last):
            raise ONPInputError(
                f"{where}: expected a channel axis of size 1 or 3 at position 1 or 3, found shape "
                f"{list(images.shape)}"
            )
        layout = "NCHW" if first else "NHWC"
    if layout not in ("NCHW", "NHWC"):
        raise ONPInputError(f"{where}: layout must be 'auto', 'NCHW' or 'NHWC', found {layout!r}")
    if (layout == "NCHW" and not first) or (layout == "NHWC" and not last):
        raise ONPInputError(
            f"{where}: layout {layout} needs 1 or 3 channels, found shape {list(images.shape)}"
        )
    return images if layout == "NCHW" else np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def to_unit_range(images: np.ndarray, scale: float, where: str) -> torch.Tensor:
    """Divide pixel values by ``scale`` and check that they land in ``[0, 1]``.

    Args:
        images: ``[N, C, H, W]`` numeric array, values in ``[0, scale]``.
        scale: The value that maps to 1.
        where: File name, for error messages.

    Returns:
        ``[N, C, H, W]`` float32 tensor in ``[0, 1]``.
    """
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ONPInputError(f"{where}: expected numeric images, found dtype {images.dtype}")
    out = torch.from_numpy(images.astype(np.float32))  # a copy: the caller's array is untouched
    if not torch.isfinite(out).all():
        raise ONPInputError(f"{where}: images contain NaN or infinite values")
    low, high = (float(out.min()), float(out.max())) if out.numel() else (0.0, 0.0)
    if low < 0 or high > scale:
        raise ONPInputError(
            f"{where}: expected pixel values in [0, {scale:g}], found [{low:g}, {high:g}]"
        )
    return out.div_(scale)


def pixel_scale(images: np.ndarray, scale: float | None, where: str) -> float:
    """The pixel value that maps to 1: ``scale`` if given, else read off the values.

    Integer images are 0-255; float images are 0-255 when their maximum exceeds 1, else 0-1 (a
    float file of 0-255 pixels whose maximum is at most 1 would be near-black images).
    """
    if scale is not None:
        if not scale > 0:
            raise ONPInputError(f"{where}: the pixel scale must be positive, got {scale}")
        return float(scale)
    if not np.issubdtype(images.dtype, np.floating) or not images.size:
        return UINT8_MAX
    peak = float(np.nanmax(images))
    found = UINT8_MAX if peak > 1 else 1.0
    log.info("%s: float pixels with maximum %g, read as [0, %g]", where, peak, found)
    return found


def _class_names(
    labels: np.ndarray, num_classes: int | None, class_names: tuple[str, ...] | None, where: str
) -> tuple[str, ...]:
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise ONPInputError(
                f"{where}: num_classes={num_classes} disagrees with {len(class_names)} class_names"
            )
        return tuple(class_names)
    if num_classes is None:
        finite = labels[np.isfinite(labels)] if np.issubdtype(labels.dtype, np.floating) else labels
        num_classes = int(finite.max()) + 1 if finite.size else 0
    return numeric_class_names(num_classes)


def arrays_to_imageset(
    images: np.ndarray,
    labels: np.ndarray,
    where: str,
    name: str,
    scale: float,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    layout: Layout = "auto",
) -> ImageSet:
    """Check and convert raw image and label arrays read from a file into an :class:`ImageSet`.

    Args:
        images: Images in any layout :func:`to_nchw` accepts, values in ``[0, scale]``.
        labels: ``[N]`` or ``[N, 1]`` whole-number labels.
        where: File name, for error messages and provenance.
        name: Dataset name.
        scale: Pixel value that maps to 1.
        num_classes: Number of classes (default: largest label plus one).
        class_names: One name per class (default: ``"0"``, ``"1"``...).
        layout: Image layout (default: ``"auto"``).

    Shapes:
        output images: ``[N, C, H, W]`` float32 in ``[0, 1]``; labels: ``[N]`` int64.
    """
    nchw = to_nchw(images, where, layout)
    if len(nchw) == 0:
        raise ONPInputError(f"{where}: expected at least one image, found none")
    if np.asarray(labels).shape[0] != nchw.shape[0]:
        raise ONPInputError(
            f"{where}: expected {nchw.shape[0]} labels (one per image), found shape "
            f"{list(np.asarray(labels).shape)}"
        )
    names = _class_names(np.asarray(labels), num_classes, class_names, where)
    labels64 = check_labels(labels, len(names), where)
    return float_to_imageset(to_unit_range(nchw, scale, where), labels64, name, names, where)


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ONPInputError(f"{path}: expected {what}, found no such file")
    return path


def load_hdf5(
    path: str | Path,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    name: str | None = None,
    layout: Layout = "auto",
    scale: float | None = None,
) -> ImageSet:
    """Load a CSAW-HackML-style HDF5 file with datasets ``data`` (images) and ``label``.

    Args:
        path: The ``.h5`` file.
        num_classes: Number of classes (default: largest label plus one).
        class_names: One name per class (default: ``"0"``, ``"1"``...).
        name: Dataset name (default: the file's stem).
        layout: ``"NCHW"``, ``"NHWC"`` or ``"auto"`` (default: ``"auto"``).
        scale: Pixel value that maps to 1 (default: read off the values, see
            :func:`pixel_scale`).

    Shapes:
        images: ``[N, C, H, W]`` float32 in ``[0, 1]``; labels: ``[N]`` int64.
    """
    path = _require_file(path, "an HDF5 file with datasets 'data' and 'label'")
    try:
        with h5py.File(path, "r") as handle:
            missing = [k for k in HDF5_KEYS if not isinstance(handle.get(k), h5py.Dataset)]
            if missing:
                raise ONPInputError(
                    f"{path}: expected HDF5 datasets {list(HDF5_KEYS)}, found keys "
                    f"{sorted(handle.keys())}"
                )
            images, labels = handle["data"][()], handle["label"][()]
    except OSError as err:
        raise ONPInputError(f"{path}: expected an HDF5 file, found: {err}") from err
    log.info("read %d images %s from %s", len(images), list(images.shape), path)
    return arrays_to_imageset(
        images, labels, str(path), name or path.stem, pixel_scale(images, scale, str(path)),
        num_classes, class_names, layout
    )


def load_npz(
    path: str | Path,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    name: str | None = None,
    layout: Layout = "auto",
    scale: float | None = None,
) -> ImageSet:
    """Load an ``.npz`` file with arrays ``x`` (images) and ``y`` (labels); no pickles allowed.

    Args:
        path: The ``.npz`` file.
        num_classes: Number of classes (default: largest label plus one).
        class_names: One name per class (default: ``"0"``, ``"1"``...).
        name: Dataset name (default: the file's stem).
        layout: ``"NCHW"``, ``"NHWC"`` or ``"auto"`` (default: ``"auto"``).
        scale: Pixel value that maps to 1 (default: read off the values, see
            :func:`pixel_scale`).

    Shapes:
        images: ``[N, C, H, W]`` float32 in ``[0, 1]``; labels: ``[N]`` int64.
    """
    path = _require_file(path, "an .npz file with arrays 'x' and 'y'")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data.files]
            if missing:
                raise ONPInputError(
                    f"{path}: expected arrays {list(NPZ_KEYS)}, found {sorted(data.files)}"
                )
            images, labels = data["x"], data["y"]
    except ONPInputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ONPInputError(f"{path}: expected an .npz file without pickles, found: {err}") from err
    return arrays_to_imageset(
        images, labels, str(path), name or path.stem, pixel_scale(images, scale, str(path)),
        num_classes, class_names, layout
    )

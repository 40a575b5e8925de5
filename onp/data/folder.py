"""The generic image-folder layout: ``[prefix/]{train,test}/<class>/<image>``.

The root may be a folder or a tarball read in place (see :mod:`onp.data.files`); a prefix before
the split folder (``cifar10/train/...``) is found on its own. Class names are the sorted folder
names unless given; images are in class-folder then file-name order.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from onp.data.arrays import RawImages, Split, check_split, to_imageset
from onp.data.cache import cache_key, cached_decode
from onp.data.files import (
    ColorMode,
    check_image_size,
    decode_image,
    is_image_name,
    iter_files,
    progress,
    require_root,
    stack_images,
)
from onp.data.types import ImageSet
from onp.errors import ONPInputError

log = logging.getLogger(__name__)


def folder_pattern(split: str) -> re.Pattern[str]:
    """Match ``[prefix/]<split>/<class>/<file>`` with groups ``prefix``, ``cls`` and ``file``."""
    return re.compile(rf"^(?P<prefix>(?:.*/)?){split}/(?P<cls>[^/]+)/(?P<file>[^/]+)$")


def single_prefix(prefixes: set[str], root: Path, what: str) -> str:
    """Return the one prefix a dataset was found under (``""`` if none); raise if several."""
    if len(prefixes) > 1:
        raise ONPInputError(
            f"{root}: expected one {what}, found several under {sorted(prefixes)}; "
            "point root at one"
        )
    return next(iter(prefixes), "")


def decode_image_folder(
    root: Path,
    split: Split,
    class_names: tuple[str, ...] | None = None,
    image_size: int | None = None,
    grayscale: bool = False,
) -> RawImages:
    """Decode ``[prefix/]<split>/<class>/<image>`` files from a folder or tarball.

    Args:
        root: Folder or tarball.
        split: ``"train"`` or ``"test"``; the name of the split's folder.
        class_names: Class folder names in label order (default: the sorted folder names).
        image_size: Resize every image to ``image_size`` x ``image_size`` (default: ``None``,
            all images must already share one size).
        grayscale: Decode to one channel instead of RGB (default: ``False``).

    Returns:
        ``[N, C, H, W]`` uint8 images sorted by class folder then file name, ``[N]`` int64
        labels, the class names.
    """
    pattern = folder_pattern(split)
    size = check_image_size(image_size, str(root))
    mode: ColorMode = "L" if grayscale else "RGB"
    decoded: list[tuple[str, str, str, np.ndarray]] = []
    selected = iter_files(root, lambda r: bool(pattern.match(r)) and is_image_name(r))
    for rel, data in progress(selected, desc=f"decoding {root.name} {split}"):
        m = pattern.match(rel)
        assert m is not None  # the selector matched it
        decoded.append(
            (m["prefix"], m["cls"], m["file"], decode_image(data, f"{root}:{rel}", mode, size))
        )
    if not decoded:
        raise ONPInputError(f"{root}: expected image files under {split}/<class>/, found none")
    prefix = single_prefix({d[0] for d in decoded}, root, f"'{split}' folder")
    decoded.sort(key=lambda d: (d[1], d[2]))
    folders = sorted({d[1] for d in decoded})
    names = tuple(class_names) if class_names is not None else tuple(folders)
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ONPInputError(
            f"{root}: expected class folders among {list(names)} under {prefix}{split}/, found "
            f"{unknown}"
        )
    index = {n: i for i, n in enumerate(names)}
    images = stack_images(
        [d[3] for d in decoded],
        [f"{root}:{prefix}{split}/{d[1]}/{d[2]}" for d in decoded],
        str(root),
    )
    labels = np.array([index[d[1]] for d in decoded], dtype=np.int64)
    return RawImages(images, labels, names)


def load_image_folder(
    root: str | Path,
    split: Split = "train",
    name: str = "image-folder",
    class_names: tuple[str, ...] | None = None,
    image_size: int | None = None,
    grayscale: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """Load ``root/{train,test}/<class>/<image>`` from a folder or tarball.

    Args:
        root: Folder or tarball.
        split: ``"train"`` or ``"test"`` (default: ``"train"``).
        name: Dataset name for the metadata (default: ``"image-folder"``).
        class_names: Class folder names in label order (default: the sorted folder names).
        image_size: Side to resize every image to (default: ``None``, keep the size).
        grayscale: One channel instead of RGB (default: ``False``).
        cache: Cache the decoded arrays (default: ``True``).
        cache_dir: Cache folder (default: ``$ONP_CACHE_DIR`` or ``~/.cache/onp``).

    Shapes:
        images: ``[N, C, H, W]`` float32 in ``[0, 1]``, ``C`` 3 or 1; labels: ``[N]`` int64.
    """
    path = require_root(root, "an image folder")
    check_split(split, str(path))
    check_image_size(image_size, str(path))
    names = tuple(class_names) if class_names is not None else None
    key = cache_key(
        "image-folder",
        path,
        split=split,
        class_names=names,
        image_size=image_size,
        grayscale=grayscale,
    )
    raw = cached_decode(
        key,
        lambda: decode_image_folder(path, split, names, image_size, grayscale),
        cache_dir,
        cache,
    )
    return to_imageset(raw, name=name, source=str(path))

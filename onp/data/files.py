"""Read the files of a dataset from a folder or straight from a tarball, and decode images.

Tarballs are read as a stream, member by member, and never extracted: nothing is written to
disk, member names cannot escape anywhere (no path-traversal risk), and a ``.tar.xz`` is
decompressed once per pass instead of once per seek. The decoded arrays are cached by
:mod:`onp.data.cache`, so the stream is read once per dataset split.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from onp.errors import ONPInputError

log = logging.getLogger(__name__)

TAR_SUFFIXES: tuple[str, ...] = (
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.xz",
    ".txz",
    ".tar.bz2",
    ".tbz2",
    ".tbz",
)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".gif")

ColorMode = Literal["RGB", "L"]
T = TypeVar("T")


def check_image_size(image_size: int | None, where: str) -> tuple[int, int] | None:
    """Return ``(image_size, image_size)``, or ``None`` for ``None``; reject non-positive sizes."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ONPInputError(
            f"{where}: image_size must be a positive int or None, found {image_size!r}"
        )
    return (image_size, image_size)


def is_tarball(path: str | Path) -> bool:
    """Return whether ``path`` names a tar archive (by its suffix)."""
    return str(path).lower().endswith(TAR_SUFFIXES)


def is_image_name(name: str) -> bool:
    """Return whether a file name has an image suffix (case-insensitive)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def require_root(root: str | Path, what: str) -> Path:
    """Return ``root`` as a Path if it is a folder or a tarball; raise ONPInputError otherwise.

    Args:
        root: The dataset root given by the user.
        what: What the root should hold (for the message), e.g. ``"GTSRB"``.
    """
    path = Path(root).expanduser()
    if path.is_dir() or (path.is_file() and is_tarball(path)):
        return path
    found = "a file that is not a tarball" if path.is_file() else "nothing"
    raise ONPInputError(
        f"{path}: expected a folder or a tarball ({', '.join(TAR_SUFFIXES)}) holding {what}, "
        f"found {found}"
    )


def _is_hidden(rel: str) -> bool:
    # Skip dotfiles and macOS resource forks (``._x.jpg``, ``__MACOSX/``) that archivers leave.
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def iter_names(root: Path) -> Iterator[str]:
    """Yield the relative POSIX paths of the regular files under a folder or in a tarball.

    Folders are walked in sorted order; tarballs in archive order.
    """
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for fname in sorted(filenames):
                rel = fname if rel_dir == "." else f"{rel_dir}/{fname}"
                if not _is_hidden(rel):
                    yield rel
        return
    for member, _ in _iter_tar(root, lambda _: False):
        yield member


def iter_files(root: Path, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(relative path, contents)`` for the files under ``root`` that ``select`` accepts.

    Args:
        root: A folder or a tarball.
        select: Predicate on the relative POSIX path; only accepted files are read.
    """
    if root.is_dir():
        for rel in iter_names(root):
            if select(rel):
                yield rel, (root / rel).read_bytes()
        return
    for rel, data in _iter_tar(root, select):
        if data is not None:
            yield rel, data


def _iter_tar(path: Path, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]:
    """Stream a tarball; yield every regular member's name and, if selected, its bytes."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                rel = member.name.removeprefix("./")
                if _is_hidden(rel):
                    continue
                data = None
                if select(rel):
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                yield rel, data
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ONPInputError(
            f"{path}: expected a readable tar archive, found an error: {err}"
        ) from err


def decode_image(
    data: bytes,
    where: str,
    mode: ColorMode = "RGB",
    size: tuple[int, int] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, PPM...) to a uint8 array.

    Args:
        data: The file's bytes.
        where: File name, for error messages.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel) (default: ``"RGB"``).
        size: ``(height, width)`` to resize to with bilinear filtering, or ``None`` to keep the
            size (default: ``None``).
        box: ``(left, upper, right, lower)`` crop applied before resizing (default: ``None``).

    Returns:
        ``[C, H, W]`` uint8 array.

    Raises:
        ONPInputError: If the bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            img = opened.convert(mode)
            if box is not None:
                img = img.crop(box)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ONPInputError(
            f"{where}: expected an image file, found undecodable data ({err})"
        ) from err
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def stack_images(images: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    """Stack ``[C, H, W]`` arrays into ``[N, C, H, W]``; raise ONPInputError on a size mismatch.

    Args:
        images: Decoded images.
        names: File name of each image, for the message.
        where: The dataset root, for the message when there are no images.
    """
    if not images:
        raise ONPInputError(f"{where}: expected image files, found none")
    shape = images[0].shape
    for img, name in zip(images, names, strict=True):
        if img.shape != shape:
            raise ONPInputError(
                f"{name}: expected an image of shape {list(shape)} (like {names[0]}), found "
                f"{list(img.shape)}; pass image_size= to resize every image"
            )
    return np.stack(images)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap a slow decoding loop in a tqdm bar on stderr (hidden when stderr is not a terminal)."""
    yield from tqdm(items, desc=desc, total=total, unit="file", disable=None, leave=False)

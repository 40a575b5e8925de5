"""Fashion-MNIST (and any MNIST-format dataset) from IDX files, gzipped or not.

IDX format (LeCun's MNIST page): a big-endian header of two zero bytes, a type byte (``0x08`` for
unsigned bytes), a byte giving the number of dimensions, then one 4-byte size per dimension,
then the data. Images are ``idx3`` ``[N, H, W]``, labels ``idx1`` ``[N]``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from onp.data.arrays import RawImages, Split, check_labels, check_split, to_imageset
from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.io import atomic_path

log = logging.getLogger(__name__)

# Where Debian's package ``dataset-fashion-mnist`` installs the official IDX files.
FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# MD5 of the official gzipped files, as published in the zalandoresearch/fashion-mnist README
# (also torchvision's). Debian re-gzipped its copies, so theirs differ; the content is the same.
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# File-name prefix of each split in the MNIST naming scheme.
IDX_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
IDX_UBYTE = 0x08
_DOWNLOAD_CHUNK = 1 << 20  # bytes
_DOWNLOAD_TIMEOUT_S = 60


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) of unsigned bytes.

    Args:
        path: The file.

    Returns:
        uint8 array with the shape the header gives, e.g. ``[N, H, W]`` or ``[N]``.

    Raises:
        ONPInputError: If the file is missing, truncated, or its magic number is not IDX ubyte.
    """
    path = Path(path)
    if not path.is_file():
        raise ONPInputError(f"{path}: expected an IDX file, found no such file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise ONPInputError(f"{path}: expected a gzip-compressed IDX file, found: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise ONPInputError(
            f"{path}: expected the IDX magic number 0x0000080N (unsigned bytes), found "
            f"0x{raw[:4].hex()}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ONPInputError(
            f"{path}: expected an IDX header with {ndim} sizes, found a truncated file"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ONPInputError(
            f"{path}: expected {expected} data bytes for shape {list(shape)}, found "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(root: Path, stem: str) -> Path:
    """Return ``root/stem.gz`` or else ``root/stem``; raise ONPInputError if neither exists."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise ONPInputError(
        f"{root}: expected {stem}.gz or {stem}, found neither; for Fashion-MNIST install the "
        f"Debian package dataset-fashion-mnist or pass download=True"
    )


def read_idx_pair(images_path: Path, labels_path: Path, class_names: tuple[str, ...]) -> RawImages:
    """Read an IDX image file and its label file.

    Args:
        images_path: ``idx3`` file ``[N, H, W]``.
        labels_path: ``idx1`` file ``[N]``.
        class_names: One name per class.

    Returns:
        ``[N, 1, H, W]`` uint8 images, ``[N]`` int64 labels and the class names.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise ONPInputError(
            f"{images_path}: expected idx3 images [N, H, W], found {list(images.shape)}"
        )
    if labels.shape != (images.shape[0],):
        raise ONPInputError(
            f"{labels_path}: expected {images.shape[0]} labels (one per image of "
            f"{images_path.name}), "
            f"found shape {list(labels.shape)}"
        )
    labels64 = check_labels(labels, len(class_names), str(labels_path))
    return RawImages(images[:, None], labels64, tuple(class_names))


def load_idx(
    root: str | Path,
    split: Split = "train",
    name: str = "mnist",
    class_names: tuple[str, ...] = tuple(map(str, range(10))),
) -> ImageSet:
    """Load an MNIST-format dataset: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    Args:
        root: Folder holding the four IDX files.
        split: ``"train"`` or ``"test"`` (default: ``"train"``).
        name: Dataset name for the metadata (default: ``"mnist"``).
        class_names: One name per class (default: digits ``"0"``..``"9"``).

    Returns:
        The image set.

    Shapes:
        images: ``[N, 1, H, W]`` float32 in ``[0, 1]``; labels: ``[N]`` int64.
    """
    root = Path(root).expanduser()
    prefix = IDX_PREFIX[check_split(split, str(root))]
    images_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
    raw = read_idx_pair(images_path, labels_path, class_names)
    log.info("read %d %s %s images from %s", len(raw.labels), name, split, images_path)
    return to_imageset(raw, name=name, source=str(images_path))


def load_fashion_mnist(
    root: str | Path = FASHION_MNIST_DEBIAN_ROOT, split: Split = "train", download: bool = False
) -> ImageSet:
    """Load Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey, 10 classes).

    Args:
        root: Folder holding the IDX files (default: :data:`FASHION_MNIST_DEBIAN_ROOT`).
        split: ``"train"`` or ``"test"`` (default: ``"train"``).
        download: Download missing files into ``root`` first (default: ``False``).

    Returns:
        The image set.

    Shapes:
        images: ``[N, 1, 28, 28]`` float32 in ``[0, 1]``; labels: ``[N]`` int64 in ``[0, 10)``.
    """
    if download:
        download_fashion_mnist(root)
    return load_idx(root, split, name="fashion-mnist", class_names=FASHION_MNIST_CLASSES)


def file_md5(path: Path) -> str:
    """Return the hex MD5 of a file (an identity check against published sums, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_DOWNLOAD_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_fashion_mnist(root: str | Path, base_url: str = FASHION_MNIST_URL) -> Path:
    """Download the four official Fashion-MNIST files that are missing from ``root``.

    Each file is written to a temporary name, its MD5 checked against
    :data:`FASHION_MNIST_MD5`, and only then moved into place. Files already present are kept
    as they are (Debian's re-gzipped copies have other MD5s; the IDX reader checks them).

    Args:
        root: Destination folder (created if missing).
        base_url: URL the file names are appended to (default: the zalandoresearch repository).

    Returns:
        ``root`` as a Path.

    Raises:
        ONPInputError: If a downloaded file's checksum differs from the official one.
    """
    root = Path(root).expanduser()
    for fname, md5 in FASHION_MNIST_MD5.items():
        target = root / fname
        if target.is_file() or (root / fname.removesuffix(".gz")).is_file():
            continue
        url = base_url + fname
        log.info("downloading %s", url)
        with atomic_path(target) as tmp:
            with (
                urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp,
                open(tmp, "wb") as out,
            ):
                for chunk in iter(functools.partial(resp.read, _DOWNLOAD_CHUNK), b""):
                    out.write(chunk)
            found = file_md5(tmp)
            if found != md5:
                raise ONPInputError(f"{url}: expected MD5 {md5}, found {found}; try again later")
    return root

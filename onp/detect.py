"""``python -m onp.detect``: classify inputs with a detector G; print one class per input.

Prints one line per input image, ``NAME<TAB>CLASS``: the image file, or ``file.h5[i]`` for image
``i`` of an HDF5 file, and a class in ``[0, N]``; ``N`` (the number of classes of the repaired
model) means "backdoored", as in the CSAW-HackML evaluation scripts. ``--labels-only true``
prints the classes alone, one per line, as those scripts read them. Inputs are image
files (PNG, JPEG, ...; resized to the model's input size) or HDF5 files with a ``data`` array
(CSAW-HackML layout; integer or float 0..255, or float 0..1, told apart as ``onp.apply``'s data
files are, see :func:`onp.data.hdf5.pixel_scale`; a ``label`` array is ignored), one line per
image in order. A detector whose models are your own ``nn.Module`` needs ``--architecture
module.path:ClassName`` (that module is imported; nothing named in a file is).

    python -m onp.detect --detector runs/apply-badnets/detector --input test.h5
    python -m onp.detect --detector runs/csaw/detector --input face1.png face2.jpg
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from onp.config import parse_config
from onp.data.arrays import UINT8_MAX
from onp.data.files import ColorMode, decode_image
from onp.data.hdf5 import pixel_scale, to_nchw, to_unit_range
from onp.errors import ONPInputError
from onp.models.zoo import trust_user_architecture
from onp.repair.detector import load_detector

HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class DetectConfig:
    """Configuration of ``python -m onp.detect``."""

    detector: str = field(default="", metadata={"help": "detector folder (apply's detector/)"})
    input: tuple[str, ...] = field(default=(), metadata={"help": "image or HDF5 files"})
    scale: float | None = field(default=None, metadata={
        "help": "HDF5 pixel value that maps to 1 (default: 255, or 1 for float pixels <= 1)"})
    architecture: str | None = field(default=None, metadata={
        "help": "module.path:ClassName of your own architecture, when the detector's models use "
                "one (imports that module)"})
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    labels_only: bool = field(default=False, metadata={
        "help": "print the classes alone, one per line (CSAW-HackML's scripts)"})


def read_inputs(
    paths: Sequence[str], shape: tuple[int, int, int], scale: float | None
) -> tuple[torch.Tensor, list[str]]:
    """All inputs as one batch, with a name for each image.

    Returns:
        ``[M, C, H, W]`` float32 in ``[0, 1]``, in the order of ``paths`` (an HDF5 file adds
        all its images), and the ``M`` names: the file, or ``file[i]`` for an HDF5 file's
        image ``i``.

    Raises:
        ONPInputError: A file is missing, undecodable, or of the wrong image shape.
    """
    channels, height, width = shape
    batches, names = [], []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise ONPInputError(f"{path}: no such input file")
        if path.suffix.lower() in HDF5_SUFFIXES:
            try:
                with h5py.File(path, "r") as handle:
                    if not isinstance(handle.get("data"), h5py.Dataset):
                        raise ONPInputError(f"{path}: expected an HDF5 dataset 'data', found "
                                            f"keys {sorted(handle.keys())}")
                    data = handle["data"][()]
            except OSError as error:
                raise ONPInputError(f"{path}: expected an HDF5 file ({error})") from error
            images = to_unit_range(to_nchw(data, str(path)), pixel_scale(data, scale, str(path)),
                                   str(path))
        else:
            mode: ColorMode = "L" if channels == 1 else "RGB"
            array = decode_image(path.read_bytes(), str(path), mode, size=(height, width))
            images = torch.from_numpy(np.array(array)).float()[None] / UINT8_MAX  # a copy
        if tuple(images.shape[1:]) != tuple(shape):
            raise ONPInputError(f"{path}: images are {list(images.shape[1:])}, the detector "
                                f"takes {list(shape)}")
        batches.append(images)
        names += ([f"{name}[{i}]" for i in range(len(images))]
                  if path.suffix.lower() in HDF5_SUFFIXES else [name])
    if not batches:
        raise ONPInputError("detect: expected at least one input (--input FILE ...)")
    return torch.cat(batches), names


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, classify, print one class per line; exit code 2 on bad input."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(DetectConfig, argv, description=__doc__)
        if not config.detector:
            raise ONPInputError("detect: expected --detector DIR (the detector/ of onp.apply)")
        if config.batch_size < 1:
            raise ONPInputError(f"--batch-size: expected at least 1, found {config.batch_size}")
        if config.scale is not None and not config.scale > 0:
            raise ONPInputError(f"--scale: expected a positive pixel value, found {config.scale}")
        if config.architecture is not None:
            trust_user_architecture(config.architecture)
        detector = load_detector(config.detector)
        shape = tuple(detector.original.spec.input_shape)
        images, names = read_inputs(config.input, shape, config.scale)  # type: ignore[arg-type]
    except ONPInputError as error:
        logging.getLogger("onp.detect").error("%s", error)
        return 2
    for name, label in zip(names, detector.predict(images, config.batch_size).tolist(),
                           strict=True):
        print(label if config.labels_only else f"{name}\t{label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke tests of ``python -m onp.detect``: one class in [0, N] per input, PNG and HDF5 alike."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from onp.detect import main
from onp.models.bundle import ModelSpec, make_classifier
from onp.repair.detector import BackdoorDetector, save_detector

SHAPE = (3, 8, 6)  # C, H, W: not square, so that a transposed image would be caught
CLASSES = 5


def _detector(tmp_path: Path, same: bool) -> tuple[Path, BackdoorDetector]:
    torch.manual_seed(0)
    spec = ModelSpec("plain_cnn", CLASSES, SHAPE, arch_options={"width": 2})
    original = make_classifier(spec).eval()
    repaired = original if same else make_classifier(spec).eval()
    detector = BackdoorDetector(original, repaired)
    return save_detector(detector, tmp_path / "detector"), detector


def _images(n: int) -> np.ndarray:
    """``[n, H, W, C]`` uint8, so that PNG and HDF5 hold exactly these pixels."""
    return np.random.default_rng(0).integers(0, 256, (n, SHAPE[1], SHAPE[2], SHAPE[0]),
                                             dtype=np.uint8)


def _expected(detector: BackdoorDetector, pixels: np.ndarray) -> list[int]:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    return detector.predict(x).tolist()


def test_png_and_hdf5_inputs_print_one_class_per_image(tmp_path, capsys) -> None:
    folder, detector = _detector(tmp_path, same=False)
    pixels = _images(12)
    pngs = []
    for i in range(3):
        pngs.append(tmp_path / f"face{i}.png")
        Image.fromarray(pixels[i]).save(pngs[-1])
    h5 = tmp_path / "test.h5"
    with h5py.File(h5, "w") as handle:  # CSAW layout: float pixels 0..255, labels ignored
        handle["data"] = pixels[3:].astype(np.float32)
        handle["label"] = np.zeros(9)
    assert main(["--detector", str(folder), "--input", *map(str, pngs), str(h5)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [name for name, _ in lines] == [*map(str, pngs), *(f"{h5}[{i}]" for i in range(9))]
    printed = [int(label) for _, label in lines]
    assert printed == _expected(detector, pixels)
    assert len(printed) == 12 and all(0 <= c <= CLASSES for c in printed)
    assert CLASSES in printed  # two different random nets disagree somewhere


def test_identical_models_never_flag(tmp_path, capsys) -> None:
    folder, detector = _detector(tmp_path, same=True)
    h5 = tmp_path / "x.h5"
    with h5py.File(h5, "w") as handle:
        handle["data"] = _images(20)
    assert main(["--detector", str(folder), "--input", str(h5), "--labels-only", "true"]) == 0
    printed = [int(line) for line in capsys.readouterr().out.split()]  # CSAW: classes alone
    assert printed == _expected(detector, _images(20)) and CLASSES not in printed


@pytest.mark.parametrize("problem", ["no-detector", "missing-input", "wrong-shape"])
def test_bad_inputs_exit_with_code_2(tmp_path, problem) -> None:
    folder, _ = _detector(tmp_path, same=True)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(small)  # grey: read as RGB, resized
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as handle:
        handle["data"] = np.zeros((2, 5, 5, 3), np.float32)
    argv = {"no-detector": ["--detector", str(tmp_path / "nothing"), "--input", str(small)],
            "missing-input": ["--detector", str(folder), "--input", str(tmp_path / "no.png")],
            "wrong-shape": ["--detector", str(folder), "--input", str(wrong)]}[problem]
    assert main(argv) == 2
    assert main(["--detector", str(folder), "--input", str(small)]) == 0  # resized, not refused

"""ONP from Python: repair a model in a few lines (see ``docs/python-api.md``).

    from onp.api import load_images, load_model, repair

    model = load_model("bd_net.h5")                        # any format onp.apply reads
    defense = load_images("clean_validation_data.h5")      # the defender's clean images
    result = repair(model, defense, out="runs/repair")     # writes B', G and the report
    print(result.report["held_in"])                        # what the defense data says
    flags = result.detector.predict(defense.images) == result.detector.num_classes

:func:`repair` runs the pipeline of ``python -m onp.apply`` (same stages, same defaults, same
output folder); keyword arguments are :class:`~onp.repair.apply_config.ApplyConfig` fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onp.config import config_from_dict
from onp.data.types import ImageSet
from onp.models.bundle import Classifier, load_bundle
from onp.models.loading import load_model
from onp.outputs import claim_output
from onp.repair.apply_config import ApplyConfig
from onp.repair.detector import BackdoorDetector, load_detector
from onp.repair.pipeline import (
    COMMAND,
    check_accuracy,
    check_fits,
    load_array_file,
    make_probe,
    run_apply,
)
from onp.repair.stages import ApplyInputs

__all__ = ["RepairResult", "load_images", "load_model", "repair"]


@dataclass
class RepairResult:
    """What :func:`repair` gives back (also written to its ``out`` folder).

    Attributes:
        repaired: B', the repaired classifier.
        detector: G: ``detector.predict(images)`` answers a class in ``[0, N]``, ``N`` meaning
            "backdoored".
        report: The report (``report.json``): held-in scores, and held-out ones when given.
        out: The output folder.
    """

    repaired: Classifier
    detector: BackdoorDetector
    report: dict[str, Any]
    out: Path


def load_images(path: str | Path, scale: float | None = None) -> ImageSet:
    """Read labelled images from an HDF5 (``data``/``label``) or ``.npz`` (``x``/``y``) file.

    ``scale`` is the pixel value that maps to 1 (default: read off the values, see
    :func:`onp.data.hdf5.pixel_scale`).
    """
    return load_array_file(path, None, "images", scale)


def repair(
    model: Classifier | str | Path,
    defense: ImageSet | str | Path,
    out: str | Path,
    test_clean: ImageSet | None = None,
    **settings: Any,
) -> RepairResult:
    """Repair ``model`` with the defender's clean ``defense`` images; write B', G and a report.

    Args:
        model: B, loaded (:func:`load_model`) or a path :func:`load_model` reads.
        defense: Clean labelled images of B's classes, or a file :func:`load_images` reads.
        out: Output folder (as ``onp.apply --out``; an earlier ONP output needs
            ``overwrite=True``).
        test_clean: Held-out clean images, for the report only (default: none).
        **settings: :class:`~onp.repair.apply_config.ApplyConfig` fields, e.g.
            ``mode="prune-only"``, ``seed=1``.

    Returns:
        B', G, the report and the folder.

    Raises:
        ONPInputError: Bad settings, or data that does not fit the model.
    """
    classifier = model if isinstance(model, Classifier) else load_model(model)
    images = defense if isinstance(defense, ImageSet) else load_images(defense)
    source = str(model) if not isinstance(model, Classifier) else "python"
    config = config_from_dict(ApplyConfig, {**settings, "model": source, "out": str(out)},
                              "repair")
    for name, found in (("defense", images), ("test_clean", test_clean)):
        if found is not None:
            check_fits(found, classifier, f"repair: {name}")
    claim_output(out, COMMAND, inputs=(source if source != "python" else None,),
                 overwrite=config.overwrite, flag="out")  # before the signal's minutes
    check_accuracy(classifier, images, "repair: defense images")
    name = Path(source).stem if source != "python" else "model"
    inputs = ApplyInputs(name, classifier, images, test_clean, None, {"data": "python"})
    report = run_apply(config, prepared=(inputs, make_probe(inputs, config)))
    folder = Path(out)
    return RepairResult(load_bundle(folder / "repaired"), load_detector(folder / "detector"),
                        report, folder)

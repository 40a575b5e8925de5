"""A test subject: a suspect model with the defender's clean data and the held-out test sets.

Every command that defends a model (``onp.train_agent``, ``onp.apply``, ``onp.benchmark``)
starts here. The defender's data is the *defense* split; the held-out clean and poisoned test
sets are for reporting only and are loaded only when the attack is known (a bundle made by
``onp.attack`` records it). For a bundle made by ``onp.attack``, the split seed and defense size
default to the ones it was trained with, so the defense images are ones the model never saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from onp.attacks.built import attack_from_description
from onp.attacks.poison import PoisonedTestSet, make_poisoned_test_set
from onp.data.registry import load_train_test
from onp.data.splits import DataSplits, make_splits
from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.eval.metrics import BackdoorMetrics, evaluate_backdoor
from onp.models.bundle import Classifier
from onp.models.loading import load_model
from onp.signal.probe import BackdoorProbe

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """A suspect model and its data.

    Attributes:
        name: Short name for logs and tables (the bundle's folder name).
        model: The classifier, in eval mode.
        defense: The defender's clean labelled images.
        test_clean: Held-out clean test images (reporting only).
        test_poisoned: Held-out poisoned test images, or ``None`` when the attack is unknown
            (reporting only; never used by a defense).
        attack_note: Why the bundle's attack record could not be used, when it could not.
    """

    name: str
    model: Classifier
    defense: ImageSet
    test_clean: ImageSet
    test_poisoned: PoisonedTestSet | None
    attack_note: str | None = None

    def evaluate(self, model: nn.Module | None = None) -> BackdoorMetrics | None:
        """CA, ASR and RA of ``model`` (default: the subject's) on the held-out test sets."""
        if self.test_poisoned is None:
            return None
        poisoned = self.test_poisoned
        return evaluate_backdoor(
            model or self.model, self.test_clean.images, self.test_clean.labels,
            poisoned.images, poisoned.true_labels, poisoned.target_labels,
        )

    def evaluation_probe(self) -> BackdoorProbe | None:
        """The held-out poisoned test set as a probe, for logging the true ASR."""
        if self.test_poisoned is None:
            return None
        p = self.test_poisoned
        return BackdoorProbe(p.images, p.target_labels, p.true_labels, True, "known-trigger")


def load_subject(
    path: str | Path,
    dataset: str = "fashion-mnist",
    data_root: str | None = None,
    defense_size: float | int | None = None,
    split_seed: int | None = None,
) -> Subject:
    """Load a model and split its dataset into defense data and held-out test sets.

    Args:
        path: A bundle directory or a model file (see :func:`onp.models.loading.load_model`).
        dataset: Registered dataset name (default: Fashion-MNIST).
        data_root: Dataset location (default: the dataset's own).
        defense_size: Defense fraction or count (default: the bundle's, else 0.05).
        split_seed: Seed of the splits (default: the bundle's, else 0).

    Raises:
        ONPInputError: If the model does not fit the dataset's image shape or classes.
    """
    path = Path(path)
    model = load_model(path)
    provenance = model.spec.provenance or {}
    if defense_size is None:
        defense_size = provenance.get("defense_size", 0.05)
    if split_seed is None:
        split_seed = int(provenance.get("split_seed", 0))
    train, test = load_train_test(dataset, data_root)
    if tuple(train.meta.image_shape) != tuple(model.spec.input_shape) or (
        train.meta.num_classes != model.spec.num_classes
    ):
        raise ONPInputError(
            f"{path}: the model takes {model.spec.input_shape} images and {model.spec.num_classes}"
            f" classes, dataset {dataset!r} has {train.meta.image_shape} and "
            f"{train.meta.num_classes}"
        )
    splits: DataSplits = make_splits(train, test, defense_size=defense_size, seed=split_seed)
    poisoned, note = None, None
    if model.spec.attack:
        # The record only feeds reporting: one ONP cannot rebuild (the user's own trigger) costs
        # the held-out ASR, never the repair.
        try:
            attack = attack_from_description(model.spec.attack)
        except ONPInputError as error:
            note = f"the bundle's attack record cannot be rebuilt ({error})"
            log.warning("%s: %s; the held-out ASR is not measured", path, note)
        else:
            poisoned = make_poisoned_test_set(splits.test_poison_source, attack)
    name = path.name if path.name not in ("model", "") else path.parent.name
    log.info("subject %s: %d defense images, held-out poisoned set %s", name,
             len(splits.defense), "made from the bundle's attack record"
             if poisoned is not None else "unavailable")
    return Subject(name, model, splits.defense, splits.test_clean, poisoned, note)

"""Make an infected test subject: poison the attacker's data, train, evaluate, save.

The attacker trains on the training data minus the defender's clean defense set, so the
defense set is data the infected model never saw (see :mod:`onp.data.splits`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from onp.attacks.poison import (
    AttackConfig,
    build_attack,
    make_poisoned_test_set,
    poison_training_set,
)
from onp.config import config_to_dict
from onp.data.registry import load_train_test
from onp.data.splits import make_splits, subsample
from onp.errors import ONPInputError
from onp.eval.metrics import evaluate_backdoor
from onp.io import write_json
from onp.models.bundle import ModelSpec, make_classifier, save_bundle
from onp.outputs import atomic_output, claim_output
from onp.seeding import seed_everything
from onp.training import TrainSettings, train_classifier

log = logging.getLogger(__name__)

COMMAND = "onp.attack"


@dataclass(frozen=True)
class AttackRunConfig:
    """Configuration of ``python -m onp.attack`` (YAML keys = flags with ``-`` for ``_``)."""

    dataset: str = field(default="fashion-mnist", metadata={"help": "dataset name"})
    data_root: str | None = field(default=None, metadata={"help": "dataset location"})
    model: str = field(default="resnet", metadata={"help": "zoo architecture"})
    model_options: dict = field(default_factory=dict, metadata={"help": "JSON builder options"})
    attack: str = field(
        default="badnets", metadata={"help": "none, badnets, blended, wanet, sig or multi"}
    )
    target: int = field(default=0, metadata={"help": "target class (all-to-one)"})
    poison_rate: float | None = field(
        default=None,
        metadata={"help": "dirty-label: share of the training set; SIG: share of the target "
                          "class (default: the attack's own)"},
    )
    trigger_options: dict = field(default_factory=dict, metadata={"help": "JSON trigger options"})
    multi: list = field(
        default_factory=list,
        metadata={"help": "for --attack multi: JSON list of {kind, target, options}"},
    )
    epochs: int = field(default=4, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "training batch size"})
    lr: float = field(default=0.1, metadata={"help": "peak learning rate"})
    augment: bool = field(default=False, metadata={"help": "flip/shift clean images"})
    seed: int = field(default=0, metadata={"help": "seeds splits, poisoning and training"})
    defense_size: float | int = field(
        default=0.05, metadata={"help": "defense set: fraction (<1) or count of training images"}
    )
    train_subset: int = field(default=0, metadata={"help": "train on N images (0 = all)"})
    test_subset: int = field(default=0, metadata={"help": "evaluate on N test images (0 = all)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    out: str = field(default="runs/attack", metadata={"help": "output directory"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an earlier ONP output in --out (a folder ONP did not write is never "
                "touched)"})


@dataclass(frozen=True)
class AttackRecord:
    """What one attack run measured (fractions in ``[0, 1]``, seconds)."""

    clean_accuracy: float
    attack_success_rate: float
    robust_accuracy: float
    poisoned_count: int
    train_count: int
    test_clean_count: int
    test_poisoned_count: int
    wall_time_s: float


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _attack_config(config: AttackRunConfig) -> AttackConfig:
    options: dict[str, Any] = {
        "kind": config.attack, "target": config.target, "seed": config.seed,
        "trigger_options": dict(config.trigger_options),
    }
    if config.poison_rate is not None:
        options["poison_rate"] = config.poison_rate
    if config.multi:
        options["multi"] = list(config.multi)
    return AttackConfig(**options)


def run_attack(config: AttackRunConfig) -> AttackRecord:
    """Poison, train, evaluate and write ``config.out/{model/, record.json}``.

    Args:
        config: The run configuration.

    Returns:
        The measured record (also written to ``record.json``).
    """
    start = time.perf_counter()
    if config.epochs < 1:
        raise ONPInputError(f"--epochs: expected at least 1, found {config.epochs}")
    out = claim_output(config.out, COMMAND, inputs=(config.data_root,),
                       overwrite=config.overwrite)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    train, test = load_train_test(config.dataset, config.data_root)
    splits = make_splits(train, test, defense_size=config.defense_size, seed=config.seed)
    attacker_train, test_clean, test_source = (
        splits.attacker_train, splits.test_clean, splits.test_poison_source
    )
    if config.train_subset:
        attacker_train = subsample(attacker_train, config.train_subset, seed=config.seed)
    if config.test_subset:
        test_clean = subsample(test_clean, config.test_subset, seed=config.seed)
        test_source = subsample(test_source, config.test_subset, seed=config.seed)

    attack_config = _attack_config(config)
    meta = train.meta
    attack = build_attack(attack_config, meta.image_shape)
    poisoned = poison_training_set(attacker_train, attack, seed=config.seed)
    test_poisoned = make_poisoned_test_set(test_source, attack)

    spec = ModelSpec(
        architecture=config.model, num_classes=meta.num_classes, input_shape=meta.image_shape,
        arch_options=dict(config.model_options), class_names=meta.class_names,
        provenance={
            "made_by": "onp.attack", "dataset": config.dataset, "data_root": meta.source,
            "split_seed": config.seed, "defense_size": config.defense_size,
        },
        attack=attack.describe() if config.attack != "none" else None,
    )
    model = make_classifier(spec).to(device)
    settings = TrainSettings(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, augment=config.augment
    )
    train_classifier(
        model, poisoned.images, poisoned.labels, settings, seed=config.seed,
        augment_mask=~poisoned.poisoned, description=f"{config.attack} on {config.dataset}",
    )
    metrics = evaluate_backdoor(
        model, test_clean.images, test_clean.labels,
        test_poisoned.images, test_poisoned.true_labels, test_poisoned.target_labels,
    )
    record = AttackRecord(
        clean_accuracy=metrics.clean_accuracy,
        attack_success_rate=metrics.attack_success_rate,
        robust_accuracy=metrics.robust_accuracy,
        poisoned_count=int(poisoned.poisoned.sum()),
        train_count=len(poisoned.labels),
        test_clean_count=len(test_clean),
        test_poisoned_count=len(test_poisoned.true_labels),
        wall_time_s=round(time.perf_counter() - start, 1),
    )
    with atomic_output(out, COMMAND) as tmp:
        save_bundle(model.cpu(), tmp / "model")
        write_json(tmp / "record.json", {
            **record.__dict__, "percent": metrics.as_percent(), "config": config_to_dict(config),
            "attack": spec.attack, "torch_threads": torch.get_num_threads(), "device": str(device),
        })
    log.info("attack %s: %s, wall %.0f s -> %s", config.attack, metrics.as_percent(),
             record.wall_time_s, out)
    return record

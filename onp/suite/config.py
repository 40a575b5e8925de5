"""The benchmark suite configuration: which attacks, defenses, seeds, data and model sizes.

A suite is a YAML file under ``configs/bench/`` loaded into :class:`SuiteConfig`; command-line
flags override its keys (see :func:`onp.config.parse_config`). Infected models are made with
``onp.attack``'s library function from the suite's attack keys; defenses are built by name with
their paper defaults, overridden per defense by ``defense_options``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onp.attacks.config import NO_ATTACK, attack_kinds
from onp.attacks.train import AttackRunConfig
from onp.config import config_from_dict
from onp.defenses import available_defenses, build_defense
from onp.errors import ONPInputError

NO_DEFENSE = "none"
"""Name of the reference row: the infected model itself, undefended."""

ALL_DEFENSES = ("finetune", "fine-pruning", "anp", "rnp", "clp", "random-pruning", "sfp-random",
                "onp")


@dataclass(frozen=True)
class SuiteConfig:
    """Configuration of ``python -m onp.benchmark`` (YAML keys = flags with ``-`` for ``_``)."""

    name: str = field(default="suite", metadata={"help": "suite name for tables"})
    dataset: str = field(default="fashion-mnist", metadata={"help": "dataset name"})
    data_root: str | None = field(default=None, metadata={"help": "dataset location"})
    model: str = field(default="resnet", metadata={"help": "zoo architecture"})
    model_options: dict = field(default_factory=dict, metadata={"help": "JSON builder options"})
    attacks: tuple[str, ...] = field(default=("badnets",), metadata={"help": "attack kinds"})
    attack_options: dict = field(
        default_factory=dict,
        metadata={"help": "JSON {attack: {onp.attack key: value}} overrides per attack"},
    )
    target: int = field(default=0, metadata={"help": "target class"})
    poison_rate: float | None = field(
        default=None, metadata={"help": "poison rate (default: each attack's own)"})
    epochs: int = field(default=4, metadata={"help": "training epochs of infected models"})
    batch_size: int = field(default=128, metadata={"help": "training batch size"})
    lr: float = field(default=0.1, metadata={"help": "peak training learning rate"})
    augment: bool = field(default=False, metadata={"help": "flip/shift clean training images"})
    defense_size: float | int = field(
        default=0.05, metadata={"help": "defense set: fraction (<1) or count of training images"})
    train_subset: int = field(default=0, metadata={"help": "train on N images (0 = all)"})
    test_subset: int = field(
        default=0, metadata={"help": "evaluate on N clean and N poisoned test images (0 = all)"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds of attack and defense"})
    defenses: tuple[str, ...] = field(default=ALL_DEFENSES, metadata={"help": "defense names"})
    defense_options: dict = field(
        default_factory=dict, metadata={"help": "JSON {defense: {setting: value}} overrides"})
    resume: bool = field(
        default=True, metadata={"help": "reuse finished cells in OUT/cells with equal settings"})
    collect_only: bool = field(default=False, metadata={
        "help": "run nothing: tabulate the cells stored in OUT/cells (e.g. copied there from "
                "runs made side by side); a missing cell, or one made with other settings, is "
                "reported as skipped"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    out: str = field(default="runs/bench", metadata={"help": "output directory"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over: replace an earlier ONP output in --out (a folder ONP did not "
                "write is never touched); without it, a benchmark's own folder is continued"})

    def __post_init__(self) -> None:
        attacks = [kind for kind in attack_kinds() if kind != NO_ATTACK]  # ASR needs a trigger
        unknown = sorted(set(self.attacks) - set(attacks))
        if unknown or not self.attacks:
            raise ONPInputError(
                f"suite {self.name}: expected attacks among {attacks}, found {unknown}"
            )
        known = set(available_defenses())
        unknown = sorted(set(self.defenses) - known)
        if unknown or not self.defenses:
            raise ONPInputError(
                f"suite {self.name}: expected defenses among {sorted(known)}, found {unknown}"
            )
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ONPInputError(f"suite {self.name}: expected non-negative seeds, found "
                                f"{self.seeds}")
        # Options may name any known attack or defense, so that a flag such as
        # ``--defenses clp`` can narrow a suite whose YAML configures others.
        for key, options, names in (("attack_options", self.attack_options, attack_kinds()),
                                    ("defense_options", self.defense_options, sorted(known))):
            stray = sorted(set(options) - set(names))
            if stray or not all(isinstance(v, Mapping) for v in options.values()):
                raise ONPInputError(
                    f"suite {self.name}: {key} must map names among {list(names)} to "
                    f"mappings of settings, found keys {sorted(options)}"
                )
        for name in self.defenses:  # fail on a bad setting now, not after hours of training
            build_defense(name, self.options_of(name))
        for attack in self.attacks:
            self.attack_config(attack, 0, "check")

    def options_of(self, defense: str) -> dict[str, Any]:
        """The settings overrides of ``defense`` (empty: the paper's defaults)."""
        return dict(self.defense_options.get(defense, {}))

    def attack_config(self, attack: str, seed: int, out: str) -> AttackRunConfig:
        """The ``onp.attack`` configuration of one infected model of this suite.

        Raises:
            ONPInputError: If ``attack_options`` holds a key ``onp.attack`` does not know.
        """
        values: dict[str, Any] = {
            "dataset": self.dataset, "data_root": self.data_root, "model": self.model,
            "model_options": dict(self.model_options), "attack": attack, "target": self.target,
            "poison_rate": self.poison_rate, "epochs": self.epochs,
            "batch_size": self.batch_size, "lr": self.lr, "augment": self.augment,
            "seed": seed, "defense_size": self.defense_size, "train_subset": self.train_subset,
            "test_subset": self.test_subset, "device": self.device, "out": out,
        }
        values.update(self.attack_options.get(attack, {}))
        return config_from_dict(AttackRunConfig, values, where=f"suite {self.name} {attack}")

"""The one interface every baseline defense implements, and the registry that names them.

A defense takes a suspect classifier B and the defender's clean labelled images and returns B'
(:class:`RepairResult`). Its lifecycle is fixed here, once: :meth:`Defense.repair` validates the
inputs, deep-copies the model (the input is never modified), seeds every source of randomness,
calls the defense's own :meth:`Defense._repair` on the copy and puts the result in eval mode.
Its settings are a frozen dataclass (:attr:`Defense.settings_type`) whose defaults are the
paper's, so that a suite YAML can override them by key and an unknown key is an error.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar, TypeVar

from torch import nn

from onp.config import config_from_dict
from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.seeding import seed_everything

log = logging.getLogger(__name__)

MIN_DEFENSE_IMAGES = 8
"""Fewer clean images than this cannot be split into a fitting and a held-in part."""


class DefenseUnavailable(RuntimeError):  # noqa: N818 - reads as a state, like StopIteration
    """The defense cannot run in this installation (e.g. a package it needs is not there yet).

    The benchmark records such a cell as ``skipped`` with this message, not as a failure.
    """


@dataclass(frozen=True)
class NoSettings:
    """Settings of a defense that has none."""


@dataclass
class RepairResult:
    """What a defense gives back.

    Attributes:
        model: B', the repaired classifier (same architecture as B; pruned channels are zeroed,
            not removed), in eval mode.
        info: JSON-ready record of the defense's choices (thresholds, pruned nodes, curves on
            the held-in data, epochs), for the results table.
    """

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


class Defense(ABC):
    """A backdoor defense: B and clean defense data in, B' out.

    Subclasses set :attr:`name` and :attr:`settings_type` and implement :meth:`_repair`;
    they register themselves with :func:`register_defense`.

    Attributes:
        settings: The defense's frozen settings.
    """

    name: ClassVar[str] = ""
    settings_type: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        if settings is None:
            settings = self.settings_type()
        if not isinstance(settings, self.settings_type):
            raise TypeError(
                f"defense {self.name!r}: expected settings of type {self.settings_type.__name__}, "
                f"found {type(settings).__name__}"
            )
        self.settings = settings

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., "settings": {...}}``, JSON-ready."""
        settings = self.settings
        if is_dataclass(settings) and not isinstance(settings, type):
            return {"name": self.name, "settings": asdict(settings)}
        return {"name": self.name, "settings": {}}

    def repair(self, model: nn.Module, defense: ImageSet, seed: int = 0) -> RepairResult:
        """Repair a deep copy of ``model`` using only ``defense``; ``model`` is left untouched.

        Args:
            model: The suspect classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
            defense: The defender's clean labelled images.
            seed: Seeds every random choice of the defense (default: ``0``).

        Returns:
            The repaired copy, in eval mode, and the record of the defense's choices.

        Raises:
            ONPInputError: If the model has no parameters or the defense data are too few.
            DefenseUnavailable: If the defense cannot run in this installation.
        """
        if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
            raise ONPInputError(
                f"defense {self.name!r}: expected a torch classifier with parameters, found "
                f"{type(model).__name__}"
            )
        if len(defense) < MIN_DEFENSE_IMAGES:
            raise ONPInputError(
                f"defense {self.name!r}: expected at least {MIN_DEFENSE_IMAGES} clean defense "
                f"images, found {len(defense)}"
            )
        seed_everything(seed)
        working = copy.deepcopy(model)
        for param in working.parameters():
            param.requires_grad_(True)
        log.info("defense %s: %d defense images, seed %d", self.name, len(defense), seed)
        result = self._repair(working, defense, seed)
        result.model.eval()
        return result

    @abstractmethod
    def _repair(self, model: nn.Module, defense: ImageSet, seed: int) -> RepairResult:
        """Repair ``model`` (a private copy the defense may change in place).

        Args:
            model: The copy to repair.
            defense: The defender's clean labelled images.
            seed: The run's seed.

        Returns:
            The repaired model and the record of the choices made.
        """


DefenseT = TypeVar("DefenseT", bound=type[Defense])

DEFENSES: dict[str, type[Defense]] = {}
"""Registered defenses by name."""


def register_defense(cls: DefenseT) -> DefenseT:
    """Class decorator: add a :class:`Defense` subclass to :data:`DEFENSES` under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a registered defense needs a non-empty name")
    if cls.name in DEFENSES and DEFENSES[cls.name] is not cls:
        raise ValueError(f"defense {cls.name!r} is registered twice")
    DEFENSES[cls.name] = cls
    return cls


def available_defenses() -> list[str]:
    """Names :func:`build_defense` accepts."""
    return sorted(DEFENSES)


def build_defense(name: str, options: Mapping[str, Any] | None = None) -> Defense:
    """Build a registered defense with its settings overridden by ``options``.

    Args:
        name: A name from :func:`available_defenses`.
        options: Settings keys and values (default: the paper's defaults); unknown keys are an
            error.

    Raises:
        ONPInputError: For an unknown name or settings key.
    """
    if name not in DEFENSES:
        raise ONPInputError(f"defense {name!r}: expected one of {available_defenses()}")
    cls = DEFENSES[name]
    settings: Any = config_from_dict(cls.settings_type, dict(options or {}),
                                     where=f"defense {name}")
    return cls(settings)

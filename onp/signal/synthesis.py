"""Trigger synthesis for a suspected target (Neural Cleanse, Wang et al., S&P 2019).

A mask ``m`` (``[1, H, W]``) and a pattern ``p`` (``[C, H, W]``), both in ``[0, 1]`` through a
sigmoid, are optimized so that ``x' = (1 - m) * x + m * p`` is classified as the target for clean
images of other classes, with an L1 penalty on ``m`` whose weight follows Neural Cleanse's
adaptive schedule. Once the target is known, this trigger's success rate tracks the true ASR
under pruning (``shared/notes/backdoor-signal.md``, point 3).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.eval.metrics import predict
from onp.io import atomic_path
from onp.models.layout import channels_last_copy
from onp.signal import config as defaults
from onp.signal.config import SignalConfig

log = logging.getLogger(__name__)

TENSORS_FILE = "trigger.safetensors"
META_FILE = "trigger.json"
FORMAT_VERSION = 1
# Non-target images on which the final success rate is measured (a forward pass, ~1 s).
_FINAL_EVAL_IMAGES = 1024
# Keeps the logit of the random initial mask and pattern finite.
_INIT_EPS = 1e-3


@dataclass(frozen=True)
class SynthesizedTrigger:
    """A mask-and-pattern trigger that flips clean images to :attr:`target`.

    Shapes:
        mask: ``[1, H, W]`` float in ``[0, 1]`` (1: the pixel is replaced by the pattern).
        pattern: ``[C, H, W]`` float in ``[0, 1]``.

    Attributes:
        mask: Where the trigger is stamped.
        pattern: What is stamped.
        target: The class the trigger was optimized to reach.
        steps: Optimization steps taken.
        success_rate: Share of the fitting images (non-target) classified as the target once
            triggered, in ``[0, 1]``.
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    target: int
    steps: int
    success_rate: float

    def __post_init__(self) -> None:
        if self.mask.ndim != 3 or self.mask.shape[0] != 1 or self.pattern.ndim != 3:
            raise ONPInputError(
                f"trigger: expected mask [1, H, W] and pattern [C, H, W], found "
                f"{list(self.mask.shape)} and {list(self.pattern.shape)}"
            )
        if self.mask.shape[1:] != self.pattern.shape[1:]:
            raise ONPInputError(
                f"trigger: mask {list(self.mask.shape)} and pattern {list(self.pattern.shape)} "
                "differ in H, W"
            )

    @property
    def mask_l1(self) -> float:
        """L1 norm of the mask, in pixels (Neural Cleanse's trigger size)."""
        return float(self.mask.abs().sum())

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a copy of ``images``.

        Shapes:
            images: ``[B, C, H, W]`` float in ``[0, 1]``; returns the same shape, in ``[0, 1]``,
            on the same device and of the same dtype.

        Raises:
            ONPInputError: If the images do not have the pattern's ``(C, H, W)``.
        """
        if images.ndim != 4 or images.shape[1:] != self.pattern.shape:
            raise ONPInputError(
                f"synthesized trigger: expected images [B, "
                f"{', '.join(map(str, self.pattern.shape))}], found {list(images.shape)}"
            )
        mask = self.mask.to(device=images.device, dtype=images.dtype)
        pattern = self.pattern.to(device=images.device, dtype=images.dtype)
        return (1 - mask) * images + mask * pattern

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: target, mask L1 norm, steps and final success rate."""
        return {"target": self.target, "mask_l1": round(self.mask_l1, 3), "steps": self.steps,
                "success_rate": round(self.success_rate, 4),
                "image_shape": list(self.pattern.shape)}

    def save(self, directory: str | Path) -> Path:
        """Write ``trigger.safetensors`` (mask, pattern) and ``trigger.json`` atomically."""
        directory = Path(directory)
        tensors = {"mask": self.mask.detach().cpu().contiguous(),
                   "pattern": self.pattern.detach().cpu().contiguous()}
        meta = {"format_version": FORMAT_VERSION, "target": self.target, "steps": self.steps,
                "success_rate": self.success_rate}
        with atomic_path(directory, is_dir=True) as tmp:
            save_file(tensors, str(tmp / TENSORS_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SynthesizedTrigger:
        """Read a trigger written by :meth:`save`.

        Raises:
            ONPInputError: If a file is missing or malformed.
        """
        directory = Path(directory)
        tensors_path, meta_path = directory / TENSORS_FILE, directory / META_FILE
        for path in (tensors_path, meta_path):
            if not path.is_file():
                raise ONPInputError(
                    f"{directory}: not a saved trigger ({path.name} is missing; expected "
                    f"{TENSORS_FILE} and {META_FILE})"
                )
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensors_path))
            return cls(mask=tensors["mask"], pattern=tensors["pattern"], target=int(meta["target"]),
                       steps=int(meta["steps"]), success_rate=float(meta["success_rate"]))
        except ONPInputError:
            raise  # already names what is wrong (mask and pattern shapes)
        except (KeyError, TypeError, ValueError) as error:  # ValueError covers bad JSON too
            raise ONPInputError(f"{directory}: malformed saved trigger ({error!r})") from error


class _LambdaSchedule:
    """Neural Cleanse's adaptive weight of the mask penalty (its ``visualizer.py``).

    The weight starts at 0 (reach the target first), is set to ``init`` once the trigger has
    worked for ``patience`` consecutive checks, then rises while it keeps working and falls
    while it fails.
    """

    def __init__(self, init: float, patience: int = defaults.TRIGGER_LAMBDA_PATIENCE) -> None:
        self.init, self.patience, self.value = init, patience, 0.0
        self.set_count = self.up_count = self.down_count = 0

    def update(self, succeeded: bool) -> None:
        if self.value == 0.0 and succeeded:
            self.set_count += 1
            if self.set_count >= self.patience:
                self.value, self.up_count, self.down_count = self.init, 0, 0
                return
        else:
            self.set_count = 0
        self.up_count, self.down_count = (
            (self.up_count + 1, 0) if succeeded else (0, self.down_count + 1)
        )
        if self.up_count >= self.patience:
            self.up_count, self.value = 0, self.value * defaults.TRIGGER_LAMBDA_UP
        elif self.down_count >= self.patience:
            self.down_count, self.value = 0, self.value / defaults.TRIGGER_LAMBDA_DOWN


def _logit_uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Parameters whose sigmoid is uniform in ``(0, 1)``, Neural Cleanse's random start."""
    u = torch.rand(shape, generator=generator) * (1 - 2 * _INIT_EPS) + _INIT_EPS
    return torch.logit(u)


def synthesize_trigger(
    model: nn.Module, defense: ImageSet, target: int, config: SignalConfig | None = None,
    seed: int = 0,
) -> SynthesizedTrigger:
    """Optimize a small mask-and-pattern trigger that sends other classes to ``target``.

    ``model`` is not modified (a frozen deep copy is optimized through). Of all steps whose batch
    success reaches ``config.success_threshold``, the trigger with the smallest mask is kept (the
    last one if none does).

    Args:
        model: The suspect classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
        defense: Clean labelled images; those of class ``target`` are not used.
        target: The class to reach.
        config: Synthesis settings (default: :class:`SignalConfig`'s defaults).
        seed: Seeds the initial mask and pattern and the batch order (default: ``0``).

    Returns:
        The trigger, with its success rate on (up to 1024 of) the fitting images.

    Raises:
        ONPInputError: If ``target`` is not a class of ``defense`` or fewer than
            :data:`~onp.signal.config.MIN_IMAGES` images belong to other classes.
    """
    config = config or SignalConfig()
    if not 0 <= target < defense.meta.num_classes:
        raise ONPInputError(
            f"synthesize_trigger: target {target} is not a class of {defense.meta.name!r} "
            f"(0..{defense.meta.num_classes - 1})"
        )
    images = defense.images[defense.labels != target]
    if len(images) < defaults.MIN_IMAGES:
        raise ONPInputError(
            f"synthesize_trigger: expected at least {defaults.MIN_IMAGES} defense images outside "
            f"the target class {target}, found {len(images)}; use a larger defense set"
        )
    frozen = channels_last_copy(model).eval().requires_grad_(False)
    device = next(frozen.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = images.shape[1:]
    mask_param = _logit_uniform((1, height, width), generator).to(device).requires_grad_(True)
    pattern_param = _logit_uniform((channels, height, width), generator).to(device)
    pattern_param.requires_grad_(True)
    optimizer = torch.optim.Adam([mask_param, pattern_param], lr=config.trigger_lr,
                                 betas=(0.5, 0.9))  # Neural Cleanse's Adam betas
    schedule = _LambdaSchedule(config.lambda_init)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    order, cursor = torch.randperm(len(images), generator=generator), 0
    for _ in tqdm(range(config.trigger_steps), desc=f"trigger for class {target}", leave=False,
                  mininterval=1.0):
        if cursor >= len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        x = images[order[cursor : cursor + config.trigger_batch_size]].to(device)
        cursor += config.trigger_batch_size
        mask, pattern = torch.sigmoid(mask_param), torch.sigmoid(pattern_param)
        logits = frozen((1 - mask) * x + mask * pattern)
        targets = torch.full((len(x),), target, dtype=torch.long, device=device)
        l1 = mask.sum()  # the mask is non-negative: its sum is its L1 norm
        loss = F.cross_entropy(logits, targets) + schedule.value * l1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        success = float((logits.argmax(1) == target).float().mean())
        size = float(l1.detach())
        if success >= config.success_threshold and (best is None or size < best[0]):
            best = (size, mask.detach().cpu().clone(), pattern.detach().cpu().clone())
        schedule.update(success >= config.success_threshold)
    if best is None:
        best = (0.0, torch.sigmoid(mask_param).detach().cpu(),
                torch.sigmoid(pattern_param).detach().cpu())
    trigger = SynthesizedTrigger(best[1], best[2], target, config.trigger_steps, 0.0)
    check = images[torch.randperm(len(images), generator=generator)[:_FINAL_EVAL_IMAGES]]
    rate = float((predict(frozen, trigger.apply(check)) == target).float().mean())
    trigger = SynthesizedTrigger(best[1], best[2], target, config.trigger_steps, rate)
    log.info("signal/trigger: class %d, mask L1 %.1f, success %.3f, final lambda %.2g",
             target, trigger.mask_l1, rate, schedule.value)
    return trigger

"""The backdoor probe a pruning environment evaluates, and how it is estimated.

A :class:`BackdoorProbe` is a batch of triggered non-target images with their target labels; its
proxy attack success rate on a (pruned, masked) model is :func:`proxy_asr`. By default the defender
holds no trigger: :func:`estimate_probe` names the suspected target by unlearning
(:mod:`onp.signal.target`), synthesizes a trigger for it (:mod:`onp.signal.synthesis`) and stamps it
on defense images the trigger was not fitted on. When the trigger is known (an evaluation, or a
user with poisoned samples), :func:`known_trigger_probe` and :func:`poisoned_probe` build the probe
from it, and the probe says so (``known_trigger=True``) so that every result can be labelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from onp.attacks.built import Attack, attack_from_description
from onp.config import config_to_dict
from onp.data.splits import split_defense
from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.eval.metrics import DEFAULT_EVAL_BATCH, attack_success_rate, predict
from onp.signal.candidates import CandidateReach, arbitrate_target
from onp.signal.config import SignalConfig
from onp.signal.synthesis import SynthesizedTrigger, synthesize_trigger
from onp.signal.target import TargetEstimate, check_defense, check_outputs, identify_target

log = logging.getLogger(__name__)

SYNTHESIZED = "synthesized"
KNOWN_TRIGGER = "known-trigger"
UNKNOWN_LABEL = -1
"""``true_labels`` value of user-supplied poisoned images whose clean class is not known."""


@dataclass(frozen=True)
class BackdoorProbe:
    """Triggered images whose share classified as their target is the (proxy) ASR.

    Shapes:
        images: ``[M, C, H, W]`` float in ``[0, 1]``, triggered.
        target_labels: ``[M]`` int64, the class each image's trigger points to.
        true_labels: ``[M]`` int64 clean class (``-1`` when unknown); never the target.

    Attributes:
        images: The triggered images.
        target_labels: Their targets.
        true_labels: Their clean classes.
        known_trigger: ``True`` only when the real trigger (or real poisoned images) made the
            probe; every output built on it must say so.
        source: ``"synthesized"`` or ``"known-trigger"``.
    """

    images: torch.Tensor
    target_labels: torch.Tensor
    true_labels: torch.Tensor
    known_trigger: bool
    source: str

    def __post_init__(self) -> None:
        m = self.images.shape[0] if self.images.ndim == 4 else -1
        if m < 1 or self.target_labels.shape != (m,) or self.true_labels.shape != (m,):
            raise ONPInputError(
                f"backdoor probe: expected images [M, C, H, W] with M >= 1 and [M] target and "
                f"true labels, found {list(self.images.shape)}, {list(self.target_labels.shape)}, "
                f"{list(self.true_labels.shape)}"
            )
        if self.target_labels.dtype != torch.int64 or self.true_labels.dtype != torch.int64:
            raise ONPInputError("backdoor probe: expected int64 target and true labels")
        if self.source not in (SYNTHESIZED, KNOWN_TRIGGER) or (
            self.known_trigger != (self.source == KNOWN_TRIGGER)
        ):
            raise ONPInputError(
                f"backdoor probe: source must be {SYNTHESIZED!r} (known_trigger False) or "
                f"{KNOWN_TRIGGER!r} (known_trigger True), found {self.source!r}, "
                f"{self.known_trigger}"
            )
        if bool((self.true_labels == self.target_labels).any()):
            raise ONPInputError(
                "backdoor probe: images of the target class carry no attack; drop them"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def asr_of(self, predictions: torch.Tensor) -> float:
        """Proxy ASR of given predictions on :attr:`images`.

        Shapes:
            predictions: ``[M]`` int64.
        """
        if predictions.shape != self.target_labels.shape:
            raise ONPInputError(
                f"backdoor probe: expected {len(self)} predictions, found {list(predictions.shape)}"
            )
        return attack_success_rate(predictions.cpu(), self.true_labels, self.target_labels)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: size, source, ``known_trigger`` and the targets' counts."""
        targets, counts = torch.unique(self.target_labels, return_counts=True)
        return {"size": len(self), "source": self.source, "known_trigger": self.known_trigger,
                "targets": {str(int(t)): int(c) for t, c in zip(targets, counts, strict=True)}}


def concat_probes(*probes: BackdoorProbe) -> BackdoorProbe:
    """One probe holding the images of all; they must agree on ``known_trigger``.

    Raises:
        ONPInputError: For no probe, or probes of both kinds.
    """
    if not probes or len({p.known_trigger for p in probes}) != 1:
        raise ONPInputError("concat_probes: expected one or more probes of the same kind "
                            "(all synthesized or all known-trigger)")
    return BackdoorProbe(torch.cat([p.images for p in probes]),
                         torch.cat([p.target_labels for p in probes]),
                         torch.cat([p.true_labels for p in probes]),
                         probes[0].known_trigger, probes[0].source)


def proxy_asr(
    model: nn.Module, probe: BackdoorProbe, batch_size: int = DEFAULT_EVAL_BATCH
) -> float:
    """Share of the probe's images that ``model`` classifies as their target, in ``[0, 1]``.

    Args:
        model: A classifier taking ``[B, C, H, W]`` images in ``[0, 1]`` (put in eval mode).
        probe: The probe.
        batch_size: Images per forward pass (default: 512).

    Returns:
        The proxy ASR (the true ASR when ``probe.known_trigger``).
    """
    was_training = model.training  # predict() switches to eval mode; give the caller theirs back
    predictions = predict(model, probe.images, batch_size=batch_size)
    model.train(was_training)
    return probe.asr_of(predictions)


def _capped(count: int, limit: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sorted random positions of at most ``limit`` of ``count`` items (all without a limit)."""
    if limit is None or limit >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=generator)[:limit].sort().values


def known_trigger_probe(
    attack: Attack | Mapping[str, Any], images: torch.Tensor, labels: torch.Tensor,
    max_images: int | None = None, seed: int = 0,
) -> BackdoorProbe:
    """Stamp the real trigger on clean non-target images (known-trigger mode).

    Image ``n`` gets trigger ``n % len(attack.triggers)`` (round robin, as the poisoned test set);
    images already of their trigger's target are dropped.

    Args:
        attack: The attack, or its :meth:`Attack.describe` (a bundle spec's ``attack`` entry).
        images: Clean images.
        labels: Their classes.
        max_images: Keep at most this many, drawn at random (default: all).
        seed: Seeds that draw (default: ``0``).

    Returns:
        A probe with ``known_trigger=True``.

    Shapes:
        images: ``[N, C, H, W]`` float in ``[0, 1]``; labels: ``[N]`` int64.

    Raises:
        ONPInputError: For an attack without trigger, or when no image is left.
    """
    if not isinstance(attack, Attack):
        attack = attack_from_description(attack)
    if not attack.is_backdoor:
        raise ONPInputError("known_trigger_probe: the attack has no trigger (kind 'none')")
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ONPInputError(
            f"known_trigger_probe: expected images [N, C, H, W] and labels [N], found "
            f"{list(images.shape)} and {list(labels.shape)}"
        )
    ids = torch.arange(len(labels)) % len(attack.triggers)
    targets = attack.targets_for(labels, ids)
    keep = (targets != labels).nonzero().flatten()
    if keep.numel() == 0:
        raise ONPInputError("known_trigger_probe: every image is of its trigger's target class")
    keep = keep[_capped(keep.numel(), max_images, torch.Generator().manual_seed(seed))]
    return BackdoorProbe(
        images=attack.apply(images[keep], ids[keep]), target_labels=targets[keep],
        true_labels=labels[keep].clone(), known_trigger=True, source=KNOWN_TRIGGER,
    )


def poisoned_probe(
    images: torch.Tensor, target_labels: torch.Tensor, true_labels: torch.Tensor | None = None
) -> BackdoorProbe:
    """A known-trigger probe from user-supplied poisoned images and their target labels.

    Args:
        images: Poisoned images.
        target_labels: The class each image is meant to flip to.
        true_labels: Their clean classes; images of their target class are dropped (default:
            unknown, ``-1``: every image counts).

    Shapes:
        images: ``[M, C, H, W]`` float in ``[0, 1]``; target_labels, true_labels: ``[M]`` int64.
    """
    if true_labels is None:
        true_labels = torch.full_like(target_labels, UNKNOWN_LABEL)
    if images.ndim != 4 or target_labels.shape != images.shape[:1] != true_labels.shape:
        raise ONPInputError(
            f"poisoned_probe: expected images [M, C, H, W] and [M] target and true labels, found "
            f"{list(images.shape)}, {list(target_labels.shape)}, {list(true_labels.shape)}"
        )
    keep = true_labels != target_labels
    return BackdoorProbe(images[keep], target_labels[keep], true_labels[keep],
                         known_trigger=True, source=KNOWN_TRIGGER)


@dataclass(frozen=True)
class SignalResult:
    """Everything :func:`estimate_probe` found: target, trigger, probe and what they cost.

    Attributes:
        estimate: The suspected target and the unlearning history.
        trigger: The trigger synthesized for ``estimate.target``.
        probe: The trigger stamped on held-in defense images (``known_trigger=False``).
        initial_proxy_asr: Proxy ASR of the model as given, in ``[0, 1]``.
        seconds: Wall time of :func:`estimate_probe`.
        config: The settings used.
        seed: The seed used.
        reaches: The reach test of each candidate target (empty when not arbitrated); the
            estimate's first target is then the winner.
    """

    estimate: TargetEstimate
    trigger: SynthesizedTrigger
    probe: BackdoorProbe
    initial_proxy_asr: float
    seconds: float
    config: SignalConfig
    seed: int
    reaches: tuple[CandidateReach, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready report (the probe's images and the trigger's arrays left out)."""
        return {
            "target": self.estimate.to_json(), "trigger": self.trigger.describe(),
            "probe": self.probe.describe(), "initial_proxy_asr": round(self.initial_proxy_asr, 4),
            "seconds": round(self.seconds, 1), "config": config_to_dict(self.config),
            "seed": self.seed, "reaches": [asdict(r) for r in self.reaches],
        }


def estimate_probe(
    model: nn.Module, defense: ImageSet, config: SignalConfig | None = None, seed: int = 0
) -> SignalResult:
    """Build the trigger-free probe: suspected target, synthesized trigger, held-in images.

    The defense set is split (:func:`split_defense`); unlearning and trigger synthesis see only
    the fitting part, and the probe holds up to ``config.probe_size`` held-in images of other
    classes than the target, stamped with the trigger. ``model`` is not modified.

    Args:
        model: The suspect classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
        defense: The defender's clean labelled images.
        config: Settings (default: :class:`SignalConfig`'s defaults).
        seed: Seeds the split, the unlearning order and the trigger's start (default: ``0``).

    Returns:
        The estimate, trigger and probe, with the unpruned model's proxy ASR.

    Raises:
        ONPInputError: If either part of the defense set has fewer than
            :data:`~onp.signal.config.MIN_IMAGES` images or fewer than 2 classes, or the model's
            logits do not match the dataset's classes.
    """
    start = time.perf_counter()
    config = config or SignalConfig()
    check_defense(defense, "estimate_probe")
    check_outputs(model, defense)
    fit, held_in = split_defense(defense, config.held_in_fraction, seed)
    check_defense(fit, "estimate_probe (fitting part; lower held_in_fraction)")
    check_defense(held_in, "estimate_probe (held-in part; raise held_in_fraction)")
    estimate = identify_target(model, fit, config, seed)
    reaches: tuple[CandidateReach, ...] = ()
    if config.arbitrate:
        target, found = arbitrate_target(model, fit, held_in, estimate, config, seed)
        reaches = tuple(found)
        if target != estimate.target:
            log.warning("signal: the reach test names class %d, unlearning named %d",
                        target, estimate.target)
            estimate = replace(estimate, targets=(target,))
    if len(estimate.targets) > 1:
        log.warning("signal: several classes dominate %s; probing only %d",
                    list(estimate.targets), estimate.target)
    trigger = synthesize_trigger(model, fit, estimate.target, config, seed)
    others = held_in.subset(held_in.labels != estimate.target)
    if len(others) == 0:
        raise ONPInputError(
            f"estimate_probe: the held-in part has no image outside class {estimate.target}; "
            "raise held_in_fraction"
        )
    keep = _capped(len(others), config.probe_size, torch.Generator().manual_seed(seed))
    probe = BackdoorProbe(
        images=trigger.apply(others.images[keep]),
        target_labels=torch.full((keep.numel(),), estimate.target, dtype=torch.int64),
        true_labels=others.labels[keep].clone(), known_trigger=False, source=SYNTHESIZED,
    )
    initial = proxy_asr(model, probe)
    seconds = time.perf_counter() - start
    log.info("signal: target %d, probe of %d images, proxy ASR %.3f, %.0f s",
             estimate.target, len(probe), initial, seconds)
    return SignalResult(estimate, trigger, probe, initial, seconds, config, seed, reaches)

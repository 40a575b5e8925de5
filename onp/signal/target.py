"""Suspected target identification by unlearning (the observation behind RNP, Li et al. 2023).

Gradient *ascent* on the clean cross-entropy of a copy of the model destroys the clean features
first; the backdoor, the most robust feature, survives, so the unlearned model sends clean images
of every class to the target. On Blended models the collapse onto the target is transient (it
drifts to another class with more unlearning, ``shared/notes/backdoor-signal.md``; on our
Blended ResNet a second class caught up with the target within 6 steps of batch 128), so the
prediction histogram is read every few steps and the *first* class to dominate, with a clear lead
over the next, is taken.

Clean-label attacks (SIG) show the mirror image: the target's own images carried the trigger in
training, so its clean features are the weakest and the target *vanishes* from the predictions
before any class takes over. A class that vanishes while no class has collapsed yet is taken as
the suspected target (see ``VANISH_*`` in :mod:`onp.signal.config`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.eval.metrics import predict
from onp.signal.config import (
    ANOMALY_INDEX_THRESHOLD,
    MIN_IMAGES,
    VANISH_MIN_COUNT,
    SignalConfig,
)

log = logging.getLogger(__name__)

# 1.4826 * MAD estimates the standard deviation of normal data (Neural Cleanse's anomaly index).
_MAD_TO_STD = 1.4826
# Floor of the scaled MAD, so that identical shares of the other classes (often all 0 after a
# collapse) do not divide by zero: one image in a 512-image histogram.
_MIN_SPREAD = 1.0 / 512


@dataclass(frozen=True)
class UnlearnCheckpoint:
    """The model's predictions on the histogram probe after ``step`` ascent steps.

    Attributes:
        step: Ascent steps taken (0: the model as given).
        accuracy: Clean accuracy on the histogram probe, in ``[0, 1]``.
        counts: ``[K]`` number of probe images predicted as each class.
        shares: ``[K]`` collapse share of each class: among probe images whose label is not that
            class, the share predicted as it.
    """

    step: int
    accuracy: float
    counts: tuple[int, ...]
    shares: tuple[float, ...]

    @property
    def margin(self) -> float:
        """Largest share minus the second largest."""
        first, second = sorted(self.shares, reverse=True)[:2]
        return first - second

    def dominated(self, threshold: float, margin: float) -> bool:
        """Whether one class reached ``threshold`` and leads the next by ``margin``."""
        return max(self.shares) >= threshold and self.margin >= margin

    def at_floor(self, accuracy_floor: float) -> bool:
        """Whether clean accuracy is within ``accuracy_floor`` of chance (``1/K``)."""
        return self.accuracy <= 1.0 / len(self.counts) + accuracy_floor

    def vanished(self, initial: UnlearnCheckpoint, fraction: float) -> tuple[int, ...]:
        """Classes predicted at most ``fraction`` as often as at ``initial``, fewest first.

        Only classes that ``initial`` predicted for at least
        :data:`~onp.signal.config.VANISH_MIN_COUNT` images count (a class the model rarely
        predicts cannot vanish).
        """
        gone = [c for c, (now, before) in enumerate(zip(self.counts, initial.counts, strict=True))
                if before >= VANISH_MIN_COUNT and now <= fraction * before]
        return tuple(sorted(gone, key=lambda c: self.counts[c] / initial.counts[c]))

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as plain JSON values (shares rounded to 1e-4)."""
        return {"step": self.step, "accuracy": round(self.accuracy, 4),
                "counts": list(self.counts), "shares": [round(s, 4) for s in self.shares]}


@dataclass(frozen=True)
class TargetEstimate:
    """Which class the backdoor seems to point to, and how sure that is.

    Attributes:
        targets: Suspected target classes, most suspected first (usually one).
        shares: ``[K]`` collapse share of each class at the deciding checkpoint.
        anomaly_index: ``(top share - median share) / (1.4826 * MAD)`` across classes.
        margin: Top share minus the second-highest share.
        significant: A rule named the target: a class dominated (share >= the threshold, with
            the margin) and its anomaly index is at least Neural Cleanse's 2, or a class vanished.
        steps: Ascent steps taken.
        decided_at: Step of the deciding checkpoint.
        stop_reason: ``"dominance"``, ``"vanished"``, ``"accuracy-floor"``, ``"step-cap"`` or
            ``"diverged"``.
        history: Every checkpoint read, in order.
    """

    targets: tuple[int, ...]
    shares: tuple[float, ...]
    anomaly_index: float
    margin: float
    significant: bool
    steps: int
    decided_at: int
    stop_reason: str
    history: tuple[UnlearnCheckpoint, ...]

    @property
    def target(self) -> int:
        """The most suspected target class."""
        return self.targets[0]

    @property
    def decided(self) -> UnlearnCheckpoint:
        """The checkpoint that decided (step :attr:`decided_at`)."""
        return next(c for c in self.history if c.step == self.decided_at)

    def to_json(self) -> dict[str, Any]:
        """The estimate as plain JSON values, the histogram history included."""
        return {
            "targets": list(self.targets), "shares": [round(s, 4) for s in self.shares],
            "anomaly_index": round(self.anomaly_index, 3), "margin": round(self.margin, 4),
            "significant": self.significant, "steps": self.steps, "decided_at": self.decided_at,
            "stop_reason": self.stop_reason, "history": [c.to_json() for c in self.history],
        }


def collapse_shares(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per class ``c``: among images whose label is not ``c``, the share predicted as ``c``.

    Measuring among other-class images keeps a class's own (correct) predictions out of its score.

    Shapes:
        predictions, labels: ``[N]`` int64; returns ``[K]`` float in ``[0, 1]``.
    """
    hits = F.one_hot(predictions, num_classes).float()
    others = 1.0 - F.one_hot(labels, num_classes).float()
    eligible = others.sum(0)
    return (hits * others).sum(0) / eligible.clamp(min=1.0)


def anomaly_index(shares: torch.Tensor) -> float:
    """MAD-based anomaly index of the largest share (Neural Cleanse's, for the high tail).

    Shapes:
        shares: ``[K]`` float.
    """
    median = shares.median()
    spread = max(_MAD_TO_STD * float((shares - median).abs().median()), _MIN_SPREAD)
    return float((shares.max() - median) / spread)


def check_defense(defense: ImageSet, what: str) -> None:
    """Raise :class:`ONPInputError` unless ``defense`` has enough images of at least 2 classes."""
    present = int(torch.unique(defense.labels).numel())
    if len(defense) < MIN_IMAGES or present < 2:
        raise ONPInputError(
            f"{what}: expected a defense set of at least {MIN_IMAGES} images from at least 2 "
            f"classes, found {len(defense)} images of {present} class(es); use a larger defense set"
        )


def check_outputs(model: nn.Module, defense: ImageSet) -> None:
    """Raise :class:`ONPInputError` unless ``model`` gives one logit per class of ``defense``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(defense.images[:1].to(device))
    model.train(was_training)
    if logits.ndim != 2 or logits.shape[1] != defense.meta.num_classes:
        raise ONPInputError(
            f"model gives logits of shape {list(logits.shape)} but the defense set "
            f"{defense.meta.name!r} has {defense.meta.num_classes} classes; expected [1, "
            f"{defense.meta.num_classes}]"
        )


def _checkpoint(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, step: int
) -> UnlearnCheckpoint:
    predictions = predict(model, images)
    return UnlearnCheckpoint(
        step=step,
        accuracy=float((predictions == labels).float().mean()),
        counts=tuple(int(c) for c in torch.bincount(predictions, minlength=num_classes)),
        shares=tuple(float(s) for s in collapse_shares(predictions, labels, num_classes)),
    )


def _stop_reason(history: list[UnlearnCheckpoint], config: SignalConfig) -> str | None:
    """Why unlearning stops at the latest checkpoint (a decision or the floor), else ``None``.

    Dominance is checked first; a vanished class decides only while every class's share stays
    below ``config.vanish_max_share``.
    """
    latest = history[-1]
    if latest.dominated(config.dominance_threshold, config.dominance_margin):
        return "dominance"
    if len(history) > 1 and max(latest.shares) < config.vanish_max_share and (
        latest.vanished(history[0], config.vanish_fraction)
    ):
        return "vanished"
    if len(history) > 1 and latest.at_floor(config.accuracy_floor):
        return "accuracy-floor"
    return None


def _estimate(
    history: list[UnlearnCheckpoint], reason: str, steps: int, config: SignalConfig
) -> TargetEstimate:
    """Read the decision off the history: the dominant or vanished class, else the clearest lead."""
    decided_by_rule = reason in ("dominance", "vanished")
    # Without a decision, the checkpoint where one class led the others most clearly: on Blended
    # models the target leads early and other classes catch up as unlearning goes on.
    decided = history[-1] if decided_by_rule else max(history, key=lambda c: c.margin)
    shares = torch.tensor(decided.shares)
    order = torch.argsort(shares, descending=True, stable=True)
    if reason == "vanished":
        named = list(decided.vanished(history[0], config.vanish_fraction))
    else:
        named = [int(c) for c in order
                 if reason == "dominance" and shares[c] >= config.dominance_threshold]
    index = anomaly_index(shares)
    return TargetEstimate(
        targets=tuple(named) or (int(order[0]),),
        shares=decided.shares,
        anomaly_index=index,
        margin=decided.margin,
        significant=reason == "vanished" or (
            reason == "dominance" and index >= ANOMALY_INDEX_THRESHOLD),
        steps=steps,
        decided_at=decided.step,
        stop_reason=reason,
        history=tuple(history),
    )


def identify_target(
    model: nn.Module, defense: ImageSet, config: SignalConfig | None = None, seed: int = 0
) -> TargetEstimate:
    """Unlearn a copy of ``model`` on clean images; the first class it collapses onto is the target.

    ``model`` itself is not modified (a deep copy is unlearned). Every
    ``config.unlearn_check_every`` steps the copy classifies a fixed probe batch of defense
    images (eval mode); unlearning stops at the first checkpoint where a class takes at least
    ``config.dominance_threshold`` of the images of other classes and leads the next class by
    ``config.dominance_margin``, at the first where a class has vanished (its count fell to
    ``config.vanish_fraction`` of its count before unlearning) while every class's share stays
    below ``config.vanish_max_share`` (a clean-label target), when clean accuracy falls to
    ``1/K + config.accuracy_floor``, or after ``config.unlearn_max_steps`` steps. Without a
    dominant or vanished class, the checkpoint where the top class led the second by most
    decides (and the estimate is not significant).

    Args:
        model: The suspect classifier (takes ``[B, C, H, W]`` images in ``[0, 1]``).
        defense: Clean labelled images.
        config: Unlearning settings (default: :class:`SignalConfig`'s defaults).
        seed: Seeds the batch order and the histogram probe (default: ``0``).

    Returns:
        The estimate, with the histogram history.

    Raises:
        ONPInputError: With fewer than :data:`~onp.signal.config.MIN_IMAGES` images, fewer than 2
            classes, or a model whose logits do not match the dataset's classes.
    """
    config = config or SignalConfig()
    check_defense(defense, "identify_target")
    check_outputs(model, defense)
    num_classes = defense.meta.num_classes
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(defense), generator=generator)[: config.histogram_probe_size]
    probe_images, probe_labels = defense.images[probe], defense.labels[probe]
    work = copy.deepcopy(model)
    device = next(work.parameters()).device
    optimizer = torch.optim.SGD(work.parameters(), lr=config.unlearn_lr,
                                momentum=config.unlearn_momentum)
    history = [_checkpoint(work, probe_images, probe_labels, num_classes, 0)]
    order, cursor = torch.randperm(len(defense), generator=generator), 0
    step, reason = 0, "step-cap"
    bar = tqdm(total=config.unlearn_max_steps, desc="unlearning", leave=False, mininterval=1.0)
    while step < config.unlearn_max_steps:
        stop = _stop_reason(history, config)
        if stop is not None:
            reason = stop
            break
        if cursor >= len(order):
            order, cursor = torch.randperm(len(defense), generator=generator), 0
        batch = order[cursor : cursor + config.unlearn_batch_size]
        cursor += config.unlearn_batch_size
        work.train()
        loss = F.cross_entropy(work(defense.images[batch].to(device)),
                               defense.labels[batch].to(device))
        if not torch.isfinite(loss):
            reason = "diverged"
            break
        optimizer.zero_grad(set_to_none=True)
        (-loss).backward()  # gradient ascent: unlearn the clean task
        optimizer.step()
        step += 1
        bar.update(1)
        if step % config.unlearn_check_every == 0 or step == config.unlearn_max_steps:
            history.append(_checkpoint(work, probe_images, probe_labels, num_classes, step))
            bar.set_postfix(acc=f"{history[-1].accuracy:.2f}", top=f"{max(history[-1].shares):.2f}")
    bar.close()
    if reason == "step-cap":
        final = _stop_reason(history, config)
        if final in ("dominance", "vanished"):
            reason = final  # the checkpoint at the cap decided
    estimate = _estimate(history, reason, step, config)
    log.info(
        "signal/target: suspected %s (share %.2f, anomaly index %.1f, margin %.2f) after %d steps "
        "(%s)", list(estimate.targets), max(estimate.shares), estimate.anomaly_index,
        estimate.margin, step, reason,
    )
    return estimate

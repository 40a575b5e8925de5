"""The detector G: the suspect model B and its repair B' side by side, with an extra class N.

G answers one of ``N + 1`` classes: B''s class, or ``N`` ("backdoored") when the two models
disagree in the way the rule asks for. A trigger makes B answer the attack's target while B',
whose backdoor is removed, answers something else, so disagreement flags triggered inputs; on
clean inputs both models mostly agree. Rules (:data:`RULES`):

- ``disagree`` (default): flag when B and B' predict different classes;
- ``reject``: flag when they disagree *and* B' gives B's class a probability below
  ``threshold``; a disagreement where B' still finds B's answer plausible (a hard clean image)
  is answered with B''s class instead of an alarm;
- ``target``: flag when they disagree *and* B answers a suspected target class (the signal's,
  :mod:`onp.signal.target`); a trigger makes B answer the target, so any other disagreement is
  a clean image that the repair changed, answered with B's class (B is not pruned, so it is the
  more accurate on clean images). Only as good as the named target: a misnamed target lets
  triggered inputs through.

A saved detector is a folder: ``original/`` and ``repaired/`` bundles and ``detector.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onp.errors import ONPInputError
from onp.eval.metrics import DEFAULT_EVAL_BATCH, predict
from onp.io import atomic_path
from onp.models.bundle import Classifier, load_bundle, save_bundle

RULES = ("disagree", "reject", "target")
DEFAULT_RULE = "disagree"
AUTO_RULE = "auto"
"""``onp.apply``'s ``--detector-rule auto``: :func:`choose_rule` on held-in defense data."""
# auto: the rule with the best held-in clean accuracy among those that flag or answer the true
# class for at least this share (%) of the held-in probe's triggered images.
AUTO_MIN_FLAGGED_OR_TRUE = 98.0
# For "reject": B' must give B's class less than this probability to raise an alarm. The largest
# bound whose false alarms on held-in clean defense images stayed at or below 1% on the
# Fashion-MNIST BadNets ResNet (0.05 / 0.1 / 0.2 / 0.3: 0.4 / 1.0 / 2.2 / 3.2%; "disagree": 6.4%).
DEFAULT_THRESHOLD = 0.1
DETECTOR_FILE = "detector.json"
ORIGINAL_DIR, REPAIRED_DIR = "original", "repaired"
DETECTOR_VERSION = 1


def answering_logits(rule: str, original: torch.Tensor, repaired: torch.Tensor) -> torch.Tensor:
    """The logits whose class G gives where it does not flag: B''s, but B's under ``target``.

    Under ``target`` the unflagged disagreements are clean images, and B is not pruned.
    """
    return original if rule == "target" else repaired


def check_rule(rule: str, threshold: float, targets: Sequence[int] | None = None) -> None:
    """Raise :class:`ONPInputError` for a rule, threshold or target list G cannot use.

    That is an unknown rule, a threshold outside ``(0, 1]``, or the ``target`` rule with no
    targets (``targets=None``: not known yet, not checked).
    """
    if rule not in RULES:
        raise ONPInputError(f"detector rule: expected one of {RULES}, found {rule!r}")
    if not 0.0 < threshold <= 1.0:
        raise ONPInputError(f"detector threshold: expected a value in (0, 1], found {threshold}")
    if rule == "target" and targets is not None and not targets:
        raise ONPInputError("detector rule 'target': expected at least one suspected target class")


def choose_rule(
    scores: dict[tuple[str, float], dict[str, float | None]],
    min_flagged_or_true: float = AUTO_MIN_FLAGGED_OR_TRUE,
) -> tuple[str, float]:
    """The rule with the highest clean accuracy among those reaching ``min_flagged_or_true``.

    If none reaches it, the one with the highest flagged-or-true rate. Meant for scores on
    held-in defense data (clean images and the probe's triggered ones), never test data.

    Args:
        scores: ``(rule, threshold)`` to G's rates in % (``clean_accuracy``,
            ``flagged_or_true``), as :func:`onp.repair.report.rule_table` gives them.
        min_flagged_or_true: The bar, in %.
    """
    if not scores:
        raise ONPInputError("choose_rule: no rule was scored")

    def rate(key: tuple[str, float], name: str) -> float:
        value = scores[key].get(name)
        return -1.0 if value is None else float(value)

    passing = [k for k in scores if rate(k, "flagged_or_true") >= min_flagged_or_true]
    if passing:
        return max(passing, key=lambda k: rate(k, "clean_accuracy"))
    return max(scores, key=lambda k: rate(k, "flagged_or_true"))


def decide(
    original_logits: torch.Tensor,
    repaired_logits: torch.Tensor,
    rule: str = DEFAULT_RULE,
    threshold: float = DEFAULT_THRESHOLD,
    targets: Sequence[int] = (),
) -> torch.Tensor:
    """G's class for each input, from the two models' logits.

    Args:
        original_logits: B's logits.
        repaired_logits: B''s logits.
        rule: One of :data:`RULES` (default: ``"disagree"``).
        threshold: Probability bound of the ``reject`` rule (default: 0.1).
        targets: Suspected target classes of the ``target`` rule.

    Returns:
        ``[B]`` int64 in ``[0, N]``; ``N`` (the number of classes) means "backdoored".

    Shapes:
        original_logits, repaired_logits: ``[B, N]``.
    """
    check_rule(rule, threshold, targets)
    if original_logits.shape != repaired_logits.shape or original_logits.ndim != 2:
        raise ONPInputError(f"detector: expected two [B, N] logits, found "
                            f"{list(original_logits.shape)} and {list(repaired_logits.shape)}")
    original, repaired = original_logits.argmax(1), repaired_logits.argmax(1)
    flagged = original != repaired
    if rule == "reject":
        support = torch.softmax(repaired_logits.float(), 1).gather(1, original[:, None])[:, 0]
        flagged &= support < threshold
    if rule == "target":
        suspected = torch.tensor(list(targets), device=original.device)
        flagged &= torch.isin(original, suspected)
    answer = answering_logits(rule, original_logits, repaired_logits).argmax(1)
    return torch.where(flagged, torch.full_like(answer, original_logits.shape[1]), answer)


class BackdoorDetector(nn.Module):
    """G: runs B and B' and answers B''s class or the extra class ``N``.

    Args:
        original: The suspect model B.
        repaired: The repaired model B' (same classes and input shape).
        rule: One of :data:`RULES` (default: ``"disagree"``).
        threshold: Probability bound of the ``reject`` rule (default: 0.1).
        targets: Suspected target classes of the ``target`` rule.

    Shapes:
        input: ``[B, C, H, W]`` in ``[0, 1]``.
        output: ``[B, N + 1]`` probabilities: the answering model's softmax (B', or B under
            ``target``) with 0 for class ``N`` where G does not flag, a one-hot ``N`` where it
            does; the argmax is G's class.
    """

    def __init__(self, original: Classifier, repaired: Classifier, rule: str = DEFAULT_RULE,
                 threshold: float = DEFAULT_THRESHOLD, targets: Sequence[int] = ()) -> None:
        super().__init__()
        check_rule(rule, threshold, targets)
        a, b = original.spec, repaired.spec
        if a.num_classes != b.num_classes or tuple(a.input_shape) != tuple(b.input_shape):
            raise ONPInputError(
                f"detector: B and B' must agree on classes and input shape, found "
                f"{a.num_classes} {tuple(a.input_shape)} and {b.num_classes} "
                f"{tuple(b.input_shape)}")
        self.original, self.repaired = original.eval(), repaired.eval()
        self.rule, self.threshold = rule, float(threshold)
        self.targets = tuple(int(t) for t in targets)

    @property
    def num_classes(self) -> int:
        """``N``, the classes of B; G has ``N + 1``."""
        return int(self.original.spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """G's outputs: B''s (or B's) class probabilities, or a one-hot alarm on index ``N``.

        Shapes:
            x: ``[B, C, H, W]`` raw images; returns ``[B, N + 1]``, each row summing to 1.
        """
        original, repaired = self.original(x), self.repaired(x)
        classes = decide(original, repaired, self.rule, self.threshold, self.targets)
        flagged = classes == self.num_classes
        probs = torch.softmax(answering_logits(self.rule, original, repaired), 1)
        out = torch.cat([probs, torch.zeros_like(probs[:, :1])], 1)
        alarm = torch.zeros_like(out)
        alarm[:, -1] = 1.0
        return torch.where(flagged[:, None], alarm, out)

    def predict(self, images: torch.Tensor, batch_size: int = DEFAULT_EVAL_BATCH) -> torch.Tensor:
        """G's classes, ``[N_images]`` int64 in ``[0, N]``, for ``[N_images, C, H, W]`` images."""
        return predict(self, images, batch_size)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (what ``detector.json`` holds)."""
        return {"version": DETECTOR_VERSION, "rule": self.rule, "threshold": self.threshold,
                "targets": list(self.targets), "num_classes": self.num_classes,
                "backdoor_class": self.num_classes, "original": ORIGINAL_DIR,
                "repaired": REPAIRED_DIR}


def save_detector(detector: BackdoorDetector, directory: str | Path) -> Path:
    """Write G as a folder (two bundles and ``detector.json``) atomically; returns it."""
    directory = Path(directory)
    with atomic_path(directory, is_dir=True) as tmp:
        save_bundle(detector.original, tmp / ORIGINAL_DIR)
        save_bundle(detector.repaired, tmp / REPAIRED_DIR)
        (tmp / DETECTOR_FILE).write_text(json.dumps(detector.describe(), indent=2) + "\n")
    return directory


def load_detector(directory: str | Path, device: str | torch.device = "cpu") -> BackdoorDetector:
    """Load a folder written by :func:`save_detector`.

    Raises:
        ONPInputError: If ``detector.json`` or a bundle is missing or malformed.
    """
    directory = Path(directory)
    path = directory / DETECTOR_FILE
    if not path.is_file():
        raise ONPInputError(f"{directory}: not a detector folder ({DETECTOR_FILE} is missing)")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ONPInputError(f"{path}: not valid JSON ({error})") from error
    if payload.get("version") != DETECTOR_VERSION:
        raise ONPInputError(f"{path}: expected version {DETECTOR_VERSION}, found "
                            f"{payload.get('version')!r}")
    detector = BackdoorDetector(load_bundle(directory / ORIGINAL_DIR, device),
                                load_bundle(directory / REPAIRED_DIR, device),
                                payload.get("rule", DEFAULT_RULE),
                                float(payload.get("threshold", DEFAULT_THRESHOLD)),
                                [int(t) for t in payload.get("targets", [])])
    if detector.num_classes != payload.get("num_classes"):
        raise ONPInputError(f"{path}: num_classes {payload.get('num_classes')} disagrees with "
                            f"the bundles' {detector.num_classes}")
    return detector

"""Second opinion on a contested target: which candidate class a small universal trigger reaches.

Unlearning (:mod:`onp.signal.target`) reads the target off a prediction histogram. Its verdict is
*contested* in two cases seen on our Fashion-MNIST models (``benchmarks/signal_targets.py
--reach``):

- a class vanished before the deciding checkpoint, while another class already held more than
  the vanished rule's guard (SIG seed 2: the target 0 vanished, then its look-alike 6 dominated);
- the deciding checkpoint's clean accuracy was already at the accuracy floor (chance +
  ``accuracy_floor``), so the collapse is the unlearned net's, not a backdoor's (WaNet seed 2:
  class 1 dominated at 8.6% accuracy).

A backdoor is a shortcut to its target, so a contested verdict goes to the candidate that a
*small* universal trigger reaches most often: an additive perturbation of at most
:data:`REACH_EPS` per pixel or a smooth warp of at most :data:`REACH_SHIFT` pixels, fitted on the
fitting images and read on held-in images of other classes. An uncontested verdict stands:
on two of the three BadNets models the perturbation reaches the look-alike class 6 more often
than the patch target (80-91% against 60-63%, ``--reach-all``), so the reach test is no judge of
a patch backdoor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from onp.data.types import ImageSet
from onp.eval.metrics import predict
from onp.signal.config import SignalConfig
from onp.signal.perturbation import stamp_perturbation, universal_perturbation
from onp.signal.target import TargetEstimate
from onp.signal.warp import stamp_warp, universal_warp

log = logging.getLogger(__name__)

# Bounds of the reach test: the smallest of the judge's perturbation bounds
# (benchmarks/repair_settings.py) and the warp's own bound (onp.signal.warp).
REACH_EPS = 0.05
REACH_SHIFT = 0.5
REACH_STEPS = 200  # fitting steps per candidate and trigger kind (~10 s each on 2 cores)


@dataclass(frozen=True)
class CandidateReach:
    """How often small universal triggers towards one candidate reach it on held-in images.

    Attributes:
        target: The candidate class.
        perturbation: Share reached by the additive perturbation (``||d||_inf <= REACH_EPS``).
        warp: Share reached by the warp (offsets ``<= REACH_SHIFT`` pixels).
    """

    target: int
    perturbation: float
    warp: float

    @property
    def reach(self) -> float:
        """The higher of the two shares."""
        return max(self.perturbation, self.warp)


def first_vanished(estimate: TargetEstimate, config: SignalConfig) -> tuple[int, ...]:
    """Classes that had vanished at the first checkpoint before the deciding one with any.

    A class has vanished when its count is at most ``config.vanish_fraction`` of its count
    before unlearning; ``()`` when none had.
    """
    for checkpoint in estimate.history[1:]:
        if checkpoint.step >= estimate.decided_at:
            break
        gone = checkpoint.vanished(estimate.history[0], config.vanish_fraction)
        if gone:
            return gone
    return ()


def vanished_rivals(estimate: TargetEstimate, config: SignalConfig) -> tuple[int, ...]:
    """:func:`first_vanished`, unless the vanished rule itself gave the verdict (then ``()``)."""
    return () if estimate.stop_reason == "vanished" else first_vanished(estimate, config)


def contested(estimate: TargetEstimate, config: SignalConfig) -> str | None:
    """Why the unlearning's verdict is contested (see the module docstring), else ``None``."""
    if vanished_rivals(estimate, config):
        return "a class vanished before the decision"
    if estimate.decided.at_floor(config.accuracy_floor):
        return "decided at the accuracy floor"
    return None


def candidate_targets(estimate: TargetEstimate, config: SignalConfig) -> tuple[int, ...]:
    """The named target, then the classes that its contest puts in question.

    When classes vanished before the decision, those are :func:`vanished_rivals` (the
    clean-label pattern: the target vanished and a look-alike absorbed its images). Otherwise
    (a collapse at the accuracy floor, or an uncontested verdict measured on request) it is the
    runner-up at the deciding checkpoint. The runner-up is no candidate of a vanished contest:
    no rule named it, and the perturbation reaches a look-alike class about as often as the
    target (Blended seed 2: the runner-up 6 at 92.8% against the target 0 at 91.2%).
    """
    others = vanished_rivals(estimate, config)
    if not others:
        shares = estimate.decided.shares
        order = sorted(range(len(shares)), key=lambda c: -shares[c])
        others = tuple(c for c in order if c != estimate.target)[:1]
    return tuple(dict.fromkeys((estimate.target, *others)))


def reach_of(
    model: nn.Module, fit: ImageSet, held_in: ImageSet, target: int, seed: int = 0,
    steps: int = REACH_STEPS,
) -> CandidateReach:
    """Fit both small triggers towards ``target`` on ``fit``; read them on ``held_in``.

    Images of ``target`` itself are left out of both parts. ``model`` is not modified.
    """
    fit_images = fit.images[fit.labels != target]
    read = held_in.images[held_in.labels != target]
    rates = []
    for fitter, stamp, bound in ((universal_perturbation, stamp_perturbation, REACH_EPS),
                                 (universal_warp, stamp_warp, REACH_SHIFT)):
        params = fitter(model, fit_images, target, bound, steps=steps, seed=seed)
        rates.append(float((predict(model, stamp(read, params)) == target).float().mean()))
    return CandidateReach(target, *rates)


def arbitrate_target(
    model: nn.Module, fit: ImageSet, held_in: ImageSet, estimate: TargetEstimate,
    config: SignalConfig, seed: int = 0, measure_uncontested: bool = False,
) -> tuple[int, list[CandidateReach]]:
    """The unlearning's target, or if contested the candidate small triggers reach most often.

    A verdict is contested per :func:`contested`; the candidates are
    :func:`candidate_targets`. Ties go to the earlier candidate, so the unlearning's own answer
    wins a tie.

    Args:
        model: The suspect model (not modified).
        fit: Defense images the candidates' universal triggers are fitted on.
        held_in: Defense images each trigger's reach is read on.
        estimate: The unlearning's verdict and its history.
        config: The signal's settings (what makes a verdict contested, the candidates).
        seed: Seed of the trigger fits.
        measure_uncontested: Fit the candidates of an uncontested verdict too, for the record
            (``benchmarks/signal_targets.py --reach-all``); the verdict still stands.

    Returns:
        ``(target, reaches)``, one reach per candidate in candidate order (none when the
        verdict is not contested and ``measure_uncontested`` is off).
    """
    reason = contested(estimate, config)
    if reason is None and not measure_uncontested:
        return estimate.target, []
    reaches = [reach_of(model, fit, held_in, c, seed) for c in candidate_targets(estimate, config)]
    if reason is None:
        return estimate.target, reaches
    log.info("signal/arbitration: %s", reason)
    best = max(reaches, key=lambda r: r.reach)  # max keeps the first of equals
    log.info("signal/arbitration: %s -> %d",
             ", ".join(f"{r.target}: {r.perturbation:.2f}/{r.warp:.2f}" for r in reaches),
             best.target)
    return best.target, reaches

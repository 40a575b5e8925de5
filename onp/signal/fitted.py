"""Universal triggers fitted towards a suspected target: the kinds, the fitted trigger, the fit.

Two kinds, each a fit and a stamp: an additive perturbation (:mod:`onp.signal.perturbation`)
and a smooth warp (:mod:`onp.signal.warp`). The repair stamps them on fitting images to unlearn
them and re-fits them after every round (:mod:`onp.repair.unlearn`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from onp.signal.perturbation import stamp_perturbation, universal_perturbation
from onp.signal.warp import stamp_warp, universal_warp

# Images per step of every universal-trigger fit during repair (the first fit, the refreshes and
# the detector's fresh probe), for speed: the fits were 298 of 547 s of a profiled 3-round
# apply. Chosen on the BadNets and Blended seed-0 ResNets by benchmarks/repair_settings.py
# (held-in CA minus the judge's mean, averaged over both; rule fixed before the runs: the
# smallest batch within 1 point of 128's 88.9): 64 scored 88.4, 32 87.5; the repair took 465 s
# at 64 and 320 s at 32 against 768 s at 128 (docs/research/repair.md). The judge of that script
# keeps
# the fits' own 128 whatever this is.
FIT_BATCH_SIZE = 64

UNIVERSAL_KINDS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "perturbation": (universal_perturbation, stamp_perturbation),
    "warp": (universal_warp, stamp_warp),
}
"""Kind -> (fit ``(model, images, target, bound, steps, batch_size=, seed=, start=)``, stamp
``(images, params)``)."""


@dataclass(frozen=True)
class UniversalTrigger:
    """One trigger shared by all images, fitted towards a target.

    Attributes:
        kind: A key of :data:`UNIVERSAL_KINDS`: ``perturbation`` (``params`` ``[1, C, H, W]``,
            bound = largest change per pixel) or ``warp`` (``params`` ``[1, 2, k, k]`` control
            offsets, bound = largest offset in pixels).
        bound: The bound the fit keeps to.
        params: The fitted parameters.
    """

    kind: str
    bound: float
    params: torch.Tensor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` with this trigger (same shape)."""
        return UNIVERSAL_KINDS[self.kind][1](images, self.params)


def fit_universal(
    kind: str, model: nn.Module, images: torch.Tensor, target: int, bound: float, steps: int,
    seed: int = 0, start: UniversalTrigger | None = None, batch_size: int = FIT_BATCH_SIZE,
) -> UniversalTrigger:
    """Fit a trigger of ``kind`` sending ``images`` to ``target``; ``model`` is not modified.

    ``start`` warm-starts it; each step reads ``batch_size`` images.
    """
    if kind not in UNIVERSAL_KINDS:
        raise ValueError(f"fit_universal: kind must be one of {sorted(UNIVERSAL_KINDS)}, "
                         f"found {kind!r}")
    fit = UNIVERSAL_KINDS[kind][0]
    params = fit(model, images, target, bound, steps, batch_size=batch_size, seed=seed,
                 start=None if start is None else start.params)
    return UniversalTrigger(kind, bound, params)

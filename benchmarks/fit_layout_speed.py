r"""Seconds per universal-trigger fit through a frozen copy in the default vs channels-last layout.

Alternates the two layouts in one process (``--repeats`` times each), swapping the copy
function :func:`onp.signal.universal.fit_universal_trigger` makes its frozen model with, and
prints the seconds of every fit. Random images stand in for defense data: only the time is read.

Example::

    python benchmarks/fit_layout_speed.py --model runs/bench-fmnist-a/models/badnets-s0/model
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import onp.signal.universal as universal
from onp.models.bundle import load_bundle
from onp.models.layout import channels_last_copy
from onp.signal.fitted import fit_universal

BOUNDS = {"perturbation": 0.2, "warp": 0.5}  # the apply defaults' eps and warp shift
LAYOUTS = {"default": copy.deepcopy, "channels_last": channels_last_copy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60, help="steps per fit (a round's refresh)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_bundle(args.model)
    images = torch.rand(600, *model.spec.input_shape)
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for layout, make_copy in LAYOUTS.items():
            universal.channels_last_copy = make_copy  # type: ignore[assignment]
            for kind, bound in BOUNDS.items():
                start = time.perf_counter()
                fit_universal(kind, model, images, 0, bound, args.steps, seed=1)
                seconds.setdefault((layout, kind), []).append(time.perf_counter() - start)
    universal.channels_last_copy = channels_last_copy
    for (layout, kind), values in seconds.items():
        print(f"{layout:14s} {kind:13s}", " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()

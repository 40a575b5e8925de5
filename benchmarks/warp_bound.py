r"""How often a universal warp of each bound fools each model: the check behind ``WARP_MAX_SHIFT``.

For each bundle the defense set is split as ``onp.apply`` splits it; the fitting part names the
suspected target by unlearning (trigger-free), a warp towards it is fitted at each ``--bounds``
value on the fitting images of other classes, and its success is read on held-in images of other
classes. No test data is read. A bound is useful when it fools a model with a warping backdoor
and rarely a model without one: a warp that also fools clean features would, once unlearned,
cost clean accuracy.

    python benchmarks/warp_bound.py runs/bench-fmnist-b/models/badnets-s0/model \
        runs/bench-fmnist/models/wanet-s0/model --bounds 0.5 1 1.5 --out runs/warp-bound.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from onp.data.splits import split_defense
from onp.eval.metrics import predict
from onp.io import write_json
from onp.signal import SignalConfig, identify_target
from onp.signal.perturbation import PERTURBATION_STEPS
from onp.signal.warp import stamp_warp, universal_warp
from onp.subjects import load_subject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="bundle folders")
    parser.add_argument("--bounds", nargs="+", type=float, default=[0.5, 1.0, 1.5],
                        help="largest offsets to try, in pixels")
    parser.add_argument("--steps", type=int, default=PERTURBATION_STEPS)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the readings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = SignalConfig()
    header = ["model", "suspected target"] + [f"warp {b:g} px: held-in success %"
                                              for b in args.bounds]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    records = []
    for path in args.models:
        subject = load_subject(path, args.dataset)
        fit, held_in = split_defense(subject.defense, config.held_in_fraction, args.seed)
        target = identify_target(subject.model, fit, config, args.seed).targets[0]
        others = fit.images[fit.labels != target]
        held = held_in.images[held_in.labels != target]
        success = {}
        for bound in args.bounds:
            control = universal_warp(subject.model, others, target, bound, args.steps,
                                     seed=args.seed)
            hits = predict(subject.model, stamp_warp(held, control)) == target
            success[bound] = round(100 * float(hits.float().mean()), 1)
        print(f"| {path} | {target} | " + " | ".join(str(success[b]) for b in args.bounds)
              + " |", flush=True)
        records.append({"model": str(path), "target": int(target), "held_in_images": len(held),
                        "steps": args.steps, "success_percent": success})
    if args.out is not None:
        write_json(args.out, records)


if __name__ == "__main__":
    main()

"""Which class the trigger-free signal names, on infected bundles whose attack is known.

For each bundle the defense set is split as ``onp.apply`` splits it (``--seed``, or the seed
after a colon: ``runs/bench-fmnist/models/sig-s1/model:1``), the fitting part is unlearned
(:func:`~onp.signal.target.identify_target`) and the named class is printed next to the attack's
true target, which only this table reads. The histogram history goes to ``--out`` as JSON.
With ``--reach``, the candidates' reach (:mod:`onp.signal.candidates`: the share of held-in
images that small universal triggers towards each candidate send there) and the arbitrated
target are added; ``--reach-all`` measures the candidates of uncontested verdicts too (the
arbitration still leaves those verdicts as they are).

    python benchmarks/signal_targets.py runs/bench-fmnist/models/sig-s1/model:1 --out T.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from onp.data.splits import split_defense
from onp.io import write_json
from onp.signal import SignalConfig, identify_target
from onp.signal.candidates import arbitrate_target
from onp.subjects import load_subject

COLUMNS = ("model", "seed", "true target", "named", "rule", "step", "clean accuracy then",
           "reach (perturbation/warp, %)", "arbitrated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="bundle folders, each optionally :SEED")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0, help="seed where a model names none")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the histories")
    parser.add_argument("--reach", action="store_true", help="add the candidates' reach")
    parser.add_argument("--reach-all", action="store_true",
                        help="with --reach: measure the candidates of uncontested verdicts too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = SignalConfig()
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    records = []
    for spec in args.models:
        path, _, seed_text = spec.partition(":")
        seed = int(seed_text) if seed_text else args.seed
        subject = load_subject(path, args.dataset)
        if subject.test_poisoned is None:
            raise SystemExit(f"{path}: the bundle records no attack, so its target is unknown")
        true = sorted({int(t) for t in torch.unique(subject.test_poisoned.target_labels)})
        fit, held_in = split_defense(subject.defense, config.held_in_fraction, seed)
        estimate = identify_target(subject.model, fit, config, seed)
        name = Path(path).parent.name if Path(path).name == "model" else Path(path).name
        record = {"model": path, "seed": seed, "true_targets": true,
                  "estimate": estimate.to_json()}
        reach_text, arbitrated = "—", "—"
        if args.reach:
            arbitrated, reaches = arbitrate_target(subject.model, fit, held_in, estimate, config,
                                                   seed, measure_uncontested=args.reach_all)
            reach_text = ", ".join(f"{r.target}: {100 * r.perturbation:.1f}/{100 * r.warp:.1f}"
                                   for r in reaches)
            record["reach"] = [vars(r) for r in reaches]
            record["arbitrated"] = arbitrated
        print(f"| {name} | {seed} | {true} | {list(estimate.targets)} | {estimate.stop_reason} "
              f"| {estimate.decided_at} | {100 * estimate.decided.accuracy:.1f} | {reach_text} "
              f"| {arbitrated} |", flush=True)
        records.append(record)
    if args.out is not None:
        write_json(args.out, records)


if __name__ == "__main__":
    main()

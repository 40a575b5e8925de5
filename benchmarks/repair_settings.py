"""Compare prune-and-regrow settings on one model from one seed mask (how the defaults were chosen).

The signal (target, patch, perturbation) is estimated once; then for every settings dict (JSON
:class:`~onp.repair.pipeline.ApplyConfig` overrides) the rounds run from the same seed mask.
The choice between settings is meant to be made on the held-in columns (CA and proxy ASR of the
kept round, proxy from the re-fitted perturbation); the test columns are printed for the record
and must not drive it.

    python benchmarks/repair_settings.py --model runs/bench-attacks/badnets/model \\
        --seed-mask runs/apply-badnets/masks.json \\
        --settings '[{"unlearn_fraction": 0.5, "distill_weight": 0.5},
                     {"unlearn_fraction": 0.3, "distill_weight": 0.25}]' --out runs/repair-settings
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from onp.eval.metrics import accuracy_of, predict
from onp.graph.groups import trace_groups
from onp.io import atomic_path, write_json
from onp.repair.pipeline import ApplyConfig, load_inputs, make_probe
from onp.repair.sparse import prune_and_regrow

log = logging.getLogger("repair_settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="bundle made by onp.attack")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed-mask", type=Path, required=True,
                        help="masks.json of an onp.apply run (its seed_pruned nodes)")
    parser.add_argument("--settings", type=json.loads, required=True,
                        help="JSON list of ApplyConfig overrides, one run each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/repair-settings"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = ApplyConfig(model=args.model, dataset=args.dataset, seed=args.seed)
    inputs = load_inputs(base)
    stage = make_probe(inputs, base)
    groups = trace_groups(inputs.model, tuple(inputs.model.spec.input_shape))
    seed_mask = torch.ones(groups.num_nodes, dtype=torch.bool)
    seed_mask[json.loads(args.seed_mask.read_text())["seed_pruned"]] = False
    assert inputs.test_clean is not None and inputs.test_poisoned is not None
    runs, lines = [], ["| settings | kept round | held-in CA | held-in proxy ASR | test CA | "
                       "test ASR | seconds |", "|---|---|---|---|---|---|---|"]
    for overrides in args.settings:
        config = replace(base, **overrides)
        start = time.perf_counter()
        result = prune_and_regrow(inputs.model, groups, stage.fit, stage.held_in,
                                  stage.selection_probe, seed_mask, config.sparse_config,
                                  args.seed, inputs.test_poisoned, copy.deepcopy(stage.stamp))
        seconds = time.perf_counter() - start
        kept = result.rounds[result.best_round]
        test_ca = accuracy_of(predict(result.model, inputs.test_clean.images),
                              inputs.test_clean.labels)
        test_asr = inputs.test_poisoned.asr_of(predict(result.model,
                                                       inputs.test_poisoned.images))
        runs.append({"settings": overrides, "best_round": result.best_round,
                     "rounds": [r.to_json() for r in result.rounds],
                     "test_clean_accuracy": round(test_ca, 4),
                     "test_asr": round(test_asr, 4), "seconds": round(seconds, 1)})
        lines.append(f"| {json.dumps(overrides)} | {result.best_round} | "
                     f"{100 * kept.clean_accuracy:.1f} | {100 * kept.proxy_asr:.1f} | "
                     f"{100 * test_ca:.2f} | {100 * test_asr:.2f} | {seconds:.0f} |")
        log.info("%s", lines[-1])
    write_json(args.out / "repair_settings.json",
               {"model": args.model, "seed_mask": str(args.seed_mask), "runs": runs,
                "signal": stage.record, "torch_threads": torch.get_num_threads()})
    with atomic_path(args.out / "repair_settings.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

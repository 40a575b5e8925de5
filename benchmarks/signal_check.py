r"""Check the trigger-free backdoor signal on a real infected model.

Runs :func:`onp.signal.estimate_probe` on the defense split the model's attacker never saw, and
writes a JSON with the suspected target against the true one, the proxy ASR of the unpruned
model against its true ASR on the poisoned test set, and the time taken.

    python benchmarks/signal_check.py --model runs/bench-attacks/badnets/model \
        --attack badnets --out runs/signal-check/badnets.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from onp.attacks import AttackConfig, build_attack, make_poisoned_test_set
from onp.attacks.built import attack_from_description
from onp.data.registry import load_train_test
from onp.data.splits import make_splits
from onp.eval.metrics import accuracy_of, attack_success_rate, predict
from onp.io import write_json
from onp.models.bundle import load_bundle
from onp.seeding import seed_everything
from onp.signal import (
    SignalConfig,
    estimate_probe,
    known_trigger_probe,
    proxy_asr,
)

log = logging.getLogger("signal_check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--attack", default=None,
                        help="attack kind (target 0, seed 0); default: the bundle's own attack")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--defense-size", type=float, default=None,
                        help="defense split size (default: the bundle's provenance, else 0.05)")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="seed of the splits (default: the bundle's provenance, else 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the signal")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_bundle(args.model)
    # The defense set must be the split the attacker never trained on: the bundle's own split.
    provenance = model.spec.provenance
    defense_size = args.defense_size or provenance.get("defense_size", 0.05)
    split_seed = args.split_seed if args.split_seed is not None else provenance.get("split_seed", 0)
    train, test = load_train_test(args.dataset)
    splits = make_splits(train, test, defense_size=defense_size, seed=split_seed)
    if args.attack is not None:
        attack = build_attack(AttackConfig(kind=args.attack, target=0, seed=0),
                              train.meta.image_shape)
    else:
        attack = attack_from_description(model.spec.attack or {})
    poisoned = make_poisoned_test_set(splits.test_poison_source, attack)
    true_asr = attack_success_rate(predict(model, poisoned.images), poisoned.true_labels,
                                   poisoned.target_labels)
    clean_accuracy = accuracy_of(predict(model, splits.test_clean.images), splits.test_clean.labels)

    seed_everything(args.seed)
    result = estimate_probe(model, splits.defense, SignalConfig(), seed=args.seed)
    # The real trigger on the same held-in images: how far the synthesized probe is from it.
    known = known_trigger_probe(attack, splits.defense.images, splits.defense.labels)
    report = {
        "model": str(args.model), "attack": attack.config.kind, "split_seed": split_seed,
        "signal_seed": args.seed,
        "true_targets": list(attack.targets), "suspected_targets": list(result.estimate.targets),
        "target_correct": result.estimate.target in attack.targets,
        "significant": result.estimate.significant,
        "proxy_asr_unpruned": round(result.initial_proxy_asr, 4),
        "true_asr": round(true_asr, 4),
        "known_trigger_asr_on_defense": round(proxy_asr(model, known), 4),
        "clean_accuracy": round(clean_accuracy, 4),
        "estimate_seconds": round(result.seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "signal": result.to_json(),
    }
    write_json(args.out, report)
    summary = {k: v for k, v in report.items() if k != "signal"}
    log.info("signal check: %s -> %s", summary, args.out)


if __name__ == "__main__":
    main()

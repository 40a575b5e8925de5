"""The attack success rate a never-poisoned model shows: the floor an ASR bar sits on.

A model trained on clean data only (``python -m onp.attack --attack none``) still sends some
triggered images to the target class: classes that look like the target (on Fashion-MNIST,
shirts and pullovers next to T-shirts), and images the trigger covers. This script reads, for
each infected bundle, its held-out poisoned test set (the one every table's ASR is read on) and
prints the ASR of each model on it, with the true classes the target predictions come
from, and the *untriggered target rate*: the share of the held-out clean test images of other
classes that the model sends to the (single) target without any trigger. A model's ASR minus
its untriggered rate is what the trigger itself adds. Any model can be read this way, a
repaired B' as well as a clean reference. Test data only measures here; nothing is chosen.

    python benchmarks/clean_floor.py --models runs/clean/s0/model \
        --infected runs/bench-fmnist-a/models/badnets-s0/model --out runs/clean/floor.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import torch

from onp.data.types import ImageSet
from onp.eval.metrics import attack_success_rate, predict
from onp.io import write_json
from onp.models.loading import load_model
from onp.subjects import Subject, load_subject

TOP_SOURCES = 3  # true classes listed per cell, by how many of their images reach the target


def load_infected(infected: str, dataset: str) -> Subject:
    """The infected bundle's subject (its held-out test sets), built once per bundle."""
    subject = load_subject(infected, dataset)
    if subject.test_poisoned is None:
        raise SystemExit(f"{infected}: the bundle records no attack, so there is no trigger")
    return subject


def read_on(model: torch.nn.Module, subject: Subject) -> dict:
    """ASR of ``model`` on ``subject``'s poisoned test set, and the untriggered target rate.

    Returns the ASR, its sources, and the target rate on ``subject``'s clean test set.
    """
    poisoned = subject.test_poisoned
    predictions = predict(model, poisoned.images)
    eligible = poisoned.true_labels != poisoned.target_labels
    hits = (predictions == poisoned.target_labels) & eligible
    classes = int(poisoned.true_labels.max()) + 1
    sources = torch.bincount(poisoned.true_labels[hits], minlength=classes)
    top = torch.argsort(sources, descending=True)[:TOP_SOURCES]
    return {
        "attack": subject.model.spec.attack["config"]["kind"],
        "targets": sorted({int(t) for t in torch.unique(poisoned.target_labels)}),
        "eligible": int(eligible.sum()),
        "asr": 100 * attack_success_rate(predictions, poisoned.true_labels,
                                         poisoned.target_labels),
        "sources": {int(c): int(sources[c]) for c in top if int(sources[c]) > 0},
        "untriggered": untriggered_rate(model, subject.test_clean, poisoned.target_labels),
    }


def untriggered_rate(
    model: torch.nn.Module, clean: ImageSet, targets: torch.Tensor
) -> float | None:
    """Percent of ``clean``'s images of other classes that ``model`` calls the target.

    ``None`` when the attack has several targets.
    """
    unique = torch.unique(targets)
    if len(unique) != 1:
        return None
    target = int(unique[0])
    others = clean.labels != target
    return 100 * float((predict(model, clean.images[others]) == target).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True,
                        help="model bundles to read: clean references (or a repaired B')")
    parser.add_argument("--infected", nargs="+", required=True,
                        help="infected bundles whose poisoned test sets are read")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("| model | infected | target | ASR (%) | untriggered target rate (%) | "
          "target hits by true class |\n|---|---|---|---|---|---|")
    models = {path: load_model(path).eval() for path in args.models}
    rows = []
    for infected in args.infected:
        subject = load_infected(infected, args.dataset)
        for path, model in models.items():
            row = {"model": path, "infected": infected, **read_on(model, subject)}
            rows.append(row)
            sources = ", ".join(f"{c}: {n}" for c, n in row["sources"].items())
            untriggered = "—" if row["untriggered"] is None else f"{row['untriggered']:.2f}"
            print(f"| {path} | {infected} | {row['targets']} | {row['asr']:.2f} | "
                  f"{untriggered} | {sources} |", flush=True)
    summary = summarize(rows)
    print("\n| attack | ASR (%) mean | min | max | readings |\n|---|---|---|---|---|")
    for attack, stats in summary.items():
        print(f"| {attack} | {stats['mean']:.2f} | {stats['min']:.2f} | {stats['max']:.2f} | "
              f"{stats['n']} |")
    if args.out is not None:
        write_json(args.out, {"rows": rows, "by_attack": summary})


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, min and max ASR per attack over every (model, infected bundle) reading."""
    by_attack: dict[str, list[float]] = {}
    for row in rows:
        by_attack.setdefault(row["attack"], []).append(row["asr"])
    return {attack: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "n": len(v)}
            for attack, v in by_attack.items()}


if __name__ == "__main__":
    main()

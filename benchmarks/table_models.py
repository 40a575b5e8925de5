"""Train the fresh Fashion-MNIST models of the pruning-only table (nothing was chosen on them).

    python benchmarks/table_models.py --out runs/table-models --seeds 10 11 12

Seeds 10-12, attacks BadNets, Blended, WaNet, SIG and multi-trigger (a BadNets patch and a
Blended image to two targets), each at ``onp.attack``'s defaults (default ResNet, 4 epochs, 5%
defense split). The target class is drawn per seed, ``numpy.random.default_rng(seed)``'s first
integer below 10 (seed 10: 7, 11: 1, 12: 6); the multi attack's second target is the next class.
A model whose ``record.json`` exists is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from onp.attacks.train import AttackRunConfig, run_attack

ATTACKS = ("badnets", "blended", "wanet", "sig", "multi")
NUM_CLASSES = 10


def drawn_target(seed: int) -> int:
    return int(np.random.default_rng(seed).integers(NUM_CLASSES))


def attack_settings(attack: str, seed: int) -> dict[str, Any]:
    target = drawn_target(seed)
    if attack != "multi":
        return {"attack": attack, "target": target}
    return {"attack": "multi", "multi": [
        {"kind": "badnets", "target": target},
        {"kind": "blended", "target": (target + 1) % NUM_CLASSES}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/table-models"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    args = parser.parse_args()
    for seed in args.seeds:
        for attack in args.attacks:
            folder = args.out / f"{attack}-s{seed}"
            if (folder / "record.json").is_file():
                print(f"reusing {folder}")
                continue
            record = run_attack(AttackRunConfig(dataset="fashion-mnist", seed=seed,
                                                out=str(folder), **attack_settings(attack, seed)))
            print(f"{folder}: {record}")


if __name__ == "__main__":
    main()

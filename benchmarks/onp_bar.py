"""Issue 6's bar, read off a finished benchmark: ONP against the best baseline on each attack.

The bar: on every attack, ONP's clean accuracy (CA) is within 1 point of the CA of the best
baseline, the baseline with the highest mean DER on that attack, and ONP's attack success rate
(ASR) is at most 2%. Means are taken over the seeds whose cells finished. Prints two markdown
tables: the bar per attack, and ONP's cells per seed next to the infected model's CA (issue 5's
CA bar is B's CA minus 1 point).

    python benchmarks/onp_bar.py runs/bench-fmnist-3seeds/results.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

CA_MARGIN = 1.0  # points of CA ONP may trail the best baseline by
ASR_LIMIT = 2.0  # ONP's ASR ceiling, in %
NOT_BASELINES = ("none", "onp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json of onp.benchmark")
    args = parser.parse_args()
    cells = [c for c in json.loads(args.results.read_text())["cells"] if c["status"] == "ok"]
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for cell in cells:
        by_key[cell["attack"], cell["defense"]].append(cell)
    attacks = list(dict.fromkeys(c["attack"] for c in cells))

    def average(attack: str, defense: str, field: str) -> float:
        return 100 * mean(c[field] for c in by_key[attack, defense])

    print("| attack | seeds | ONP CA / ASR | best baseline (by DER) CA / ASR "
          "| ONP CA − baseline CA | bar |\n|---|---|---|---|---|---|")
    for attack in attacks:
        baselines = {d for a, d in by_key if a == attack and d not in NOT_BASELINES}
        best = max(sorted(baselines), key=lambda d: average(attack, d, "der"))
        ca, asr = average(attack, "onp", "clean_accuracy"), average(attack, "onp",
                                                                     "attack_success_rate")
        best_ca = average(attack, best, "clean_accuracy")
        met = ca >= best_ca - CA_MARGIN and asr <= ASR_LIMIT
        print(f"| {attack} | {len(by_key[attack, 'onp'])} | {ca:.2f} / {asr:.2f} | {best} "
              f"{best_ca:.2f} / {average(attack, best, 'attack_success_rate'):.2f} | "
              f"{ca - best_ca:+.2f} | {'met' if met else 'missed'} |")
    print("\n| attack | seed | B CA | ONP CA | ONP CA − (B CA − 1) | ONP ASR |\n"
          "|---|---|---|---|---|---|")
    for attack in attacks:
        for cell in sorted(by_key[attack, "onp"], key=lambda c: c["seed"]):
            before, after = 100 * cell["ca_before"], 100 * cell["clean_accuracy"]
            print(f"| {attack} | {cell['seed']} | {before:.2f} | {after:.2f} | "
                  f"{after - (before - CA_MARGIN):+.2f} | "
                  f"{100 * cell['attack_success_rate']:.2f} |")


if __name__ == "__main__":
    main()

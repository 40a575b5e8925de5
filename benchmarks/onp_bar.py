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
from pathlib import Path

from onp.suite.config import NO_DEFENSE
from onp.suite.runner import OK, CellResult
from onp.suite.tables import mean_percent

CA_MARGIN = 1.0  # points of CA ONP may trail the best baseline by
ASR_LIMIT = 2.0  # ONP's ASR ceiling, in %
ONP = "onp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json of onp.benchmark")
    args = parser.parse_args()
    cells = [CellResult(**c) for c in json.loads(args.results.read_text())["cells"]]
    done = [c for c in cells if c.status == OK]
    attacks = list(dict.fromkeys(c.attack for c in done))
    onp_cells = {a: sorted((c for c in done if c.attack == a and c.defense == ONP),
                           key=lambda c: c.seed) for a in attacks}

    def average(attack: str, defense: str, rate: str) -> float:
        value = mean_percent(done, attack, defense, rate)
        assert value is not None  # only defenses with finished cells are asked for
        return value

    print("| attack | seeds | ONP CA / ASR | best baseline (by DER) CA / ASR "
          "| ONP CA − baseline CA | bar |\n|---|---|---|---|---|---|")
    for attack in attacks:
        baselines = sorted({c.defense for c in done if c.attack == attack} - {NO_DEFENSE, ONP})
        best = max(baselines, key=lambda d: average(attack, d, "der"))
        ca, asr = average(attack, ONP, "clean_accuracy"), average(attack, ONP,
                                                                  "attack_success_rate")
        best_ca = average(attack, best, "clean_accuracy")
        met = ca >= best_ca - CA_MARGIN and asr <= ASR_LIMIT
        print(f"| {attack} | {len(onp_cells[attack])} | {ca:.2f} / {asr:.2f} | {best} "
              f"{best_ca:.2f} / {average(attack, best, 'attack_success_rate'):.2f} | "
              f"{ca - best_ca:+.2f} | {'met' if met else 'missed'} |")
    print("\n| attack | seed | B CA | ONP CA | ONP CA − (B CA − 1) | ONP ASR |\n"
          "|---|---|---|---|---|---|")
    for attack in attacks:
        for cell in onp_cells[attack]:
            assert cell.ca_before is not None and cell.clean_accuracy is not None
            assert cell.attack_success_rate is not None  # a finished cell has every rate
            before, after = 100 * cell.ca_before, 100 * cell.clean_accuracy
            print(f"| {attack} | {cell.seed} | {before:.2f} | {after:.2f} | "
                  f"{after - (before - CA_MARGIN):+.2f} | "
                  f"{100 * cell.attack_success_rate:.2f} |")


if __name__ == "__main__":
    main()

"""What ``--detector-rule auto`` gives on finished ``onp.apply`` runs, from their reports.

B' does not depend on G's rule, and every report scores all of
:data:`~onp.repair.report.ALTERNATIVE_RULES` on held-in defense data (``G_rules_held_in``) and on
the test sets (``test.G_rules``). This script applies :func:`~onp.repair.detector.choose_rule` to
the held-in scores (what ``auto`` does during a run) and prints the chosen rule's test row next to
the default rule's.

    python benchmarks/detector_rules.py runs/bench-apply6/*/agent/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onp.repair.detector import DEFAULT_RULE, DEFAULT_THRESHOLD, choose_rule
from onp.repair.report import rule_name, rule_scores

COLUMNS = ("clean_accuracy", "false_alarm", "flagged_or_true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files of onp.apply")
    args = parser.parse_args()
    print("| report | rule | G clean right % | G false alarm % | G flagged or true % |")
    print("|---|---|---|---|---|")
    for path in args.reports:
        report = json.loads(path.read_text())
        if report.get("G_rules_held_in") is None:  # refit runs: B' trained on the held-in data
            print(f"| {path.parent} | no held-in rule scores (refit) | | | |")
            continue
        chosen = choose_rule(rule_scores(report["G_rules_held_in"]))  # older reports lack some
        default = rule_name(DEFAULT_RULE, DEFAULT_THRESHOLD)
        for label, name in ((f"default ({default})", default),
                            (f"auto ({rule_name(*chosen)})", rule_name(*chosen))):
            row = report["test"]["G_rules"][name]
            print(f"| {path.parent} | {label} | " + " | ".join(str(row[c]) for c in COLUMNS)
                  + " |")


if __name__ == "__main__":
    main()

"""One baseline defense at its defaults on infected bundles: held-out CA / ASR / DER, before/after.

    python benchmarks/defense_check.py --defense nad --models runs/table-models/badnets-s10/model \
        --out docs/results/defense-check
    python benchmarks/defense_check.py --table docs/results/defense-check  # table.md from JSONs

Writes ``OUT/<defense>-<model>.json`` (the held-out metrics of B and of the repaired model, the
defense's record of its choices, the wall time). The defense sees only the bundle's defense
split; the held-out sets only report. Used to compare a baseline with its paper's reported
behaviour.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from onp.defenses import build_defense
from onp.eval.metrics import defense_effectiveness_rating
from onp.seeding import seed_everything
from onp.subjects import load_subject


def write_table(folder: Path) -> str:
    """``folder/table.md``: one row per result file in ``folder``."""
    lines = ["| defense | model | B CA / ASR % | after CA / ASR % | DER % | seconds |",
             "|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        row = json.loads(path.read_text())
        before, after = row["before"], row["after"]
        lines.append(f"| {row['defense']['name']} | {Path(row['model']).parent.name} | "
                     f"{before['CA']} / {before['ASR']} | {after['CA']} / {after['ASR']} | "
                     f"{row['DER']} | {row['seconds']} |")
    text = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, help="only write FOLDER/table.md from its JSONs")
    parser.add_argument("--defense")
    parser.add_argument("--models", nargs="+", type=Path)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.table is not None:
        print(write_table(args.table), end="")
        return
    if not args.defense or not args.models or args.out is None:
        parser.error("--defense, --models and --out are needed (or --table FOLDER)")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.models:
        seed_everything(args.seed)
        subject = load_subject(path, args.dataset)
        before = subject.evaluate()
        start = time.perf_counter()
        result = build_defense(args.defense).repair(subject.model, subject.defense, args.seed)
        seconds = time.perf_counter() - start
        after = subject.evaluate(result.model)
        assert before is not None and after is not None  # the bundles record their attack
        name = path.parent.name if path.name == "model" else path.name
        record = {
            "defense": build_defense(args.defense).describe(), "model": str(path),
            "before": before.as_percent(), "after": after.as_percent(),
            "DER": round(100 * defense_effectiveness_rating(
                before.clean_accuracy, before.attack_success_rate, after.clean_accuracy,
                after.attack_success_rate), 1),
            "seconds": round(seconds, 1), "info": result.info,
        }
        (args.out / f"{args.defense}-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps({k: record[k] for k in ("model", "before", "after", "DER", "seconds")}))


if __name__ == "__main__":
    main()

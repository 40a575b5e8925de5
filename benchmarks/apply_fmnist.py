"""Issue 5's benchmark: ``onp.apply`` on each infected Fashion-MNIST model, learned seed vs random.

For every model bundle (default: each ``runs/bench-attacks/<attack>/model`` that exists), the
trigger-free probe is estimated once; then the apply pipeline runs twice with the same recipe
(defaults of :class:`~onp.repair.pipeline.ApplyConfig`, i.e. ``configs/apply.yaml``'s sparsity X,
unless ``--config`` changes them):

- ``agent``: seeded by the GNN agent's mask (trained on the spot, as ``onp.apply`` does);
- ``random``: seeded by a random mask pruning as many channels as the agent's did;
- ``random X`` (``--random-fraction X``, default 0.3; 0 skips it): the issue's comparison, the
  sparse fine-pruning recipe at sparsity X started from a random mask of X of the channel nodes.
  That mask shapes round 0 only (``protect_rounds`` 1): protected in every round, it would fill
  each group's whole quota and nothing could ever regrow.

Every choice is made on defense data; the held-out test sets only fill the table. Writes
``<out>/<model>/{agent,random,random-X}/`` (apply's outputs), ``<out>/apply_fmnist.json`` and
``<out>/apply_fmnist.md``. ``--reports`` prints the same table from finished runs' reports
(``onp.apply``'s ``report.json``; the seed column then names the mask's source), and a second
one with issue 5's bars.

    python benchmarks/apply_fmnist.py --out runs/bench-apply
    python benchmarks/apply_fmnist.py --reports runs/apply-refit/*/report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from onp.graph.groups import trace_groups
from onp.graph.mask import ChannelMask
from onp.io import atomic_path, write_json
from onp.repair.pipeline import ApplyConfig, load_inputs, make_probe, run_apply

log = logging.getLogger("apply_fmnist")

ATTACKS = ("badnets", "blended", "wanet", "sig")
COLUMNS = ("model", "seed", "B CA", "B ASR", "B' CA", "B' ASR", "B' RA", "DER", "G clean",
           "G false alarm", "G flagged", "G flagged or true", "G[target] clean",
           "G[target] flagged or true", "seconds")


def random_mask(groups, count: int, seed: int) -> ChannelMask:
    """Prune ``count`` channels drawn uniformly, never the last live channel of a group."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(groups.num_nodes, dtype=torch.bool)
    for node in torch.randperm(groups.num_nodes, generator=generator).tolist():
        if int((~mask).sum()) >= count:
            break
        group = int(groups.node_group[node])
        if int(groups.split(mask)[group].sum()) > 1:
            mask[node] = False
    return mask


def row(name: str, seed: str, report: dict, signal_seconds: float) -> dict:
    """One table row from an apply report (percentages; seconds include the shared signal).

    ``G`` is the run's rule; ``G[target]`` the report's scores of the ``target`` rule.
    """
    test = report["test"]
    g, targeted = test["G"], test["G_rules"].get("target", {})
    return dict(zip(COLUMNS, (
        name, seed, test["B"]["CA"], test["B"]["ASR"], test["B'"]["CA"], test["B'"]["ASR"],
        test["B'"]["RA"], test.get("DER"), g["clean_accuracy"], g["false_alarm"], g["detection"],
        g["flagged_or_true"], targeted.get("clean_accuracy"), targeted.get("flagged_or_true"),
        round(report["seconds"]["total"] + signal_seconds, 1)),
        strict=True))


GOAL_COLUMNS = ("model", "B CA", "B' CA", "B' ASR", "B' CA - (B CA - 1)", "G[target] clean",
                "G[target] clean - (B CA - 2)", "G[target] flagged or true", "G clean",
                "kept round")


def goal_row(name: str, report: dict) -> dict:
    """Issue 5's bars for one apply report, in %.

    B' CA >= B CA - 1, ASR <= 2, G[target] clean >= B CA - 2 and flagged or true >= 98; the
    margins are the differences.
    """
    test = report["test"]
    b, b_prime, g = test["B"], test["B'"], test["G_rules"].get("target", {})
    clean = g.get("clean_accuracy")
    return dict(zip(GOAL_COLUMNS, (
        name, b["CA"], b_prime["CA"], b_prime["ASR"], round(b_prime["CA"] - (b["CA"] - 1), 2),
        clean, None if clean is None else round(clean - (b["CA"] - 2), 2),
        g.get("flagged_or_true"), test["G"]["clean_accuracy"], report["sparse"]["best_round"]),
        strict=True))


def markdown(rows: list[dict], note: str, columns: tuple[str, ...] = COLUMNS) -> str:
    """The rows as a markdown table under a one-line note."""
    lines = [note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("—" if r[c] is None else str(r[c]) for c in columns) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", type=Path, default=None,
                        help="bundles (default: runs/bench-attacks/<attack>/model that exist)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--config", type=json.loads, default={},
                        help="JSON ApplyConfig overrides for both runs, e.g. '{\"rounds\": 5}'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-fraction", type=float, default=0.3,
                        help="sparsity and seed-mask share of the 'random X' arm (0: skip it)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-apply"))
    parser.add_argument("--reports", nargs="*", type=Path, default=None,
                        help="only print the table of these onp.apply report.json files")
    args = parser.parse_args()
    if args.reports:
        reports = [json.loads(path.read_text()) for path in args.reports]
        print(markdown([row(r["name"], r["mask"]["source"], r, 0.0) for r in reports],
                       "onp.apply reports (held-out test data, %; seconds = the run's total)."))
        print(markdown([goal_row(r["name"], r) for r in reports],
                       "Issue 5's bars on the same reports (margins: >= 0 meets the bar).",
                       GOAL_COLUMNS))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = args.models or [p for a in ATTACKS
                             if (p := Path("runs/bench-attacks") / a / "model").is_dir()]
    rows, records = [], {}
    for path in models:
        name = path.parent.name if path.name == "model" else path.name
        base = ApplyConfig(model=str(path), dataset=args.dataset, seed=args.seed, overwrite=True,
                           **args.config)
        inputs = load_inputs(base)
        start = time.perf_counter()
        stage = make_probe(inputs, base)
        signal_seconds = time.perf_counter() - start
        agent = run_apply(replace(base, out=str(args.out / name / "agent")), None, (inputs, stage))
        groups = trace_groups(inputs.model, tuple(inputs.model.spec.input_shape))
        mask = random_mask(groups, agent["mask"]["pruned"], args.seed)
        rand = run_apply(replace(base, out=str(args.out / name / "random")), mask, (inputs, stage))
        rows += [row(name, "agent", agent, signal_seconds), row(name, "random", rand, 0.0)]
        records[name] = {"signal_seconds": round(signal_seconds, 1), "agent": agent,
                         "random": rand}
        if args.random_fraction > 0:
            arm = f"random {args.random_fraction:g}"
            mask = random_mask(groups, round(args.random_fraction * groups.num_nodes), args.seed)
            config = replace(base, out=str(args.out / name / arm.replace(" ", "-")),
                             sparsity=args.random_fraction, protect_rounds=1)
            records[name][arm] = run_apply(config, mask, (inputs, stage))
            rows.append(row(name, arm, records[name][arm], 0.0))
    write_json(args.out / "apply_fmnist.json", {"rows": rows, "reports": records,
                                                "torch_threads": torch.get_num_threads()})
    note = (f"onp.apply on Fashion-MNIST (held-out test data, %; seeds: the agent's mask vs a "
            f"random mask of as many channels, and 'random X': a random mask of X of the "
            f"channels at sparsity X, regrowing after round 0; overrides "
            f"{args.config or 'none'}; seconds = "
            f"wall time incl. the signal, {torch.get_num_threads()} torch threads).")
    with atomic_path(args.out / "apply_fmnist.md") as tmp:
        tmp.write_text(markdown(rows, note))
    log.info("wrote %s", args.out / "apply_fmnist.md")


if __name__ == "__main__":
    main()

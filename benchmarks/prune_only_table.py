"""Pruning only: the learned policy against the pruning rules, on models no choice has seen.

    python benchmarks/prune_only_table.py --models runs/table-models/*/model \
        --out runs/prune-table [--methods onp-shipped onp-finetuned greedy random clp rnp]

Every method prunes the same infected model with the same 5% defense split (the bundle's), and
nothing is fine-tuned (Fine-Pruning and RNP at their papers' settings are the exception noted in
the table: they are the published rules as a whole). Trigger-free throughout: the probe is the
signal's synthesized trigger on defense images; the held-out test sets only report.

- ``onp-shipped``: the package's pretrained policy applied as is (``onp/policies/fmnist``);
  the mask is the best of its greedy rollout and of nothing else (0 PPO steps), re-checked on
  the defense check sets (:func:`agents.ppo.best_mask`).
- ``onp-finetuned``: the same policy fine-tuned on the model for ``--finetune-steps``.
- ``greedy-<feature>``: prune the nodes with the highest value of one node feature; how many
  (0 to the agent's budget) is chosen by the utility ``CA - proxy ASR`` on the defense check
  sets, the same reading that picks the agent's mask.
- ``random``: the onp-shipped mask's count of random nodes, mean of ``--random-draws`` draws.
- ``clp``, ``rnp``, ``anp``, ``fine-pruning``: the registered defenses at their defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from agent_fmnist import random_same_count, test_metrics  # benchmarks/ is not a package

from agents.ppo import PPOConfig, best_mask, learn, read_policy_spec
from envs.pruning_env import ChannelPruningEnv, EnvConfig
from onp.config import config_from_dict
from onp.defenses import build_defense
from onp.eval.metrics import defense_effectiveness_rating
from onp.graph.features import feature_index
from onp.graph.mask import ChannelMask
from onp.io import write_json
from onp.policies import shipped_policy
from onp.subjects import Subject, load_subject
from onp.task import PruningTask, TaskConfig, build_task
from onp.train_agent import TrainAgentConfig, make_probe

log = logging.getLogger("prune_only_table")
GREEDY_FEATURES = ("backdoor_contrib", "clp_z", "trigger_z_abs")
DEFENSES = ("clp", "rnp", "anp", "fine-pruning")
ALL_METHODS = ("onp-shipped", "onp-finetuned", *(f"greedy-{f}" for f in GREEDY_FEATURES),
               "random", *DEFENSES)


def metrics_of(subject: Subject, model: torch.nn.Module | None = None) -> dict[str, float]:
    result = subject.evaluate(model)
    assert result is not None  # the table's models are onp.attack bundles
    return result.as_percent()


def policy_mask(task: PruningTask, steps: int, seed: int) -> ChannelMask:
    policy = shipped_policy()
    assert policy is not None, "no shipped policy: run benchmarks/policy_zoo.py first"
    spec = read_policy_spec(policy)
    env = ChannelPruningEnv(task, EnvConfig(max_nodes=int(spec["max_nodes"])))
    ppo = config_from_dict(PPOConfig, spec["ppo"], "ppo")
    return best_mask(learn(env, ppo, steps, seed, None, policy), 0).mask


def greedy_mask(task: PruningTask, feature: str) -> ChannelMask:
    env = ChannelPruningEnv(task, EnvConfig())
    order = torch.argsort(task.graph.x[:, feature_index(feature)], descending=True)
    best = (env.utility(task.check_score(torch.ones(task.num_nodes, dtype=torch.bool))), 0)
    for count in range(1, env.budget + 1):
        mask = torch.ones(task.num_nodes, dtype=torch.bool)
        mask[order[:count]] = False
        best = max(best, (env.utility(task.check_score(mask)), -count))
    mask = torch.ones(task.num_nodes, dtype=torch.bool)
    mask[order[:-best[1]]] = False
    return mask


def run_model(path: Path, methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    subject = load_subject(path, args.dataset, args.data_root)
    before = metrics_of(subject)
    probe = make_probe(subject, TrainAgentConfig(seed=args.seed), args.out)
    task = build_task(subject.name, subject.model, subject.defense, probe,
                      TaskConfig(check_clean=1024), args.seed)
    rows: dict[str, Any] = {"B": before}
    shipped_count = None
    for method in methods:
        start = time.perf_counter()
        if method in ("onp-shipped", "onp-finetuned"):
            steps = 0 if method == "onp-shipped" else args.finetune_steps
            row = test_metrics(subject, task, policy_mask(task, steps, args.seed))
            if method == "onp-shipped":
                shipped_count = row["pruned"]
        elif method.startswith("greedy-"):
            row = test_metrics(subject, task, greedy_mask(task, method.removeprefix("greedy-")))
        elif method == "random":
            assert shipped_count is not None, "random needs onp-shipped before it"
            row = random_same_count(subject, task, shipped_count, args.random_draws, args.seed)
        else:
            repaired = build_defense(method).repair(subject.model, subject.defense, args.seed)
            row = metrics_of(subject, repaired.model)
        row["DER"] = round(100 * defense_effectiveness_rating(
            before["CA"] / 100, before["ASR"] / 100, row["CA"] / 100, row["ASR"] / 100), 2)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows[method] = row
        log.info("%s %s: %s", subject.name, method, row)
    attack = (subject.model.spec.attack or {}).get("config", {})
    return {"model": str(path), "attack": attack.get("kind"), "target": attack.get("target"),
            "rows": rows}


def markdown(results: list[dict[str, Any]], methods: list[str]) -> str:
    lines = ["| model | attack | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for result in results:
        cells = [f"{r['CA']:.2f} / {r['ASR']:.2f} / {r['DER']:.1f}"
                 for r in (result["rows"][m] for m in methods)]
        b = result["rows"]["B"]
        lines.append(f"| {Path(result['model']).parent.name} (B {b['CA']:.2f} / {b['ASR']:.2f}) "
                     f"| {result['attack']} | " + " | ".join(cells) + " |")
    means = [[np.mean([r["rows"][m][k] for r in results]) for k in ("CA", "ASR", "DER")]
             for m in methods]
    lines.append("| mean | | " + " | ".join(f"{ca:.2f} / {asr:.2f} / {der:.1f}"
                                         for ca, asr, der in means) + " |")
    b = [np.mean([r["rows"]["B"][k] for r in results]) for k in ("CA", "ASR")]
    seconds = [np.mean([r["rows"][m]["seconds"] for r in results]) for m in methods]
    lines.append("| mean seconds | | " + " | ".join(f"{v:.0f}" for v in seconds) + " |")
    return ("\n".join(lines) + f"\n\nCells: CA % / ASR % / DER % (held-out test data); B's mean "
            f"{b[0]:.2f} / {b[1]:.2f}. Seconds: the method's own time, the signal excluded "
            "(computed once per model and shared).\n")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS))
    parser.add_argument("--finetune-steps", type=int, default=512)
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.models:
        cache = args.out / f"{path.parent.name}.json"
        if cache.is_file() and json.loads(cache.read_text())["methods"] == args.methods:
            results.append(json.loads(cache.read_text())["result"])
            continue
        result = run_model(path, args.methods, args)
        write_json(cache, {"methods": args.methods, "result": result})
        results.append(result)
    (args.out / "table.md").write_text(markdown(results, args.methods))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()

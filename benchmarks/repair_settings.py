r"""Compare prune-and-regrow settings on one model from one seed mask: how defaults were chosen.

The signal (target, patch) is estimated once; for every settings dict (JSON
:class:`~onp.repair.pipeline.ApplyConfig` overrides) the suspected triggers are fitted with that
setting's perturbation bound and refresh steps, and the rounds run from the same seed mask.

The kept round of each setting is then judged on held-in defense data by a reading that no
setting shapes (:func:`judge_asr`): the synthesized patch, and fresh universal perturbations
towards the suspected target at several bounds (:data:`JUDGE_EPS`), fitted to the repaired model
on the fitting images and read on held-in images. A setting's score is held-in CA minus the
judge's mean; ``--combine`` averages the scores of several models' runs and names the best
setting. The test columns are printed for the record and must not drive the choice.

``--check-fraction F`` sets a share of the defense data aside first, class by class: the signal,
the fitting and the held-in split come from the rest, and the judge (clean accuracy, patch and
perturbations) reads the set-aside images instead of the held-in ones. That judges settings that
train on the held-in images (``refit``).

    python benchmarks/repair_settings.py --model runs/bench-attacks/badnets/model \
        --seed-mask runs/apply-badnets/masks.json \
        --settings '[{"perturbation_eps": 0.05}, {"perturbation_eps": 0.2}]' \
        --out runs/repair-settings/badnets
    python benchmarks/repair_settings.py --combine runs/repair-settings/*/repair_settings.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from onp.config import config_from_dict
from onp.data.splits import split_defense
from onp.data.types import ImageSet
from onp.eval.metrics import accuracy_of, predict
from onp.graph.groups import trace_groups
from onp.io import atomic_path, write_json
from onp.repair.pipeline import ApplyConfig, load_inputs, suspected_triggers
from onp.repair.sparse import prune_and_regrow
from onp.signal.config import SignalConfig
from onp.signal.perturbation import PERTURBATION_STEPS, stamp_perturbation, universal_perturbation
from onp.signal.probe import SignalResult, estimate_probe, proxy_asr

log = logging.getLogger("repair_settings")

JUDGE_EPS = (0.05, 0.1, 0.2)
"""Bounds of the judge's perturbations: below, at and above the candidate settings' middle."""


def judge_asr(
    model: nn.Module, signal: SignalResult, fit: ImageSet, held_in: ImageSet, seed: int,
    check: ImageSet | None = None,
) -> dict[str, float]:
    """How easily the suspected target is still reached, by readings no setting shapes.

    Returns:
        Shares in ``[0, 1]``: ``patch`` (the signal's probe, or the synthesized trigger on the
        ``check`` images of other classes), ``eps X`` for each bound of :data:`JUDGE_EPS` (a
        perturbation fitted afresh to ``model`` on the fitting images of other classes, read on
        the held-in images of other classes, or the ``check`` ones) and their ``mean``.
    """
    target = signal.trigger.target
    others = fit.images[fit.labels != target]
    read_on = held_in if check is None else check
    held = read_on.images[read_on.labels != target]
    if check is None:
        readings = {"patch": proxy_asr(model, signal.probe)}
    else:
        stamped = signal.trigger.apply(held).clamp(0.0, 1.0)
        readings = {"patch": (predict(model, stamped) == target).float().mean().item()}
    for eps in JUDGE_EPS:
        delta = universal_perturbation(model, others, target, eps, PERTURBATION_STEPS, seed=seed)
        hits = predict(model, stamp_perturbation(held, delta)) == target
        readings[f"eps {eps}"] = hits.float().mean().item()
    readings["mean"] = statistics.fmean(readings.values())
    return {k: round(v, 4) for k, v in readings.items()}


def combine(paths: list[Path]) -> None:
    """Print each setting's score (held-in CA − judge mean) per run and averaged; name the best."""
    runs = [json.loads(path.read_text()) for path in paths]
    keys = [json.dumps(r["settings"]) for r in runs[0]["runs"]]
    lines = ["| settings | " + " | ".join(Path(r["model"]).parent.name for r in runs) +
             " | mean |", "|---|" + "---|" * (len(runs) + 1)]
    means = {}
    for key in keys:
        scores = []
        for run in runs:
            match = [r for r in run["runs"] if json.dumps(r["settings"]) == key]
            if not match:
                raise SystemExit(f"{run['model']}: no run with settings {key}")
            scores.append(match[0]["held_in_score"])
        means[key] = statistics.fmean(scores)
        lines.append(f"| {key} | " + " | ".join(f"{100 * s:.1f}" for s in scores) +
                     f" | {100 * means[key]:.1f} |")
    print("\n".join(lines))
    print(f"best on held-in data: {max(means, key=means.__getitem__)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="bundle made by onp.attack")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed-mask", type=Path,
                        help="masks.json of an onp.apply run (its seed_pruned nodes)")
    parser.add_argument("--settings", type=json.loads,
                        help="JSON list of ApplyConfig overrides, one run each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-fraction", type=float, default=0.0,
                        help="share of the defense data set aside for the judge (0: held-in)")
    parser.add_argument("--out", type=Path, default=Path("runs/repair-settings"))
    parser.add_argument("--combine", type=Path, nargs="+",
                        help="repair_settings.json files to average the held-in scores of")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine)
        return
    if not (args.model and args.seed_mask and args.settings):
        parser.error("--model, --seed-mask and --settings are needed (or --combine)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = ApplyConfig(model=args.model, dataset=args.dataset, seed=args.seed)
    inputs = load_inputs(base)
    model = inputs.model
    signal_config = config_from_dict(SignalConfig, base.signal, "signal")
    defense, check = inputs.defense, None
    if args.check_fraction > 0:
        defense, check = split_defense(defense, args.check_fraction, args.seed + 1)
        log.info("judge reads %d set-aside defense images; %d left", len(check), len(defense))
    fit, held_in = split_defense(defense, signal_config.held_in_fraction, args.seed)
    signal = estimate_probe(model, defense, signal_config, args.seed)
    groups = trace_groups(model, tuple(model.spec.input_shape))
    seed_mask = torch.ones(groups.num_nodes, dtype=torch.bool)
    seed_mask[json.loads(args.seed_mask.read_text())["seed_pruned"]] = False
    assert inputs.test_clean is not None and inputs.test_poisoned is not None
    judge_of_b = judge_asr(model, signal, fit, held_in, args.seed, check)
    log.info("judge of B: %s", judge_of_b)
    runs = []
    lines = ["| settings | kept round | judged CA | judge: patch / eps 0.05 / 0.1 / 0.2 | "
             "score | test CA | test ASR | seconds |", "|---|---|---|---|---|---|---|---|"]
    for overrides in args.settings:
        config = replace(base, **overrides)
        start = time.perf_counter()
        stamp, selection = suspected_triggers(model, fit, held_in, signal, config)
        result = prune_and_regrow(model, groups, fit, held_in, selection, seed_mask,
                                  config.sparse_config, args.seed, inputs.test_poisoned, stamp)
        seconds = time.perf_counter() - start
        kept = result.rounds[result.best_round]
        judge = judge_asr(result.model, signal, fit, held_in, args.seed, check)
        clean = kept.clean_accuracy if check is None else accuracy_of(
            predict(result.model, check.images), check.labels)
        score = clean - judge["mean"]
        test_ca = accuracy_of(predict(result.model, inputs.test_clean.images),
                              inputs.test_clean.labels)
        test_asr = inputs.test_poisoned.asr_of(predict(result.model,
                                                       inputs.test_poisoned.images))
        runs.append({"settings": overrides, "best_round": result.best_round,
                     "rounds": [r.to_json() for r in result.rounds], "judge": judge,
                     "held_in_clean_accuracy": round(kept.clean_accuracy, 4),
                     "judged_clean_accuracy": round(clean, 4),
                     "held_in_score": round(score, 4),
                     "test_clean_accuracy": round(test_ca, 4),
                     "test_asr": round(test_asr, 4), "seconds": round(seconds, 1)})
        readings = " / ".join(f"{100 * judge[k]:.1f}" for k in judge if k != "mean")
        lines.append(f"| {json.dumps(overrides)} | {result.best_round} | "
                     f"{100 * clean:.1f} | {readings} | {100 * score:.1f} | "
                     f"{100 * test_ca:.2f} | {100 * test_asr:.2f} | {seconds:.0f} |")
        log.info("%s", lines[-1])
        # rewritten whole after every setting: a stopped run keeps the settings it finished
        write_json(args.out / "repair_settings.json",
                   {"model": args.model, "seed_mask": str(args.seed_mask), "runs": runs,
                    "judge_of_b": judge_of_b, "signal": signal.to_json(),
                    "check_fraction": args.check_fraction,
                    "torch_threads": torch.get_num_threads()})
        with atomic_path(args.out / "repair_settings.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The apply report: held-out metrics of B, B' and G, what could not be measured, plots.

Held-out data only reports; every choice of the pipeline was made on defense data before this
module runs. ``report.json`` holds everything, ``report.md`` the tables a reader wants, and
``plots/`` the per-round curves and the per-layer map of the final mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from onp.config import config_to_dict
from onp.data.types import ImageSet
from onp.eval.metrics import (
    accuracy_of,
    attack_success_rate,
    batched_logits,
    defense_effectiveness_rating,
)
from onp.graph.groups import ChannelGroups
from onp.graph.plot import save_layer_scores_png
from onp.io import atomic_path, write_json
from onp.models.bundle import Classifier
from onp.repair.apply_config import ApplyConfig
from onp.repair.detector import BackdoorDetector, decide
from onp.repair.sparse import SparseResult, held_in_scores
from onp.repair.stages import ApplyInputs, MaskChoice, ProbeStage
from onp.signal.probe import UNKNOWN_LABEL, BackdoorProbe

log = logging.getLogger(__name__)

ALTERNATIVE_RULES = (("disagree", 1.0), ("reject", 0.05), ("reject", 0.1), ("reject", 0.2),
                     ("reject", 0.3), ("target", 1.0))
"""Detector rules also scored in the report, so that a better rule shows up in the numbers
(``target`` only where suspected targets are known)."""
DPI = 120
CURVE_FIGSIZE = (7.0, 6.0)  # inches: two panels, CA and ASR
SEED_PRUNED, ROUND_PRUNED = 2.0, 1.0  # values of the pruning map (0 = kept)
PRUNING_MAP_CATEGORIES = ("kept", "pruned by the rounds", "pruned by the learned seed")


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


def _model_metrics(clean: tuple[torch.Tensor, torch.Tensor] | None, poisoned: torch.Tensor | None,
                   probe: BackdoorProbe | None) -> dict[str, float | None]:
    ca = None if clean is None else accuracy_of(clean[0].argmax(1), clean[1])
    asr = ra = None
    if poisoned is not None and probe is not None:
        predictions = poisoned.argmax(1)
        asr = attack_success_rate(predictions, probe.true_labels, probe.target_labels)
        if bool((probe.true_labels != UNKNOWN_LABEL).all()):
            ra = accuracy_of(predictions, probe.true_labels)
    return {"CA": _percent(ca), "ASR": _percent(asr), "RA": _percent(ra)}


def detector_metrics(
    clean: torch.Tensor | None, labels: torch.Tensor | None, poisoned: torch.Tensor | None,
    probe: BackdoorProbe | None, num_classes: int,
) -> dict[str, float | None]:
    """G's rates in percent from its decisions (``[M]`` int64 in ``[0, N]``).

    ``clean_accuracy``: G gives the true class on clean inputs; ``false_alarm``: G says ``N`` on
    clean inputs; ``detection``: G says ``N`` on poisoned inputs; ``flagged_or_true``: ``N`` or
    the true class on poisoned inputs (when their true class is known); ``attack_success``: G
    gives the attack's target on poisoned inputs.
    """
    out: dict[str, float | None] = dict.fromkeys(
        ("clean_accuracy", "false_alarm", "detection", "flagged_or_true", "attack_success"))
    if clean is not None and labels is not None:
        out["clean_accuracy"] = _percent(accuracy_of(clean, labels))
        out["false_alarm"] = _percent(float((clean == num_classes).float().mean()))
    if poisoned is not None and probe is not None:
        flagged = poisoned == num_classes
        out["detection"] = _percent(float(flagged.float().mean()))
        out["attack_success"] = _percent(accuracy_of(poisoned, probe.target_labels))
        if bool((probe.true_labels != UNKNOWN_LABEL).all()):
            out["flagged_or_true"] = _percent(
                float((flagged | (poisoned == probe.true_labels)).float().mean()))
    return out


def _not_measured(inputs: ApplyInputs) -> list[str]:
    missing = []
    if inputs.test_clean is None:
        missing.append("clean accuracy of B, B' and G, and G's false alarms: no held-out clean "
                       "data (pass --eval-data FILE, or --dataset for an onp.attack bundle)")
    if inputs.test_poisoned is None and "attack" in inputs.sources:
        missing.append(f"ASR, RA and DER of B and B', and G's detection rate: "
                       f"{inputs.sources['attack']}")
    elif inputs.test_poisoned is None:
        missing.append("ASR, RA and DER of B and B', and G's detection rate: no held-out "
                       "poisoned data (pass --eval-poisoned FILE, or --dataset for a bundle "
                       "that records its attack)")
    elif bool((inputs.test_poisoned.true_labels == UNKNOWN_LABEL).any()):
        missing.append("RA and G's flagged-or-true-class rate: the poisoned file holds the "
                       "attack's target labels only, not the true classes")
    return missing


def rule_name(rule: str, threshold: float) -> str:
    """``"disagree"``, ``"target"`` or ``"reject@0.1"``: a rule's key in the report."""
    return f"{rule}@{threshold:g}" if rule == "reject" else rule


def rule_scores(
    table: dict[str, dict[str, float | None]],
) -> dict[tuple[str, float], dict[str, float | None]]:
    """A :func:`rule_table` (or a report's copy of one) keyed by ``(rule, threshold)``.

    Keeps the :data:`ALTERNATIVE_RULES` it holds, as :func:`~onp.repair.detector.choose_rule`
    reads them.
    """
    return {(r, t): table[rule_name(r, t)] for r, t in ALTERNATIVE_RULES
            if rule_name(r, t) in table}


Logits = tuple[torch.Tensor | None, torch.Tensor | None]
"""One model's logits on the clean images and on the poisoned ones (``None``: no such images)."""


def model_logits(
    model: nn.Module, clean: ImageSet | None, poisoned: BackdoorProbe | None
) -> Logits:
    """``model``'s :data:`Logits` on ``clean`` and ``poisoned``."""
    return (None if clean is None else batched_logits(model, clean.images),
            None if poisoned is None else batched_logits(model, poisoned.images))


def rule_table(
    original: Classifier, repaired: Classifier, clean: ImageSet | None,
    poisoned: BackdoorProbe | None, chosen: tuple[str, float], targets: Sequence[int] = (),
    logits: tuple[Logits, Logits] | None = None,
) -> dict[str, dict[str, float | None]]:
    """G's rates (see :func:`detector_metrics`) under each rule, the chosen one first.

    The rules are the chosen one and the :data:`ALTERNATIVE_RULES`, on the given clean and
    poisoned images; the ``target`` rule with the suspected ``targets``, and only if there are
    any. ``logits`` are B's and B''s on those images when already computed.
    """
    if logits is None:
        logits = (model_logits(original, clean, poisoned),
                  model_logits(repaired, clean, poisoned))
    n = int(original.spec.num_classes)
    table: dict[str, dict[str, float | None]] = {}
    for rule, threshold in (chosen, *ALTERNATIVE_RULES):
        name = rule_name(rule, threshold)
        if name in table or (rule == "target" and not targets):
            continue
        decided = [None if b is None or b_prime is None else
                   decide(b, b_prime, rule, threshold, targets)
                   for b, b_prime in zip(logits[0], logits[1], strict=True)]
        table[name] = detector_metrics(decided[0], None if clean is None else clean.labels,
                                       decided[1], poisoned, n)
    return table


def evaluate_outputs(
    inputs: ApplyInputs, detector: BackdoorDetector
) -> dict[str, Any]:
    """Held-out metrics of B, B' and G (its rule first), and what could not be measured."""
    result: dict[str, Any] = {"not_measured": _not_measured(inputs)}
    clean, probe = inputs.test_clean, inputs.test_poisoned
    if clean is None and probe is None:
        return result
    test: dict[str, Any] = {}
    logits = (model_logits(detector.original, clean, probe),
              model_logits(detector.repaired, clean, probe))
    for key, (on_clean, on_probe) in zip(("B", "B'"), logits, strict=True):
        test[key] = _model_metrics(None if clean is None or on_clean is None else
                                   (on_clean, clean.labels), on_probe, probe)
    before, after = test["B"], test["B'"]
    if None not in (before["CA"], before["ASR"], after["CA"], after["ASR"]):
        test["DER"] = round(100 * defense_effectiveness_rating(
            before["CA"] / 100, before["ASR"] / 100, after["CA"] / 100, after["ASR"] / 100), 2)
    rules = rule_table(detector.original, detector.repaired, clean, probe,
                       (detector.rule, detector.threshold), detector.targets, logits)
    test["G"] = rules[rule_name(detector.rule, detector.threshold)]
    test["G_rules"] = rules
    result["test"] = test
    return result


def save_round_curves_png(result: SparseResult, path: Path, title: str) -> Path:
    """Held-in CA and proxy ASR per round (and true ASR when measured), B's as dashed lines."""
    figure = Figure(figsize=CURVE_FIGSIZE)
    FigureCanvasAgg(figure)
    # Two panels: CA on an axis fitted to its values (its changes are a few points), ASR on 0-1.
    ca_axes, asr_axes = figure.subplots(2, 1, sharex=True)
    rounds = [r.round for r in result.rounds]
    ca_axes.plot(rounds, [r.clean_accuracy for r in result.rounds], "o-", label="held-in CA")
    ca_axes.axhline(result.before[0], color="C0", ls="--", lw=0.8, label="B: held-in CA")
    asr_axes.plot(rounds, [r.proxy_asr for r in result.rounds], "s-", color="C1",
                  label="proxy ASR (held-in)")
    true = [r.true_asr for r in result.rounds if r.true_asr is not None]
    if len(true) == len(rounds):
        asr_axes.plot(rounds, true, "^:", color="C2", label="true ASR (held-out; plot only)")
    asr_axes.axhline(result.before[1], color="C1", ls="--", lw=0.8, label="B: proxy ASR")
    asr_axes.set_ylim(-0.02, 1.02)
    for axes, label in ((ca_axes, "clean accuracy"), (asr_axes, "attack success")):
        axes.axvline(result.best_round, color="grey", lw=0.8, label="kept round")
        axes.set_ylabel(label)
        axes.legend(fontsize="small", loc="best")
    asr_axes.set_xlabel("round")
    asr_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    ca_axes.set_title(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join("—" if c is None else str(c) for c in cells) + " |"


def markdown_report(report: dict[str, Any]) -> str:
    """``report.md``: the held-out tables, the defense-data numbers, rounds and wall time."""
    lines = [f"# ONP repair of {report['name']} ({report['mode']})", "",
             f"Model `{report['model']}`; probe: {report['probe']['source']} "
             f"(known trigger: {report['probe']['known_trigger']}); seed mask: "
             f"{report['mask']['source']}, {report['mask']['pruned']} of "
             f"{report['mask']['num_nodes']} channels; final mask: "
             f"{report['sparse']['final_pruned']} pruned.", ""]
    test = report.get("test")
    if test:
        lines += ["## Held-out test data (reporting only)", "",
                  "| model | CA % | ASR % | RA % | DER % |", "|---|---|---|---|---|",
                  _row(["B", test["B"]["CA"], test["B"]["ASR"], test["B"]["RA"], None]),
                  _row(["B'", test["B'"]["CA"], test["B'"]["ASR"], test["B'"]["RA"],
                        test.get("DER")]), "",
                  f"Detector G: {report['num_classes'] + 1} classes, class "
                  f"{report['num_classes']} = backdoored. First row = the saved rule.", "",
                  "| rule | clean: right class % | clean: false alarm % | poisoned: flagged % "
                  "| poisoned: flagged or true class % | poisoned: target % |",
                  "|---|---|---|---|---|---|"]
        for name, g in test["G_rules"].items():
            lines.append(_row([name, g["clean_accuracy"], g["false_alarm"], g["detection"],
                               g["flagged_or_true"], g["attack_success"]]))
        lines.append("")
    if report["not_measured"]:
        lines += ["## Not measured", ""] + [f"- {m}" for m in report["not_measured"]] + [""]
    held = report["held_in"]
    lines += ["## Defense data (what every choice was made on)", "",
              "| model | held-in CA % | proxy ASR % |", "|---|---|---|"]
    lines += [_row([k, v["clean_accuracy"], v["proxy_asr"]]) for k, v in held.items()]
    if report["G_rules_held_in"] is None:
        lines += ["", "G's rules are not scored on held-in data: B' was refit on those images "
                  "(`--refit false` scores them)."]
    else:
        lines += ["", "G's rules on held-in clean images and the probe (synthesized trigger):", "",
                  "| rule | clean: right class % | clean: false alarm % | probe: flagged % "
                  "| probe: flagged or true class % |", "|---|---|---|---|---|"]
        lines += [_row([k, g["clean_accuracy"], g["false_alarm"], g["detection"],
                        g["flagged_or_true"]]) for k, g in report["G_rules_held_in"].items()]
    lines += ["", f"## Rounds (kept: round {report['sparse']['best_round']})", "",
              "| round | lr | pruned | regrown | held-in CA % | proxy ASR % | utility % "
              "| true ASR % (plot only) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["sparse"]["rounds"]:
        rates = [_percent(r[k]) for k in ("clean_accuracy", "proxy_asr", "utility", "true_asr")]
        lines.append(_row([r["round"], r["lr"], r["pruned"], r["regrown"], *rates]))
    lines += ["", "## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [_row([k, v]) for k, v in report["seconds"].items()]
    return "\n".join(lines) + "\n"


def _held(pair: tuple[float, float]) -> dict[str, float | None]:
    return {"clean_accuracy": _percent(pair[0]), "proxy_asr": _percent(pair[1])}


def write_outputs(
    directory: Path, inputs: ApplyInputs, stage: ProbeStage, choice: MaskChoice,
    groups: ChannelGroups, result: SparseResult, detector: BackdoorDetector,
    evaluation: dict[str, Any], seconds: dict[str, float], config: ApplyConfig,
    rule_probe: BackdoorProbe | None = None,
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, ``masks.json`` and ``plots/`` into ``directory``.

    ``rule_probe`` scores G's rules on held-in data (default: the selection probe). When B'
    was refit they are not scored: B' trained on the held-in images.
    """
    seed, final = choice.mask, result.mask
    probe = stage.selection_probe
    rule_probe = probe if rule_probe is None else rule_probe
    after = held_in_scores(detector.repaired, stage.held_in, probe)
    held_in_rules = None
    if not config.trains_on_held_in:
        held_in_rules = rule_table(detector.original, detector.repaired, stage.held_in,
                                   rule_probe, (detector.rule, detector.threshold),
                                   detector.targets)
    report: dict[str, Any] = {
        "name": inputs.name, "model": config.model, "mode": config.mode,
        "num_classes": inputs.model.spec.num_classes,
        "sources": inputs.sources, "probe": stage.probe.describe(), "signal": stage.record,
        "data": {"defense": len(inputs.defense), "fit": len(stage.fit),
                 "held_in": len(stage.held_in), "probe": len(stage.probe),
                 "selection_probe": len(probe),
                 "detector_probe": None if held_in_rules is None else len(rule_probe)},
        "mask": {"source": choice.source, "timesteps": choice.timesteps,
                 "utility": choice.utility, "pruned": int((~seed).sum()),
                 "num_nodes": groups.num_nodes},
        "sparse": {"config": config_to_dict(config.sparse_config), "best_round": result.best_round,
                   "final_pruned": int((~final).sum()),
                   "seed_channels_in_final": int((~seed & ~final).sum()),
                   "rounds": [r.to_json() for r in result.rounds]},
        "held_in": {"B": _held(result.before), "B + seed mask": _held(result.seeded),
                    ("B' (refit: trained on these images)" if config.trains_on_held_in
                     else "B'"):
                        _held(after)},
        "G_rules_held_in": held_in_rules,
        **evaluation, "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
    }
    write_json(directory / "masks.json", {
        "groups": groups.describe(), "seed_pruned": torch.nonzero(~seed).flatten().tolist(),
        "final_pruned": torch.nonzero(~final).flatten().tolist()})
    plots = directory / "plots"
    save_round_curves_png(result, plots / "rounds.png", f"{config.mode} on {inputs.name}")
    pruning_map = torch.where(~seed & ~final, SEED_PRUNED,
                              torch.where(~final, ROUND_PRUNED, 0.0))
    save_layer_scores_png(pruning_map, groups, plots / "pruning_map.png",
                          f"final mask of {inputs.name}", categories=PRUNING_MAP_CATEGORIES)
    write_json(directory / "report.json", report)
    with atomic_path(directory / "report.md") as tmp:
        tmp.write_text(markdown_report(report))
    return report

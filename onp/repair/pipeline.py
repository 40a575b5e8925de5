"""The apply pipeline as a library: suspect model B + defense data -> repaired B', detector G.

Stages (each timed for the report):

1. **load**: B and the defense data; held-out evaluation data when there is some (a registered
   dataset with a bundle from ``onp.attack``, or ``--eval-data``/``--eval-poisoned`` files);
2. **signal**: the defense set is split into a fitting part and a held-in part; the trigger-free
   probe (synthesized trigger on held-in images) is estimated from the fitting part;
3. **mask**: a GNN policy prunes channels on the neuron graph (the shipped pretrained policy or
   a given one, applied as is or fine-tuned, or one trained on the spot); the best mask by
   defense utility is the seed;
4. **repair**: sparse prune-and-regrow fine-tuning on the fitting part, the checkpoint chosen on
   the held-in part (:mod:`onp.repair.sparse`); with ``--mode prune-only``, B' is B with the
   seed mask and nothing is trained;
5. **evaluate** (held-out data only for reporting) and **save**: B', its compact copy, G, the
   report and plots, all written to a temporary folder moved onto ``out`` only on success.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.ppo import PPOConfig, best_mask, learn, read_policy_spec
from envs.pruning_env import ChannelPruningEnv, EnvConfig
from onp.attacks.built import attack_from_description
from onp.config import config_from_dict, config_to_dict
from onp.data.registry import load_dataset
from onp.data.splits import split_defense
from onp.data.types import ImageSet
from onp.errors import ONPInputError
from onp.eval.metrics import accuracy_of, predict
from onp.graph.mask import ChannelMask
from onp.io import write_json
from onp.models.bundle import Classifier, save_bundle
from onp.models.loading import load_model
from onp.outputs import atomic_output, claim_output
from onp.policies import shipped_policy
from onp.repair.apply_config import (
    DEFAULT_AGENT_TIMESTEPS,
    NO_POLICY,
    PRUNE_ONLY,
    SHIPPED,
    ApplyConfig,
)
from onp.repair.compact import save_compact
from onp.repair.detector import AUTO_RULE, BackdoorDetector, choose_rule, save_detector
from onp.repair.report import (
    ALTERNATIVE_RULES,
    evaluate_outputs,
    rule_name,
    rule_scores,
    rule_table,
    write_outputs,
)
from onp.repair.sparse import SparseResult, mask_only, prune_and_regrow
from onp.repair.stages import ApplyInputs, MaskChoice, ProbeStage
from onp.repair.unlearn import KnownTriggerStamp, SuspectedTriggers
from onp.seeding import seed_everything
from onp.signal.config import SignalConfig
from onp.signal.fitted import UniversalTrigger, fit_universal
from onp.signal.probe import (
    BackdoorProbe,
    SignalResult,
    estimate_probe,
    known_trigger_probe,
    poisoned_probe,
    proxy_asr,
)
from onp.subjects import load_subject
from onp.task import PruningTask, TaskConfig, build_task

log = logging.getLogger(__name__)

COMMAND = "onp.apply"

DATA_FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".npz": "npz"}
STAGES = ("load", "signal", "mask", "repair", "evaluate", "save")
"""The stages of ``onp.apply``, in order: the log says "stage k of n" with each."""


class StageTimer:
    """Wall time per named stage, in seconds; logs each stage's start as "stage k of n"."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (one of :data:`STAGES`)."""
        start = time.perf_counter()
        log.info("apply: stage %d of %d: %s (%.0f s elapsed)", STAGES.index(name) + 1,
                 len(STAGES), name, start - self.start)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 1)
            log.info("apply: stage %s took %.1f s", name, self.seconds[name])


def load_array_file(path: str | Path, num_classes: int | None, what: str,
                    scale: float | None = None) -> ImageSet:
    """An HDF5 (``data``/``label``) or npz (``x``/``y``) file as an image set of B's classes.

    ``num_classes`` is B's (``None``: the largest label plus one); ``scale`` is the pixel value
    that maps to 1 (default: read off the values, see :func:`onp.data.hdf5.pixel_scale`).
    """
    kind = DATA_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise ONPInputError(f"{path}: {what} must be an HDF5 (.h5, .hdf5) or .npz file")
    if not Path(path).is_file():
        raise ONPInputError(f"{what} {path}: no such file")
    return load_dataset(kind, path, "train", num_classes=num_classes, scale=scale)


def check_fits(images: ImageSet, model: Classifier, where: str) -> None:
    """Raise ONPInputError naming ``where`` when the images are not the shape B takes."""
    if tuple(images.meta.image_shape) != tuple(model.spec.input_shape):
        raise ONPInputError(f"{where}: images are {tuple(images.meta.image_shape)}, the model "
                            f"takes {tuple(model.spec.input_shape)}")


MIN_ACCURACY_OVER_CHANCE = 2.0
"""B must classify its defense data at least this many times better than chance, else apply
stops: a model this far off is almost always read with the wrong input scaling."""


def check_accuracy(model: Classifier, defense: ImageSet, where: str) -> None:
    """Stop with a clear error when B is near chance on the defense data (wrong preprocessing).

    Raises:
        ONPInputError: B's accuracy is under ``MIN_ACCURACY_OVER_CHANCE`` times chance; the
            message gives the accuracy under other input scalings when one of them fits.
    """
    classes = model.spec.num_classes
    chance = 1.0 / classes
    accuracy = accuracy_of(predict(model, defense.images), defense.labels)
    if accuracy >= min(MIN_ACCURACY_OVER_CHANCE * chance, 0.5):
        return
    spec = model.spec
    others = []
    for scale in (1.0, 255.0):
        if scale != spec.input_scale:
            trial = copy.deepcopy(model)
            trial.preprocess.scale = scale
            others.append(f"--input-scale {scale:g} gives "
                          f"{accuracy_of(predict(trial, defense.images), defense.labels):.1%}")
    raise ONPInputError(
        f"{where}: B classifies {accuracy:.1%} of the defense images correctly, chance is "
        f"{chance:.1%}: the model is probably fed the wrong pixel range or normalization (input "
        f"scale {spec.input_scale:g}, mean {spec.mean}, std {spec.std}). "
        f"{'; '.join(others)}. Pass --input-scale/--mean/--std as the model was trained, or "
        f"--data-scale for the data file's range"
    )


def load_inputs(config: ApplyConfig) -> ApplyInputs:
    """Load B and the data named by ``config`` (see :class:`ApplyConfig`)."""
    if not config.model:
        raise ONPInputError("apply: expected a model (--model BUNDLE_OR_FILE)")
    if config.data is None and config.dataset is None:
        raise ONPInputError("apply: expected defense data: --data FILE (.h5/.npz) or --dataset "
                            "NAME (with a bundle made by onp.attack)")
    if config.data is not None and config.dataset is not None:
        raise ONPInputError("apply: give --data or --dataset, not both")
    if config.dataset is not None and (config.eval_data or config.eval_poisoned):
        raise ONPInputError("apply: --eval-data and --eval-poisoned go with --data; with "
                            "--dataset the held-out sets come from the dataset's test split")
    path = Path(config.model)
    name = path.stem if path.is_file() else (path.name if path.name != "model" else
                                              path.parent.name)
    if config.dataset is not None:
        if config.import_options:
            raise ONPInputError(f"apply: --dataset takes a bundle made by onp.attack, whose spec "
                                f"says how to read it; drop {sorted(config.import_options)}")
        subject = load_subject(config.model, config.dataset, config.data_root,
                               config.defense_size, config.split_seed)
        sources = {"dataset": config.dataset}
        if subject.attack_note is not None:
            sources["attack"] = subject.attack_note
        return ApplyInputs(name, subject.model, subject.defense, subject.test_clean,
                           subject.evaluation_probe(), sources)
    assert config.data is not None  # one of --data and --dataset, checked above
    model = load_model(config.model, **config.import_options)
    classes = model.spec.num_classes
    defense = load_array_file(config.data, classes, "--data", config.data_scale)
    check_fits(defense, model, config.data)
    check_accuracy(model, defense, config.data)
    clean = poisoned = None
    if config.eval_data is not None:
        clean = load_array_file(config.eval_data, classes, "--eval-data", config.data_scale)
        check_fits(clean, model, config.eval_data)
    if config.eval_poisoned is not None:
        # CSAW-HackML convention: a poisoned file's labels are the attack's target labels.
        raw = load_array_file(config.eval_poisoned, classes, "--eval-poisoned",
                              config.data_scale)
        check_fits(raw, model, config.eval_poisoned)
        poisoned = poisoned_probe(raw.images, raw.labels)
    sources = {k: v for k, v in (("data", config.data), ("eval_data", config.eval_data),
                                 ("eval_poisoned", config.eval_poisoned)) if v is not None}
    return ApplyInputs(name, model, defense, clean, poisoned, sources)


def make_probe(inputs: ApplyInputs, config: ApplyConfig) -> ProbeStage:
    """Split the defense data and estimate the probe (trigger-free unless ``known_trigger``)."""
    signal_config = config_from_dict(SignalConfig, config.signal, "signal")
    fit, held_in = split_defense(inputs.defense, signal_config.held_in_fraction, config.seed)
    if config.known_trigger:
        if not inputs.model.spec.attack:
            raise ONPInputError(f"{config.model}: --known-trigger needs a bundle with its attack")
        attack = attack_from_description(inputs.model.spec.attack)
        probe = known_trigger_probe(attack, held_in.images, held_in.labels,
                                    max_images=signal_config.probe_size, seed=config.seed)
        known = KnownTriggerStamp(attack)
        return ProbeStage(fit, held_in, probe, {"probe": probe.describe(),
                                                "stamp": known.describe()}, known)
    # estimate_probe draws the same split from the same seed: its probe images are held-in.
    result = estimate_probe(inputs.model, inputs.defense, signal_config, config.seed)
    stamp, repair_probe = suspected_triggers(inputs.model, fit, held_in, result, config)
    record = {**result.to_json(), "stamp": stamp.describe(),
              "repair_probe": repair_probe.describe()}
    return ProbeStage(fit, held_in, result.probe, record, stamp, repair_probe)


def suspected_triggers(
    model: nn.Module, fit: ImageSet, held_in: ImageSet, signal: SignalResult,
    config: ApplyConfig,
) -> tuple[SuspectedTriggers, BackdoorProbe]:
    """The stamp for trigger unlearning and the probe the repair selects its round with.

    Adds universal triggers towards the suspected target, fitted on the fitting images of other
    classes, to the synthesized patch: a perturbation (unless ``config.perturbation_eps`` is 0)
    and a warp (unless ``config.warp_shift`` is 0). The selection probe is the signal's probe
    plus the same held-in images with each universal trigger.
    """
    target = signal.trigger.target
    others = fit.images[fit.labels != target]
    held = held_in.subset(held_in.labels != target)
    held = held.subset(torch.arange(min(len(held), len(signal.probe))))
    bounds = (("perturbation", config.perturbation_eps), ("warp", config.warp_shift))
    universal: list[UniversalTrigger] = [
        fit_universal(kind, model, others, target, bound, config.perturbation_steps,
                      seed=config.seed, batch_size=config.universal_batch_size)
        for kind, bound in bounds if bound > 0]
    stamp = SuspectedTriggers(signal.trigger.apply, universal, target, others,
                              config.refresh_steps, config.seed, signal.probe, held.images,
                              held.labels, config.universal_batch_size)
    probe = stamp.probe()
    assert probe is not None  # the base probe is given
    log.info("apply: suspected triggers reach class %d on %.1f%% of the selection probe",
             target, 100 * proxy_asr(model, probe))
    return stamp, probe


def _seed_mask(result: Any, timesteps: int, source: str) -> MaskChoice:
    """The better of the best training episodes and the greedy rollout (:func:`best_mask`)."""
    choice = best_mask(result, 0)
    return MaskChoice(choice.mask, f"{source}:{choice.source}", timesteps, choice.check_utility)


NETWORK_SHAPE = ("hidden", "layers", "heads")
"""PPOConfig keys that shape the policy's network: a saved policy fixes them."""


def starting_policy(task: PruningTask, config: ApplyConfig) -> tuple[Path | None, str]:
    """The policy folder the agent starts from (``None``: a fresh one) and its name.

    ``--policy shipped`` falls back to a fresh policy when the package has none, or when the
    model does not fit it (more channel nodes than it was built for, other features).
    """
    if config.policy == NO_POLICY:
        return None, "trained"
    if config.policy != SHIPPED:
        return Path(config.policy), "policy"
    directory = shipped_policy()
    if directory is None:
        log.info("apply: this install ships no pretrained policy; training one here")
        return None, "trained"
    spec = read_policy_spec(directory)
    features = int(task.graph.x.shape[1]) + 1  # the env adds the mask state
    if task.num_nodes > int(spec["max_nodes"]) or features != int(spec["num_features"]):
        log.warning("apply: the shipped policy takes up to %d channel nodes with %d features; "
                    "this model has %d with %d: training a policy here instead",
                    spec["max_nodes"], spec["num_features"], task.num_nodes, features)
        return None, "trained (the shipped policy does not fit)"
    return directory, "shipped"


def choose_mask(task: PruningTask, config: ApplyConfig,
                tensorboard: Path | None = None) -> MaskChoice:
    """Run (and train, or fine-tune) the pruning policy on ``task``; return the seed mask.

    ``tensorboard`` receives the agent's TensorBoard logs when it trains (default: none).
    """
    ppo_values, max_nodes = dict(config.ppo), 0
    policy, source = starting_policy(task, config)
    if policy is not None:
        spec = read_policy_spec(policy)
        fixed = {k: spec["ppo"][k] for k in NETWORK_SHAPE if k in spec["ppo"]}
        ignored = {k: v for k, v in config.ppo.items() if k in fixed and v != fixed[k]}
        if ignored:
            log.warning("apply: --ppo %s ignored: the policy %s was built with %s", ignored,
                        source, fixed)
        ppo_values = {**spec["ppo"], **config.ppo, **fixed}
        max_nodes = int(spec["max_nodes"])
        if task.num_nodes > max_nodes:
            raise ONPInputError(f"{config.policy}: the policy takes up to {max_nodes} channel "
                                f"nodes, the model has {task.num_nodes}")
    ppo = config_from_dict(PPOConfig, ppo_values, "ppo")
    env = ChannelPruningEnv(task, EnvConfig(
        budget_fraction=config.budget_fraction, asr_threshold=config.asr_threshold,
        asr_weight=config.asr_weight, max_nodes=max_nodes))
    steps = config.agent_timesteps
    if steps is None:
        steps = 0 if policy is not None else DEFAULT_AGENT_TIMESTEPS
    result = learn(env, ppo, steps, config.seed, None, policy, device=config.device,
                   tensorboard=tensorboard if steps > 0 else None)
    if policy is not None and steps > 0:
        source += "-finetuned"
    return _seed_mask(result, steps, source)


def detector_probe(stage: ProbeStage, repaired: Classifier, config: ApplyConfig) -> BackdoorProbe:
    """Held-in triggered images to score G's rules on (defense data only).

    B' was trained to resist the stamp's perturbation, so the selection probe flatters any rule
    that trusts B'. Trigger-free, the perturbation is therefore fitted afresh to B'; with a known
    trigger the selection probe is used as is.
    """
    if isinstance(stage.stamp, SuspectedTriggers):
        fresh = stage.stamp.fresh_probe(repaired, config.perturbation_steps)
        if fresh is not None:
            return fresh
    return stage.selection_probe


def suspected_targets(stage: ProbeStage) -> tuple[int, ...]:
    """The classes the probe's triggers aim at; G's ``target`` rule watches them.

    They are the signal's suspected target, or the known attack's targets.
    """
    return tuple(int(t) for t in torch.unique(stage.probe.target_labels))


def held_in_rule(
    original: Classifier, repaired: Classifier, held_in: ImageSet, probe: BackdoorProbe,
    targets: tuple[int, ...] = (),
) -> tuple[str, float]:
    """G's rule for ``--detector-rule auto``: :func:`choose_rule` over the report's rules.

    The rules are scored on the held-in clean images and ``probe`` (:func:`detector_probe`).
    """
    table = rule_table(original, repaired, held_in, probe, ALTERNATIVE_RULES[0], targets)
    chosen = choose_rule(rule_scores(table))
    log.info("apply: detector rule %s chosen on held-in data", rule_name(*chosen))
    return chosen


def repaired_classifier(result: SparseResult, original: Classifier, name: str) -> Classifier:
    """The repaired model as a :class:`Classifier` whose spec records where it came from."""
    model = result.model
    assert isinstance(model, Classifier)
    provenance = {**original.spec.provenance, "repaired_by": "onp.apply", "repaired_from": name}
    model.spec = replace(original.spec, provenance=provenance)
    return model


def run_apply(
    config: ApplyConfig, seed_mask: ChannelMask | None = None,
    prepared: tuple[ApplyInputs, ProbeStage] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline and write ``config.out``; return the report.

    Args:
        config: The settings.
        seed_mask: Use this seed mask instead of running the agent (benchmarks; e.g. random).
        prepared: Inputs and probe computed before (benchmarks reuse them across runs).

    Raises:
        ONPInputError: For bad inputs; ``config.out`` is then left as it was.
    """
    out = claim_output(config.out, COMMAND, inputs=(
        config.model, config.data, config.eval_data, config.eval_poisoned, config.policy_dir,
        config.data_root), overwrite=config.overwrite)
    timer = StageTimer()
    seed_everything(config.seed)
    with tempfile.TemporaryDirectory(prefix="onp-apply-tb-") as logs:
        return _run_stages(config, out, timer, Path(logs), seed_mask, prepared)


def _run_stages(config: ApplyConfig, out: Path, timer: StageTimer, logs: Path,
                seed_mask: ChannelMask | None,
                prepared: tuple[ApplyInputs, ProbeStage] | None) -> dict[str, Any]:
    """The stages of :func:`run_apply`; the agent's TensorBoard logs go to ``logs`` first."""
    with timer.stage("load"):
        inputs = prepared[0] if prepared else load_inputs(config)
    with timer.stage("signal"):
        stage = prepared[1] if prepared else make_probe(inputs, config)
    with timer.stage("mask"):
        task = build_task(inputs.name, inputs.model, stage.fit, stage.probe,
                          TaskConfig(config.clean_batch, config.probe_batch,
                                     check_clean=config.mask_check_clean), config.seed)
        choice = (MaskChoice(seed_mask, "given", 0, None) if seed_mask is not None
                  else choose_mask(task, config, logs / "tb"))
    with timer.stage("repair"):
        prune_only = config.mode == PRUNE_ONLY
        if prune_only:
            result = mask_only(inputs.model, task.groups, stage.held_in, stage.selection_probe,
                               choice.mask, config.sparse_config.asr_weight, inputs.test_poisoned)
        else:
            result = prune_and_regrow(inputs.model, task.groups, stage.fit, stage.held_in,
                                      stage.selection_probe, choice.mask, config.sparse_config,
                                      config.seed, inputs.test_poisoned, stage.stamp)
        repaired = repaired_classifier(result, inputs.model, inputs.name)
        rule = (config.detector_rule, config.detector_threshold)
        # G's rules are scored on held-in data only when nothing trained on it (refit does)
        rule_probe = (None if config.trains_on_held_in
                      else detector_probe(stage, repaired, config))
        targets = suspected_targets(stage)
        if config.detector_rule == AUTO_RULE:
            assert rule_probe is not None  # auto goes without refit or prune-only (ApplyConfig)
            rule = held_in_rule(inputs.model, repaired, stage.held_in, rule_probe, targets)
        detector = BackdoorDetector(inputs.model, repaired, *rule, targets=targets)
    with timer.stage("evaluate"):
        evaluation = evaluate_outputs(inputs, detector)
    with atomic_output(out, COMMAND) as tmp:
        with timer.stage("save"):
            save_bundle(repaired, tmp / "repaired")
            save_compact(repaired, task.groups, result.mask, tmp / "repaired_compact")
            save_detector(detector, tmp / "detector")
            write_json(tmp / "config.json", config_to_dict(config))
            if (logs / "tb").is_dir():  # the agent trained here: `tensorboard --logdir OUT/tb`
                shutil.copytree(logs / "tb", tmp / "tb")
        report = write_outputs(tmp, inputs, stage, choice, task.groups, result, detector,
                               evaluation, timer.seconds, config, rule_probe)
    log.info("apply: wrote %s", out)
    return report

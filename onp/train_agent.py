"""``python -m onp.train_agent``: learn a GNN pruning policy on one or more infected models.

Example:
    python -m onp.train_agent --models runs/fmnist-badnets/model --timesteps 4096 \
        --out runs/agent

``--out DIR`` receives: ``config.json`` (resolved settings), ``signal/<model>-<hash>.json``
(the trigger-free signal, named by the hash of the model's weights, its defense data and the
settings), ``policy/`` (final policy), ``checkpoints/`` (for an exact ``--resume``),
``best_masks.json`` (per model, the best mask found while training: the best episodes by the
step batches, re-checked on more defense data, :func:`agents.ppo.best_mask`),
``results.json`` (the policy's greedy mask per model, with held-out test metrics when the attack
is known) and ``tb/`` (TensorBoard). Without ``--known-trigger`` no poisoned data or trigger is
used by the agent; the true ASR is only logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from agents.checkpoint import STATE_JSON, read_checkpoint
from agents.ppo import PPOConfig, best_mask, checkpoint_dir, learn, rollout, save_policy
from envs.pruning_env import ChannelPruningEnv, EnvConfig
from onp.cli import run_command
from onp.config import config_from_dict, config_to_dict
from onp.errors import ONPInputError
from onp.fingerprint import settings_hash, tensors_hash, weights_hash
from onp.graph.mask import ChannelMask, masked
from onp.io import atomic_path, write_json
from onp.outputs import claim_output, incremental_output
from onp.seeding import seed_everything
from onp.signal.config import SignalConfig
from onp.signal.probe import BackdoorProbe, estimate_probe, known_trigger_probe
from onp.subjects import Subject, load_subject
from onp.task import PruningTask, TaskConfig, build_task

log = logging.getLogger(__name__)

COMMAND = "onp.train_agent"


@dataclass(frozen=True)
class TrainAgentConfig:
    """Configuration of ``python -m onp.train_agent`` (YAML keys = flags with ``_``)."""

    models: tuple[str, ...] = field(default=(), metadata={"help": "bundles or model files"})
    dataset: str = field(default="fashion-mnist", metadata={"help": "dataset name"})
    data_root: str | None = field(default=None, metadata={"help": "dataset location"})
    defense_size: float | int | None = field(
        default=None, metadata={"help": "defense fraction/count (default: the bundle's)"})
    known_trigger: bool = field(
        default=False, metadata={"help": "use the bundle's real trigger (labelled in outputs)"})
    timesteps: int = field(default=4096, metadata={"help": "environment steps to train"})
    budget_fraction: float = field(default=EnvConfig.budget_fraction,
                                   metadata={"help": "steps per episode / nodes"})
    asr_threshold: float = field(default=EnvConfig.asr_threshold,
                                 metadata={"help": "proxy ASR that ends"})
    asr_weight: float = field(default=EnvConfig.asr_weight,
                              metadata={"help": "weight of ASR in the reward"})
    max_nodes: int = field(default=0, metadata={"help": "padded node count (0 = largest)"})
    clean_batch: int = field(default=TaskConfig.clean_batch,
                             metadata={"help": "clean images per score"})
    probe_batch: int = field(default=TaskConfig.probe_batch,
                             metadata={"help": "probe images per score"})
    check_clean: int = field(default=1024, metadata={
        "help": "clean images re-checking the best masks, with the whole probe (0: off)"})
    ppo: dict = field(default_factory=dict, metadata={"help": "JSON PPOConfig overrides"})
    signal: dict = field(default_factory=dict, metadata={"help": "JSON SignalConfig overrides"})
    policy: str | None = field(default=None, metadata={"help": "start from this policy dir"})
    checkpoint_every: int = field(default=1024, metadata={"help": "steps between checkpoints"})
    resume: bool = field(default=False, metadata={
        "help": "continue exactly from out/checkpoints (same settings; --timesteps may grow)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an earlier ONP output in --out (a folder ONP did not write is never "
                "touched)"})
    seed: int = field(default=0, metadata={"help": "seeds everything"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    out: str = field(default="runs/agent", metadata={"help": "output directory"})


def probe_key(subject: Subject, config: TrainAgentConfig) -> dict[str, Any]:
    """What shaped a subject's probe: its weights, its defense data and the signal settings."""
    return {"model": weights_hash(subject.model),
            "defense": tensors_hash([("images", subject.defense.images),
                                     ("labels", subject.defense.labels)]),
            "known_trigger": config.known_trigger, "seed": config.seed,
            "signal": dict(config.signal)}


def make_probe(subject: Subject, config: TrainAgentConfig, out: Path) -> BackdoorProbe:
    """The subject's probe: trigger-free by default, cached in ``out/signal`` for resuming.

    The cache file is named by the hash of :func:`probe_key` (the model's weights, its defense
    data and the settings), so two models never share a probe, and a changed model or setting
    computes it again.
    """
    key = probe_key(subject, config)
    path = out / "signal" / f"{subject.name}-{settings_hash(key)[:16]}.safetensors"
    if path.is_file() and path.with_suffix(".json").is_file():
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            tensors = load_file(str(path))
            if meta.get("key") == key:
                return BackdoorProbe(tensors["images"], tensors["target_labels"],
                                     tensors["true_labels"], meta["probe"]["known_trigger"],
                                     meta["probe"]["source"])
        except (OSError, ValueError, KeyError, SafetensorError):
            pass
        log.info("%s: the cached probe is unreadable or made otherwise; estimating it again", path)
    if config.known_trigger:
        if not subject.model.spec.attack:
            raise ONPInputError(f"{subject.name}: --known-trigger needs a bundle with its attack")
        probe = known_trigger_probe(subject.model.spec.attack, subject.defense.images,
                                    subject.defense.labels, max_images=512, seed=config.seed)
        record: dict[str, Any] = {"probe": probe.describe()}
    else:
        signal_config = config_from_dict(SignalConfig, config.signal, "--signal")
        result = estimate_probe(subject.model, subject.defense, signal_config, config.seed)
        probe, record = result.probe, result.to_json()
    record["key"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"images": probe.images.contiguous(), "target_labels": probe.target_labels,
                   "true_labels": probe.true_labels}, str(tmp))
    write_json(path.with_suffix(".json"), record)
    return probe


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... when models share a folder name; added to taken."""
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}-{index}"
    taken.add(candidate)
    return candidate


def prepare_tasks(config: TrainAgentConfig, out: Path) -> tuple[list[Subject], list[PruningTask]]:
    """Load each model, estimate its probe and build its pruning task."""
    subjects, tasks = [], []
    task_config = TaskConfig(clean_batch=config.clean_batch, probe_batch=config.probe_batch,
                             check_clean=config.check_clean)
    names: set[str] = set()
    for path in config.models:
        subject = load_subject(path, config.dataset, config.data_root, config.defense_size)
        subject.name = unique_name(subject.name, names)
        probe = make_probe(subject, config, out)
        seed_everything(config.seed)  # the same from here whether the probe was cached or not
        tasks.append(build_task(subject.name, subject.model, subject.defense, probe,
                                task_config, config.seed, subject.evaluation_probe()))
        subjects.append(subject)
    return subjects, tasks


def mask_metrics(subject: Subject, task: PruningTask, mask: ChannelMask) -> dict[str, Any]:
    """Held-out test metrics of ``subject``'s model under ``mask`` (empty if attack unknown)."""
    with masked(subject.model, task.groups, mask):
        metrics = subject.evaluate()
    return {} if metrics is None else {"test": metrics.as_percent()}


RESUMABLE_CHANGES = frozenset({"timesteps", "resume", "overwrite", "out", "device"})
"""Settings a resumed run may change; any other difference is refused."""


def resume_settings(config: TrainAgentConfig) -> dict[str, Any]:
    """The settings a checkpoint must have been made with for ``config`` to resume it."""
    return {k: v for k, v in config_to_dict(config).items() if k not in RESUMABLE_CHANGES}


def check_resume(config: TrainAgentConfig, out: Path) -> None:
    """Refuse to resume a checkpoint made with other settings, naming each difference."""
    checkpoint = checkpoint_dir(out)
    if not (checkpoint / STATE_JSON).is_file():
        log.info("train_agent: no checkpoint in %s; starting from the beginning", out)
        return
    stored = read_checkpoint(checkpoint)[0]["settings"]
    wanted = json.loads(json.dumps(resume_settings(config)))
    differ = [f"{k}: checkpoint {stored.get(k)!r}, now {wanted.get(k)!r}"
              for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    if differ:
        raise ONPInputError(f"--resume {checkpoint}: made with other settings ("
                            + "; ".join(differ) + "); resume with the same settings or start "
                            "over with --overwrite true")


def train_agent(config: TrainAgentConfig) -> dict[str, Any]:
    """Train the policy, save it and the masks, and return the results (also ``results.json``)."""
    start = time.perf_counter()
    if not config.models:
        raise ONPInputError("train_agent: expected at least one model (--models PATH ...)")
    if config.resume and config.overwrite:
        raise ONPInputError("--resume and --overwrite: give one (continue, or start over)")
    if config.timesteps < 1:
        raise ONPInputError(f"--timesteps: expected at least 1, found {config.timesteps}")
    out = claim_output(config.out, COMMAND, inputs=(*config.models, config.data_root,
                                                     config.policy),
                       overwrite=config.overwrite, reuse=config.resume)
    ppo_config = config_from_dict(PPOConfig, config.ppo, "--ppo")
    config_from_dict(SignalConfig, config.signal, "--signal")
    if config.resume:
        check_resume(config, out)
    with incremental_output(out, COMMAND, config.overwrite, resumable="checkpoints"):
        return _train(config, ppo_config, out, start)


def _train(config: TrainAgentConfig, ppo_config: PPOConfig, out: Path,
           start: float) -> dict[str, Any]:
    seed_everything(config.seed)
    write_json(out / "config.json", config_to_dict(config))
    subjects, tasks = prepare_tasks(config, out)
    setup_seconds = time.perf_counter() - start
    env = ChannelPruningEnv(tasks, EnvConfig(
        budget_fraction=config.budget_fraction, asr_threshold=config.asr_threshold,
        asr_weight=config.asr_weight, max_nodes=config.max_nodes))
    trained = learn(env, ppo_config, config.timesteps, config.seed, out, config.policy,
                    config.resume, config.checkpoint_every, config.device,
                    resume_settings(config))
    agent, train_seconds = trained.agent, trained.seconds
    save_policy(agent, out / "policy", ppo_config)
    results: dict[str, Any] = {"known_trigger": config.known_trigger, "models": {},
                               "setup_seconds": round(setup_seconds, 1),
                               "train_seconds": round(train_seconds, 1)}
    best: dict[str, Any] = {}
    for index, (subject, task) in enumerate(zip(subjects, tasks, strict=True)):
        greedy = rollout(agent, env, index)
        entry = {k: greedy[k] for k in ("clean_accuracy", "proxy_asr", "pruned", "utility")}
        entry["pruned_nodes"] = torch.nonzero(~greedy["mask"]).flatten().tolist()
        entry.update(mask_metrics(subject, task, greedy["mask"]))
        choice = best_mask(trained, index, greedy)
        best[subject.name] = {**choice.to_json(), **mask_metrics(subject, task, choice.mask)}
        results["models"][subject.name] = {"policy_mask": entry, "unpruned": mask_metrics(
            subject, task, torch.ones(task.num_nodes, dtype=torch.bool))}
    write_json(out / "best_masks.json", best)
    write_json(out / "results.json", results)
    log.info("train_agent: %.0f s setup, %.0f s training -> %s", setup_seconds, train_seconds, out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, print the results as JSON; exit code 2 on bad input."""
    return run_command("onp.train_agent", TrainAgentConfig, train_agent, argv, __doc__)

if __name__ == "__main__":
    sys.exit(main())

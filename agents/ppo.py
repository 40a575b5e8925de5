"""PPO glue: build MaskablePPO with the GNN policy, log episodes, save and load the policy.

The policy is saved as ``policy.safetensors`` (weights) plus ``policy.json`` (the shapes and
settings that rebuild it), never as a pickle, so a policy file from someone else is safe to load.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from agents.checkpoint import STATE_JSON, restore_checkpoint, save_checkpoint
from agents.gnn_policy import GNNMaskablePolicy, padded_sizes
from envs.pruning_env import ChannelPruningEnv
from onp.errors import ONPInputError
from onp.graph.mask import ChannelMask
from onp.io import atomic_path, write_json
from onp.task import MaskScore

log = logging.getLogger(__name__)

POLICY_WEIGHTS, POLICY_SPEC = "policy.safetensors", "policy.json"
CANDIDATES = 8
"""Masks per task that :class:`EpisodeLogger` keeps for :func:`best_mask` to re-check."""


@dataclass(frozen=True)
class PPOConfig:
    """PPO and GNN settings (SB3 names; see ``MaskablePPO``).

    Attributes:
        learning_rate: Adam learning rate.
        n_steps: Environment steps per rollout.
        batch_size: Minibatch size of the updates.
        n_epochs: Passes over each rollout.
        gamma: Discount; the per-step rewards telescope, so 1 would score an episode by its
            final utility; slightly less favours reaching it sooner.
        ent_coef: Entropy bonus, keeps exploring channels early on.
        hidden: GNN node-embedding width.
        layers: GATv2 layers.
        heads: Attention heads per layer.
    """

    learning_rate: float = 3e-3
    n_steps: int = 128
    batch_size: int = 32
    n_epochs: int = 10
    gamma: float = 0.99
    ent_coef: float = 0.005
    hidden: int = 32
    layers: int = 2
    heads: int = 2

    def policy_kwargs(self) -> dict[str, Any]:
        """``policy_kwargs`` for MaskablePPO: how the GNN enters the policy."""
        return {"features_extractor_kwargs": {
            "hidden": self.hidden, "layers": self.layers, "heads": self.heads}}


def make_agent(
    env: ChannelPruningEnv, config: PPOConfig, seed: int = 0, tensorboard_log: str | None = None,
    device: str = "auto",
) -> MaskablePPO:
    """MaskablePPO with :class:`~agents.gnn_policy.GNNMaskablePolicy` on ``env``."""
    return MaskablePPO(
        GNNMaskablePolicy, env, learning_rate=config.learning_rate, n_steps=config.n_steps,
        batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=config.gamma,
        ent_coef=config.ent_coef, policy_kwargs=config.policy_kwargs(), seed=seed,
        tensorboard_log=tensorboard_log, device=device, verbose=0,
    )


def save_policy(agent: MaskablePPO, directory: str | Path, config: PPOConfig) -> Path:
    """Write the policy's weights and rebuild spec into ``directory`` (atomically)."""
    env = agent.get_env()
    max_nodes, num_features, max_edges = padded_sizes(agent.observation_space)
    spec = {"ppo": asdict(config), "max_nodes": max_nodes, "num_features": num_features,
            "max_edges": max_edges,
            "num_timesteps": int(agent.num_timesteps),
            "num_envs": env.num_envs if env else 1}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / POLICY_WEIGHTS) as tmp:
        # save_model: the policy shares its extractor under three names (SB3's aliases).
        save_model(agent.policy, str(tmp))
    write_json(directory / POLICY_SPEC, spec)
    return directory


def read_policy_spec(directory: str | Path) -> dict[str, Any]:
    """The ``policy.json`` of a saved policy, checked for the keys :func:`load_policy` needs."""
    path = Path(directory) / POLICY_SPEC
    if not path.is_file() or not (Path(directory) / POLICY_WEIGHTS).is_file():
        raise ONPInputError(
            f"{directory}: expected a saved policy ({POLICY_SPEC} and {POLICY_WEIGHTS})"
        )
    spec = json.loads(path.read_text())
    missing = {"ppo", "max_nodes", "num_features"} - set(spec)
    if missing:
        raise ONPInputError(f"{path}: missing keys {sorted(missing)}")
    return spec


def load_policy(agent: MaskablePPO, directory: str | Path) -> None:
    """Load saved policy weights into ``agent`` (whose env must have the same padded shapes)."""
    spec = read_policy_spec(directory)
    shape = padded_sizes(agent.observation_space)[:2]
    if shape != (spec["max_nodes"], spec["num_features"]):
        raise ONPInputError(
            f"{directory}: the policy was trained for {spec['max_nodes']} nodes with "
            f"{spec['num_features']} features; this environment has {shape}; set "
            f"max_nodes={spec['max_nodes']}"
        )
    missing, unexpected = load_model(agent.policy, str(Path(directory) / POLICY_WEIGHTS),
                                     strict=False, device=str(agent.device))
    if unexpected or [k for k in missing if "features_extractor" not in k]:
        raise ONPInputError(f"{directory}: weights do not fit the policy: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")


def rollout(agent: MaskablePPO, env: ChannelPruningEnv, task: int) -> dict[str, Any]:
    """Run the policy greedily on one task to the episode's end; return its mask and scores."""
    obs, info = env.reset(options={"task": task})
    done = False
    while not done:
        action, _ = agent.predict(obs, action_masks=env.action_masks(), deterministic=True)
        obs, _, terminated, truncated, info = env.step(int(action))
        done = terminated or truncated
    assert env.last_score is not None  # set by reset and every step
    return {**info, "mask": env.mask.clone(), "utility": env.utility(env.last_score)}


class EpisodeLogger(BaseCallback):
    """Logs every finished episode, keeps the best mask per task, shows a progress bar.

    TensorBoard keys (``episode/``): ``reward``, ``clean_accuracy``, ``proxy_asr``, ``true_asr``
    (when an evaluation set is attached), ``pruned_fraction``, ``utility``; and
    ``prune_counts/<group>`` per layer group. PPO's own ``train/entropy_loss`` is the policy
    entropy. Per task it keeps the ``candidates`` distinct final masks with the highest utility
    on the defense batches (never the true ASR), best first, for :func:`best_mask` to re-check.

    Args:
        env: The (unwrapped) training environment.
        total: Timesteps of this run, for the progress bar.
        candidates: Masks kept per task.
    """

    def __init__(self, env: ChannelPruningEnv, total: int, candidates: int = CANDIDATES) -> None:
        super().__init__()
        self.env, self.total, self.keep = env, total, candidates
        self.candidates: dict[str, list[dict[str, Any]]] = {}
        self.returns: list[float] = []
        self._episode_return = 0.0
        self._bar: tqdm | None = None

    def _on_training_start(self) -> None:
        if self._bar is None:  # one bar across several learn() calls
            self._bar = tqdm(total=self.total, desc="train agent", unit="step", mininterval=1.0)

    def _on_step(self) -> bool:
        self._episode_return += float(self.locals["rewards"][0])
        if self._bar is not None:
            self._bar.update(1)
        if self.locals["dones"][0]:
            info = self.locals["infos"][0]
            self._finish_episode(info)
        return True

    def _finish_episode(self, info: dict[str, Any]) -> None:
        env, logger = self.env, self.logger
        mask = None if info.get("final_mask") is None else torch.from_numpy(info["final_mask"])
        utility = info["clean_accuracy"] - env.config.asr_weight * info["proxy_asr"]
        for key in ("clean_accuracy", "proxy_asr", "pruned_fraction"):
            logger.record(f"episode/{key}", info[key])
        if info.get("true_asr") is not None:
            logger.record("episode/true_asr", info["true_asr"])
        logger.record("episode/reward", self._episode_return)
        logger.record("episode/utility", utility)
        if mask is not None:
            task = env.tasks[info["task_index"]]
            counts: dict[int, int] = defaultdict(int)
            for node in torch.nonzero(~mask).flatten().tolist():
                counts[int(task.groups.node_group[node])] += 1
            for group in task.groups.groups:
                logger.record(f"prune_counts/{task.name}/{group.index}", counts[group.index])
            self._keep_candidate(task.name, {**info, "utility": utility, "mask": mask.clone(),
                                             "timestep": self.num_timesteps})
        self.returns.append(self._episode_return)
        if self._bar is not None:
            self._bar.set_postfix(reward=f"{self._episode_return:+.3f}", refresh=False)
        self._episode_return = 0.0
        logger.dump(self.num_timesteps)

    def _keep_candidate(self, task: str, episode: dict[str, Any]) -> None:
        kept = self.candidates.setdefault(task, [])
        if any(torch.equal(k["mask"], episode["mask"]) for k in kept):
            return  # the first episode to reach a mask keeps it
        kept.append(episode)
        kept.sort(key=lambda k: -k["utility"])  # stable: ties keep the earlier episode first
        del kept[self.keep:]

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What a checkpoint keeps of the log: JSON-ready values and the kept masks."""
        scalars = ("clean_accuracy", "proxy_asr", "true_asr", "pruned", "pruned_fraction",
                   "task", "task_index", "known_trigger", "utility", "timestep")
        kept = {task: [{k: e.get(k) for k in scalars} for e in entries]
                for task, entries in self.candidates.items()}
        masks = {f"{task}/{i}": e["mask"] for task, entries in self.candidates.items()
                 for i, e in enumerate(entries)}
        return {"candidates": kept, "returns": self.returns,
                "episode_return": self._episode_return}, masks

    def load_state(self, values: dict[str, Any], masks: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`state` gave (a resumed run)."""
        self.candidates = {task: [{**e, "mask": masks[f"{task}/{i}"].clone()}
                                  for i, e in enumerate(entries)]
                           for task, entries in values["candidates"].items()}
        self.returns = list(values["returns"])
        self._episode_return = float(values["episode_return"])

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass(frozen=True)
class CheckedMask:
    """The mask :func:`best_mask` picks, with its readings (fractions in ``[0, 1]``).

    Attributes:
        mask: ``[num_nodes]`` bool, ``True`` = kept.
        source: ``best-episode`` or ``greedy`` (the policy's greedy rollout).
        step_utility: ``CA - asr_weight * proxy ASR`` on the step batches.
        check: Clean accuracy and proxy ASR on the check sets.
        check_utility: The utility on the check sets, which chose the mask.
        candidates: How many masks were compared.
    """

    mask: ChannelMask
    source: str
    step_utility: float
    check: MaskScore
    check_utility: float
    candidates: int

    def to_json(self) -> dict[str, Any]:
        """Its readings and the pruned node ids, JSON-ready."""
        return {"source": self.source, "step_utility": self.step_utility,
                "check": {"clean_accuracy": self.check.clean_accuracy,
                          "proxy_asr": self.check.proxy_asr, "utility": self.check_utility},
                "candidates": self.candidates,
                "pruned_nodes": np.flatnonzero(~self.mask.numpy()).tolist()}


def best_mask(
    result: LearnResult, task: int, greedy: dict[str, Any] | None = None
) -> CheckedMask:
    """The seed mask of ``task``: the best of the kept episodes and the greedy rollout.

    Each candidate is read again on the task's check sets (more clean defense images and the
    whole probe, :meth:`~onp.task.PruningTask.check_score`), and the one with the highest
    utility there wins (the first of equals, so the best episode before the rollout). The
    episodes were kept for their utility on the small step batches, so that reading is biased
    upwards for the very masks it picked; the check is not.

    Args:
        result: The training run.
        task: Index of the task in ``result.env``.
        greedy: The policy's :func:`rollout` on ``task``, if the caller has it already.
    """
    env, name = result.env, result.env.tasks[task].name
    if greedy is None:
        greedy = rollout(result.agent, env, task)
    pool = [(e["mask"], "best-episode", e["utility"])
            for e in result.episodes.candidates.get(name, [])]
    pool.append((greedy["mask"], "greedy", greedy["utility"]))
    checked = []
    for mask, source, utility in pool:
        score = env.tasks[task].check_score(mask)
        checked.append(CheckedMask(mask.clone(), source, float(utility), score,
                                   env.utility(score), len(pool)))
    return max(checked, key=lambda c: c.check_utility)


@dataclass
class LearnResult:
    """What :func:`learn` leaves: the trained agent, its environment and the episode log."""

    agent: MaskablePPO
    env: ChannelPruningEnv
    episodes: EpisodeLogger
    seconds: float


def learn(
    env: ChannelPruningEnv,
    config: PPOConfig,
    timesteps: int,
    seed: int = 0,
    out: Path | None = None,
    init_policy: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 1024,
    device: str = "auto",
    settings: dict[str, Any] | None = None,
    tensorboard: Path | None = None,
) -> LearnResult:
    """Train (or fine-tune) the GNN policy on ``env`` for ``timesteps`` steps.

    Training runs in whole rollouts of ``config.n_steps`` steps, so it may end up to
    ``n_steps - 1`` steps past ``timesteps``. A checkpoint is written every
    ``checkpoint_every`` steps (rounded up to whole rollouts) and after the last rollout; a run
    resumed from it gives the same policy and episode log as one that never stopped
    (:mod:`agents.checkpoint`).

    Args:
        env: The environment (one or several tasks).
        config: PPO and GNN settings.
        timesteps: Total environment steps (including those of a resumed run).
        seed: Seeds PPO (default: 0).
        out: Folder for ``tb/`` and ``checkpoints/latest`` (default: none written).
        init_policy: Saved policy to start from, e.g. to fine-tune on a new model.
        resume: Continue from ``out/checkpoints/latest`` when it exists.
        checkpoint_every: Steps between checkpoints.
        device: Torch device of the policy.
        settings: The caller's settings, stored in each checkpoint for it to compare on resume.
        tensorboard: Folder for the TensorBoard logs (default: ``out/tb``, or none without
            ``out``).
    """
    if tensorboard is None and out is not None:
        tensorboard = out / "tb"
    agent = make_agent(env, config, seed, None if tensorboard is None else str(tensorboard),
                       device)
    checkpoint = checkpoint_dir(out) if out is not None else None
    episodes = EpisodeLogger(env, timesteps)
    if resume and checkpoint is not None and (checkpoint / STATE_JSON).is_file():
        episodes.load_state(*restore_checkpoint(checkpoint, agent, env))
        episodes.total = max(timesteps - agent.num_timesteps, 0)
        log.info("resuming from %s at %d steps", checkpoint, agent.num_timesteps)
    elif init_policy is not None:
        load_policy(agent, init_policy)
    every = max(1, -(-checkpoint_every // config.n_steps)) * config.n_steps
    start = time.perf_counter()
    while agent.num_timesteps < timesteps:
        chunk = min(every, timesteps - agent.num_timesteps)
        agent.learn(chunk, callback=episodes, reset_num_timesteps=False, tb_log_name="ppo")
        if checkpoint is not None:
            save_checkpoint(checkpoint, agent, env, *episodes.state(), settings or {})
    episodes.close()
    return LearnResult(agent, env, episodes, time.perf_counter() - start)


def checkpoint_dir(out: Path) -> Path:
    """Where :func:`learn` keeps the checkpoint of a run writing to ``out``."""
    return out / "checkpoints" / "latest"

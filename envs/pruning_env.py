"""The channel-pruning environment (Gymnasium id ``onp/ChannelPruning-v0``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from onp.task import MaskScore, PruningTask

ObsDict = dict[str, np.ndarray]


@dataclass(frozen=True)
class EnvConfig:
    """Settings of :class:`ChannelPruningEnv`.

    Attributes:
        budget_fraction: Steps per episode, as a fraction of the model's channel nodes.
        asr_threshold: The episode ends (success) once the proxy ASR is at or below this.
        asr_weight: Weight of the ASR term in the reward (1 = clean accuracy minus ASR).
        max_nodes: Padded node count of observations and actions (0 = the largest task's);
            set it to train one policy on, or apply it to, models of different sizes.
        max_in_edges: Incoming edges per node kept in the padded edge list.
    """

    budget_fraction: float = 0.1
    asr_threshold: float = 0.05
    asr_weight: float = 1.0
    max_nodes: int = 0
    max_in_edges: int = 8


class ChannelPruningEnv(gym.Env[ObsDict, np.int64]):
    """Prune the channels of an infected network, one channel node per step.

    **Description.** The state is the neuron-connectivity graph of one infected model
    (:class:`~onp.task.PruningTask`; several tasks can be given, and each episode draws one
    with ``self.np_random``). Each step prunes one channel node: a conv channel, a dense unit,
    or one channel of a group of residual-coupled layers, pruned in all of them at once.

    **Action space.** ``Discrete(max_nodes)``: the node to prune. Pick-one-of-n (instead of a
    per-node binary vector or per-layer ratios) matches a GNN policy that scores every node and
    takes a softmax over them, keeps the action space the same size whatever the model, and lets
    :meth:`action_masks` (for sb3-contrib's ``MaskablePPO``) rule out padding, pruned nodes and
    the last live channel of a group. An invalid action changes nothing and still costs a step.

    **Observation space.** ``Dict``:

    - ``x``: ``Box(max_nodes, F + 1)`` float32, node features (:mod:`onp.graph.features`) and,
      last, the current mask state (1 = pruned); padding rows are 0;
    - ``edge_index``: ``Box(2, max_edges)`` int64, source and target node of each edge, padded
      with 0; ``edge_attr``: ``Box(max_edges)`` float32 connection strength;
    - ``node_mask``: ``MultiBinary(max_nodes)``, 1 for a real node; ``edge_mask``:
      ``MultiBinary(max_edges)``, 1 for a real edge.

    **Rewards.** With ``CA`` the clean accuracy and ``ASR`` the proxy ASR, both on the task's
    fixed defense batches, ``U = CA - asr_weight * ASR`` and the reward of a step is
    ``U(after) - U(before)``; an episode's rewards sum to the change of ``U`` from the unpruned
    model. The proxy ASR comes from the trigger-free signal unless the task is in known-trigger
    mode (``info["known_trigger"]``).

    **Starting state.** Nothing pruned.

    **Episode end.** Terminated when the proxy ASR is at or below ``asr_threshold``; truncated
    after ``ceil(budget_fraction * num_nodes)`` steps.

    **Info.** ``clean_accuracy``, ``proxy_asr``, ``true_asr`` (at reset and at the episode's
    end, when the task has an evaluation set, else ``None``; never used in the reward),
    ``pruned`` (count), ``pruned_fraction``, ``known_trigger``, ``task`` (name),
    ``task_index``; at the episode's end also
    ``final_mask`` (``[num_nodes]`` bool numpy array, ``True`` = kept).

    Args:
        tasks: One task or several.
        config: Settings (default: :class:`EnvConfig`).
    """

    metadata = {"render_modes": []}

    def __init__(self, tasks: PruningTask | list[PruningTask], config: EnvConfig | None = None):
        super().__init__()
        self.tasks = [tasks] if isinstance(tasks, PruningTask) else list(tasks)
        if not self.tasks:
            raise ValueError("ChannelPruningEnv needs at least one task")
        self.config = config or EnvConfig()
        largest = max(t.num_nodes for t in self.tasks)
        self.max_nodes = self.config.max_nodes or largest
        if largest > self.max_nodes:
            raise ValueError(f"a task has {largest} nodes, more than max_nodes={self.max_nodes}")
        self.max_edges = self.max_nodes * self.config.max_in_edges
        features = {t.graph.x.shape[1] for t in self.tasks}
        if len(features) != 1:
            raise ValueError(f"tasks disagree on the number of node features: {features}")
        self.num_features = features.pop() + 1
        self.action_space = spaces.Discrete(self.max_nodes)
        # gymnasium's Dict space is not typed by its member spaces; ObsDict describes them.
        self.observation_space = spaces.Dict({  # type: ignore[assignment]
            "x": spaces.Box(-np.inf, np.inf, (self.max_nodes, self.num_features), np.float32),
            "edge_index": spaces.Box(0, self.max_nodes - 1, (2, self.max_edges), np.int64),
            "edge_attr": spaces.Box(0.0, np.inf, (self.max_edges,), np.float32),
            "node_mask": spaces.MultiBinary(self.max_nodes),
            "edge_mask": spaces.MultiBinary(self.max_edges),
        })
        self._static = [self._static_obs(t) for t in self.tasks]
        self._baseline: dict[int, MaskScore] = {}
        self.task_index = 0
        self.mask = torch.ones(self.task.num_nodes, dtype=torch.bool)
        self.steps = 0
        self.last_score: MaskScore | None = None

    @property
    def task(self) -> PruningTask:
        """The task of the current episode."""
        return self.tasks[self.task_index]

    def _static_obs(self, task: PruningTask) -> ObsDict:
        """The parts of the observation that do not change within an episode, padded."""
        n, graph = task.num_nodes, task.graph
        x = np.zeros((self.max_nodes, self.num_features), np.float32)
        x[:n, :-1] = graph.x.numpy()
        edges = graph.edge_index.numpy()
        if edges.shape[1] > self.max_edges:
            raise ValueError(f"task {task.name}: {edges.shape[1]} edges > {self.max_edges}")
        edge_index = np.zeros((2, self.max_edges), np.int64)
        edge_index[:, : edges.shape[1]] = edges
        edge_attr = np.zeros(self.max_edges, np.float32)
        edge_attr[: edges.shape[1]] = graph.edge_attr.view(-1).numpy()
        node_mask = np.zeros(self.max_nodes, np.int8)
        node_mask[:n] = 1
        edge_mask = np.zeros(self.max_edges, np.int8)
        edge_mask[: edges.shape[1]] = 1
        return {"x": x, "edge_index": edge_index, "edge_attr": edge_attr,
                "node_mask": node_mask, "edge_mask": edge_mask}

    def _obs(self) -> ObsDict:
        # Fresh arrays every call: users may keep and modify what they get (Gymnasium's rule).
        obs = {key: value.copy() for key, value in self._static[self.task_index].items()}
        obs["x"][: self.task.num_nodes, -1] = (~self.mask).numpy()
        return obs

    def utility(self, score: MaskScore) -> float:
        """``CA - asr_weight * ASR``: what the rewards add up to."""
        return score.clean_accuracy - self.config.asr_weight * score.proxy_asr

    @property
    def budget(self) -> int:
        """Steps per episode for the current task."""
        return max(1, int(np.ceil(self.config.budget_fraction * self.task.num_nodes)))

    def action_masks(self) -> np.ndarray:
        """``[max_nodes]`` bool: real, unpruned nodes that are not the last live one of a group."""
        valid = np.zeros(self.max_nodes, bool)
        live = self.mask.clone()
        groups = self.task.groups
        live_per_group = torch.zeros(len(groups.groups), dtype=torch.int64).index_add_(
            0, groups.node_group, live.long()
        )
        live &= live_per_group[groups.node_group] > 1
        valid[: self.task.num_nodes] = live.numpy()
        return valid

    def _info(self, score: MaskScore) -> dict[str, Any]:
        pruned = int((~self.mask).sum())
        return {
            "clean_accuracy": score.clean_accuracy, "proxy_asr": score.proxy_asr,
            "true_asr": score.true_asr, "pruned": pruned,
            "pruned_fraction": pruned / self.task.num_nodes,
            "known_trigger": self.task.known_trigger, "task": self.task.name,
            "task_index": self.task_index,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[str, Any]]:
        """Draw a task (``options={"task": i}`` picks one) and start with nothing pruned."""
        super().reset(seed=seed)
        if options and "task" in options:
            self.task_index = int(options["task"])
        else:
            self.task_index = int(self.np_random.integers(len(self.tasks)))
        self.mask = torch.ones(self.task.num_nodes, dtype=torch.bool)
        self.steps = 0
        if self.task_index not in self._baseline:
            self._baseline[self.task_index] = self.task.score(self.mask, with_true_asr=True)
        self.last_score = self._baseline[self.task_index]
        return self._obs(), self._info(self.last_score)

    def step(self, action: np.int64 | int) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        """Prune node ``action`` (a no-op if :meth:`action_masks` rules it out)."""
        if self.last_score is None:
            raise RuntimeError("call reset() before step()")
        node = int(action)
        if self.action_masks()[node]:
            self.mask = self.mask.clone()
            self.mask[node] = False
        score = self.task.score(self.mask)
        reward = self.utility(score) - self.utility(self.last_score)
        self.last_score = score
        self.steps += 1
        terminated = score.proxy_asr <= self.config.asr_threshold
        truncated = not terminated and self.steps >= self.budget
        if terminated or truncated:  # the true ASR, for logging only, once per episode
            score = self.task.score(self.mask, with_true_asr=True)
        info = self._info(score)
        if terminated or truncated:  # vectorized envs reset at once: hand the mask out now
            info["final_mask"] = self.mask.numpy().copy()
        return self._obs(), float(reward), terminated, truncated, info

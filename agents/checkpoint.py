"""Training checkpoints that resume exactly: the run goes on as if it had never stopped.

A checkpoint is taken between two PPO rollouts and holds everything the rest of the run depends
on: the policy and Adam's state, every random generator (Python, NumPy, torch, the environment's
and its action space's), the environment's episode in progress (task, mask, step count, last
score), SB3's counters and last observation, and the caller's own state (the episode log's kept
masks). Tensors go to ``state.safetensors``, the rest to ``state.json``; nothing is pickled.
Both files are written to a hidden folder first and moved into place together.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sb3_contrib import MaskablePPO
from stable_baselines3.common.monitor import Monitor

from envs.pruning_env import ChannelPruningEnv
from onp.errors import ONPInputError
from onp.io import atomic_path
from onp.task import MaskScore

STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
FORMAT = 1


def _monitor(agent: MaskablePPO) -> Monitor:
    env = agent.get_env()
    assert env is not None and len(env.envs) == 1  # type: ignore[attr-defined]
    monitor = env.envs[0]  # type: ignore[attr-defined]
    assert isinstance(monitor, Monitor)  # SB3 wraps a plain gymnasium env in a Monitor
    return monitor


def _optimizer_tensors(agent: MaskablePPO) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = agent.policy.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = value
    return tensors


def save_checkpoint(
    directory: Path, agent: MaskablePPO, env: ChannelPruningEnv, caller: dict[str, Any],
    caller_tensors: dict[str, torch.Tensor], settings: dict[str, Any],
) -> None:
    """Write the whole training state to ``directory`` (replacing it atomically).

    Args:
        directory: The checkpoint folder.
        agent: The agent, between two rollouts.
        env: Its (unwrapped) environment.
        caller: JSON-ready state of the caller (e.g. the episode log).
        caller_tensors: The caller's tensors.
        settings: The settings a resume must match.
    """
    tensors = {f"policy/{k}": v.detach().cpu().clone()  # clones: SB3 shares the extractor
               for k, v in agent.policy.state_dict().items()}
    optimizer, optimizer_json = _optimizer_tensors(agent)
    tensors.update(optimizer)
    tensors.update(_rng_tensors())
    tensors["env/mask"] = env.mask.clone()
    last_obs = agent._last_obs
    assert isinstance(last_obs, dict)
    tensors.update({f"obs/{k}": torch.from_numpy(np.ascontiguousarray(v))
                    for k, v in last_obs.items()})
    tensors.update({f"caller/{k}": v for k, v in caller_tensors.items()})
    monitor = _monitor(agent)
    score = env.last_score
    payload = {
        "format": FORMAT, "settings": settings, "optimizer": optimizer_json,
        "num_timesteps": int(agent.num_timesteps), "n_updates": int(agent._n_updates),
        "episode_starts": np.asarray(agent._last_episode_starts).tolist(),
        "python_random": _jsonable(random.getstate()),
        "numpy_random": _jsonable(np.random.get_state()),
        "env_random": env.np_random.bit_generator.state,
        "action_space_random": env.action_space.np_random.bit_generator.state,
        "env": {"task_index": env.task_index, "steps": env.steps,
                "last_score": None if score is None else vars(score)},
        "monitor": {"rewards": list(monitor.rewards), "needs_reset": monitor.needs_reset},
        "caller": caller,
    }
    with atomic_path(directory, is_dir=True) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(payload) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and "ndarray" in value:
        return np.asarray(value["ndarray"], dtype=value["dtype"])
    if isinstance(value, list):
        return tuple(_from_jsonable(v) for v in value)
    return value


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON part and the tensors of a checkpoint; a damaged one is an ONPInputError."""
    try:
        payload = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(str(directory / STATE_TENSORS))
    except (OSError, ValueError, SafetensorError) as error:
        raise ONPInputError(f"{directory}: the checkpoint is damaged or incomplete ({error}); "
                            "start over with --overwrite true") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ONPInputError(f"{directory}/{STATE_JSON}: not a checkpoint of this ONP version; "
                            "start over with --overwrite true")
    return payload, tensors


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_optimizer(agent: MaskablePPO, payload: dict[str, Any],
                    tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in _prefixed(tensors, "optimizer/").items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in payload["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    agent.policy.optimizer.load_state_dict(
        {"state": state, "param_groups": payload["optimizer"]["param_groups"]})


def restore_checkpoint(
    directory: Path, agent: MaskablePPO, env: ChannelPruningEnv
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Put ``agent`` and ``env`` back in the state :func:`save_checkpoint` wrote.

    Call it on a freshly made agent (same settings and environment), just before training on.

    Returns:
        The caller's JSON state and tensors.

    Raises:
        ONPInputError: If the checkpoint is damaged or does not fit the agent.
    """
    payload, tensors = read_checkpoint(directory)
    try:
        agent.policy.load_state_dict(_prefixed(tensors, "policy/"))
        _load_optimizer(agent, payload, tensors)
    except (RuntimeError, KeyError, ValueError) as error:
        raise ONPInputError(f"{directory}: the checkpoint does not fit this policy ({error}); "
                            "resume with the settings it was made with") from None
    agent.num_timesteps = int(payload["num_timesteps"])
    agent._n_updates = int(payload["n_updates"])
    agent._last_obs = {k: v.numpy() for k, v in _prefixed(tensors, "obs/").items()}
    agent._last_episode_starts = np.asarray(payload["episode_starts"], dtype=bool)
    env.task_index = int(payload["env"]["task_index"])
    env.steps = int(payload["env"]["steps"])
    env.mask = tensors["env/mask"].clone()
    score = payload["env"]["last_score"]
    env.last_score = None if score is None else MaskScore(**score)
    env.np_random.bit_generator.state = payload["env_random"]
    env.action_space.np_random.bit_generator.state = payload["action_space_random"]
    vec_env = agent.get_env()
    assert vec_env is not None
    vec_env._reset_seeds()  # type: ignore[attr-defined]  # the seeded reset already happened
    monitor = _monitor(agent)
    monitor.rewards = list(payload["monitor"]["rewards"])
    monitor.needs_reset = bool(payload["monitor"]["needs_reset"])
    random.setstate(_from_jsonable(payload["python_random"]))
    np.random.set_state(_from_jsonable(payload["numpy_random"]))
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return payload["caller"], _prefixed(tensors, "caller/")

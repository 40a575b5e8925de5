"""Issue 4's benchmark: the learned mask against random and single-feature pruning, and transfer.

Trigger-free throughout (the agent sees only clean defense data and its synthesized probe); the
held-out test sets are used only to report. Steps:

1. train the policy on ``--train`` models; for each, the agent's mask (the best episodes by
   defense utility on the step batches, re-checked on more defense data:
   :func:`agents.ppo.best_mask`; the unchecked choice, the best episode by the step batches
   alone, is reported beside it), random pruning of the same number of channels (mean of
   draws), and greedy pruning by the single feature ``trigger_z`` until the proxy ASR on the
   defense probe reaches the env's threshold (or the budget) — CA, true ASR, channels, seconds;
2. on the ``--heldout`` model: the trained policy applied as is, fine-tuned for
   ``--finetune-steps``, and a fresh policy trained from scratch for the same steps;
3. the episode-reward curve of step 1 as a PNG.

    python benchmarks/agent_fmnist.py --train runs/bench-attacks/badnets/model \
        runs/bench-attacks/blended/model --heldout runs/bench-attacks/wanet/model \
        --timesteps 4096 --out runs/bench-agent
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.ppo import PPOConfig, best_mask, learn, save_policy  # noqa: E402
from envs.pruning_env import ChannelPruningEnv, EnvConfig  # noqa: E402
from onp.graph.features import feature_index  # noqa: E402
from onp.graph.mask import ChannelMask, masked  # noqa: E402
from onp.io import atomic_path, write_json  # noqa: E402
from onp.subjects import Subject, load_subject  # noqa: E402
from onp.task import PruningTask, TaskConfig, build_task  # noqa: E402
from onp.train_agent import TrainAgentConfig, make_probe  # noqa: E402

log = logging.getLogger("agent_fmnist")


def prepare(path: Path, seed: int, out: Path) -> tuple[Subject, PruningTask, float]:
    """Subject, task (trigger-free probe, cached in ``out/signal``) and the signal's seconds."""
    subject = load_subject(path)
    start = time.perf_counter()
    probe = make_probe(subject, TrainAgentConfig(seed=seed), out)
    task = build_task(subject.name, subject.model, subject.defense, probe,
                      TaskConfig(), seed, subject.evaluation_probe())
    return subject, task, time.perf_counter() - start


def test_metrics(subject: Subject, task: PruningTask, mask: ChannelMask) -> dict:
    """Held-out CA / ASR (percent) under ``mask``, and the pruned count."""
    with masked(subject.model, task.groups, mask):
        metrics = subject.evaluate()
    return {**metrics.as_percent(), "pruned": int((~mask).sum())}


def feature_greedy(task: PruningTask, env_config: EnvConfig) -> ChannelMask:
    """Prune by descending ``trigger_z`` until the defense proxy ASR reaches the threshold."""
    order = torch.argsort(task.graph.x[:, feature_index("trigger_z")], descending=True)
    mask = torch.ones(task.num_nodes, dtype=torch.bool)
    budget = int(np.ceil(env_config.budget_fraction * task.num_nodes))
    for node in order[:budget].tolist():
        mask[node] = False
        if task.score(mask).proxy_asr <= env_config.asr_threshold:
            break
    return mask


def random_same_count(subject, task, count: int, draws: int, seed: int) -> dict:
    """Mean held-out metrics of ``draws`` random masks pruning ``count`` channels."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(draws):
        mask = torch.ones(task.num_nodes, dtype=torch.bool)
        mask[torch.randperm(task.num_nodes, generator=generator)[:count]] = False
        rows.append(test_metrics(subject, task, mask))
    return {key: round(float(np.mean([r[key] for r in rows])), 2) for key in rows[0]}


def reward_curve(returns: list[float], path: Path) -> None:
    """Episode reward (and its moving mean) against episode number."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(returns, alpha=0.35, label="episode reward")
    window = max(1, len(returns) // 20)
    if len(returns) >= window:
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        axis.plot(np.arange(window - 1, len(returns)), smooth, label=f"mean of {window}")
    axis.set_xlabel("episode")
    axis.set_ylabel("reward = change of CA - proxy ASR")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--heldout", type=Path, default=None)
    parser.add_argument("--timesteps", type=int, default=4096)
    parser.add_argument("--finetune-steps", type=int, default=512)
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-agent"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ppo = PPOConfig()
    prepared = [prepare(p, args.seed, args.out) for p in args.train]
    heldout = prepare(args.heldout, args.seed, args.out) if args.heldout is not None else None
    # One padded size for training and transfer, so the policy applies to the held-out model.
    sizes = [t.num_nodes for _, t, _ in prepared + ([heldout] if heldout else [])]
    env_config = EnvConfig(max_nodes=max(sizes))
    env = ChannelPruningEnv([t for _, t, _ in prepared], env_config)
    result = learn(env, ppo, args.timesteps, args.seed, args.out)
    save_policy(result.agent, args.out / "policy", ppo)
    reward_curve(result.episodes.returns, args.out / "reward_curve.png")
    report: dict = {"timesteps": args.timesteps, "train_seconds": round(result.seconds, 1),
                    "torch_threads": torch.get_num_threads(), "models": {}}
    for subject, task, signal_seconds in prepared:
        choice = best_mask(result, result.env.tasks.index(task))
        mask = choice.mask
        unchecked = result.episodes.candidates[task.name][0]
        start = time.perf_counter()
        greedy = feature_greedy(task, env_config)
        greedy_seconds = time.perf_counter() - start
        report["models"][task.name] = {
            "signal_seconds": round(signal_seconds, 1),
            "unpruned": test_metrics(subject, task, torch.ones(task.num_nodes, dtype=bool)),
            "agent": {**test_metrics(subject, task, mask),
                      **{k: v for k, v in choice.to_json().items() if k != "pruned_nodes"}},
            "agent_unchecked": {**test_metrics(subject, task, unchecked["mask"]),
                                "step_utility": unchecked["utility"]},
            "random_same_count": random_same_count(
                subject, task, int((~mask).sum()), args.random_draws, args.seed),
            "greedy_trigger_z": {**test_metrics(subject, task, greedy),
                                 "seconds": round(greedy_seconds, 1)},
        }
    if heldout is not None:
        report["heldout"] = {"model": str(args.heldout),
                             **transfer(args, heldout, ppo, env_config)}
    write_json(args.out / "agent_fmnist.json", report)
    log.info("wrote %s", args.out / "agent_fmnist.json")


def transfer(args, heldout, ppo: PPOConfig, config: EnvConfig) -> dict:
    """The trained policy on an unseen model: as is, fine-tuned, and from scratch."""
    subject, task, _ = heldout
    out = {}
    for name, steps, init in (("as_is", 0, args.out / "policy"),
                              ("finetuned", args.finetune_steps, args.out / "policy"),
                              ("scratch", args.finetune_steps, None)):
        env = ChannelPruningEnv(task, config)
        start = time.perf_counter()
        result = learn(env, ppo, steps, args.seed, None, init)
        mask = best_mask(result, result.env.tasks.index(task)).mask
        out[name] = {**test_metrics(subject, task, mask), "steps": steps,
                     "seconds": round(time.perf_counter() - start, 1)}
    out["unpruned"] = test_metrics(subject, task, torch.ones(task.num_nodes, dtype=bool))
    return out


if __name__ == "__main__":
    main()

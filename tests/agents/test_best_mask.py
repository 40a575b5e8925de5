"""The seed mask: the best training episodes, re-checked on larger defense sets."""

from __future__ import annotations

import torch

from agents.ppo import CANDIDATES, PPOConfig, best_mask, learn, rollout
from envs.pruning_env import ChannelPruningEnv
from onp.data.types import ImageSet
from onp.eval.metrics import accuracy_of, predict
from onp.graph.mask import masked
from onp.signal.probe import SYNTHESIZED, BackdoorProbe
from onp.task import PruningTask

from ..envs.conftest import tiny_task

SMALL_PPO = PPOConfig(n_steps=16, batch_size=8, n_epochs=1, hidden=8, layers=1, heads=1)


def _with_check(task: PruningTask, seed: int = 1) -> PruningTask:
    """The same task with check sets of 48 other random images."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(48, *task.clean.images.shape[1:], generator=generator)
    labels = torch.randint(1, 3, (48,), generator=generator)  # class 0 is the target
    clean = ImageSet(images, labels, task.clean.meta)
    probe = BackdoorProbe(images, torch.zeros(48, dtype=torch.long), labels, False, SYNTHESIZED)
    return PruningTask(task.name, task.model, task.groups, task.graph, task.clean, task.probe,
                       check=(clean, probe))


def test_check_score_reads_the_check_sets_and_falls_back_to_the_step_batches() -> None:
    plain = tiny_task(width=4)
    checked = _with_check(plain)
    mask = torch.ones(plain.num_nodes, dtype=torch.bool)
    mask[[0, 1, 5]] = False
    assert plain.check_score(mask) == plain.score(mask)
    clean, probe = checked.check
    with masked(checked.model, checked.groups, mask):
        expected_ca = accuracy_of(predict(checked.model, clean.images), clean.labels)
        expected_asr = probe.asr_of(predict(checked.model, probe.images))
    score = checked.check_score(mask)
    assert (score.clean_accuracy, score.proxy_asr) == (expected_ca, expected_asr)


def test_the_logger_keeps_distinct_masks_best_first() -> None:
    env = ChannelPruningEnv(tiny_task(width=4))
    result = learn(env, SMALL_PPO, 96, seed=0)
    kept = result.episodes.candidates["tiny"]
    assert 1 <= len(kept) <= CANDIDATES
    utilities = [k["utility"] for k in kept]
    assert utilities == sorted(utilities, reverse=True)
    masks = {k["mask"].numpy().tobytes() for k in kept}
    assert len(masks) == len(kept)


def test_best_mask_takes_the_highest_utility_on_the_check_sets() -> None:
    # seed 3: a random net whose answers change with the mask (most answer one class throughout)
    env = ChannelPruningEnv(_with_check(tiny_task(width=4, seed=3)))
    result = learn(env, SMALL_PPO, 32, seed=0)
    task = env.tasks[0]
    generator = torch.Generator().manual_seed(0)
    masks = []
    for _ in range(20):  # random masks, one per distinct check utility
        mask = torch.rand(task.num_nodes, generator=generator) > 0.3
        utility = env.utility(task.check_score(mask))
        if all(utility != u for u, _ in masks):
            masks.append((utility, mask))
    (low, worse), (high, better) = min(masks, key=lambda m: m[0]), max(masks, key=lambda m: m[0])
    # The step batches rank the worse mask first: the check must overturn that.
    result.episodes.candidates["tiny"] = [{"mask": worse, "utility": 1.0},
                                          {"mask": better, "utility": 0.0}]
    greedy = rollout(result.agent, env, 0)
    choice = best_mask(result, 0, greedy)
    assert choice.candidates == 3
    greedy_utility = env.utility(task.check_score(greedy["mask"]))
    # The check picks the better mask over the one the step batches ranked first, unless the
    # greedy rollout reads higher still on the check sets (then it must be the choice).
    expected = better if high >= greedy_utility else greedy["mask"]
    assert torch.equal(choice.mask, expected)
    assert choice.check_utility == max(high, greedy_utility) and high > low
    assert choice.check == task.check_score(choice.mask)
    listed = choice.to_json()
    assert listed["check"]["utility"] == choice.check_utility
    assert listed["pruned_nodes"] == torch.nonzero(~choice.mask).flatten().tolist()


def test_without_check_sets_the_best_episode_by_the_step_batches_wins() -> None:
    env = ChannelPruningEnv(tiny_task(width=4))
    result = learn(env, SMALL_PPO, 96, seed=0)
    greedy = rollout(result.agent, env, 0)
    choice = best_mask(result, 0, greedy)
    top = result.episodes.candidates["tiny"][0]
    # Without check sets a mask's check reading is its step reading: the best of the episodes
    # and the greedy rollout by the step batches wins, the episode on a tie.
    expected = top["mask"] if top["utility"] >= greedy["utility"] else greedy["mask"]
    assert torch.equal(choice.mask, expected)
    assert choice.check_utility == max(top["utility"], greedy["utility"]) == choice.step_utility

r"""Environment steps per second on an infected bundle, with a probe cached by train_agent.

Example::

    python benchmarks/env_speed.py --model runs/bench-attacks/badnets/model \
        --signal-dir runs/bench-agent3 --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from signal_env import env_speed  # noqa: I001  (benchmarks/ is not a package)

from onp.subjects import load_subject
from onp.task import TaskConfig, build_task
from onp.train_agent import TrainAgentConfig, make_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--signal-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    subject = load_subject(args.model)
    probe = make_probe(subject, TrainAgentConfig(seed=args.seed), args.signal_dir)
    task = build_task(subject.name, subject.model, subject.defense, probe, TaskConfig(),
                      args.seed, subject.evaluation_probe())
    speed = env_speed(task, args.steps, args.seed)
    print(json.dumps({"model": str(args.model), "steps": args.steps, "steps_per_s": round(speed, 1),
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

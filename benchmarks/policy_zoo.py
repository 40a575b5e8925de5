"""Rebuild the pretrained pruning policy that ships in ``onp/policies/``.

    python benchmarks/policy_zoo.py --out runs/policy-zoo                       # all stages
    python benchmarks/policy_zoo.py --out runs/policy-zoo --stage models --only 0 2 4
    python benchmarks/policy_zoo.py --out runs/policy-zoo --stage agent
    python benchmarks/policy_zoo.py --out runs/policy-zoo --stage ship

The zoo is Fashion-MNIST models infected by ``onp.attack`` at its defaults (4 epochs, 5% defense
split), with two architectures (the default ResNet: residual groups and BatchNorm; the plain CNN:
neither), several attacks, and target classes other than 0. Its seeds (20-25) are kept apart from
every model a results table reports (seeds 0-2 and 10-12), so no table model shaped the policy.
Each stage reuses what an earlier run of it finished: a model folder with its ``record.json``,
the agent's checkpoint (``--resume``). ``--only`` trains some of the models, e.g. in two
processes side by side. ``ship`` copies the policy into the package with ``zoo.json``: the
entries, the agent's settings and the commands.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from onp.attacks.train import AttackRunConfig, run_attack
from onp.config import config_to_dict

ZOO: tuple[dict[str, Any], ...] = (
    {"model": "resnet", "attack": "badnets", "target": 3, "seed": 20},
    {"model": "resnet", "attack": "blended", "target": 7, "seed": 21},
    {"model": "resnet", "attack": "wanet", "target": 5, "seed": 22},
    {"model": "resnet", "attack": "sig", "target": 2, "seed": 23},
    {"model": "plain_cnn", "attack": "badnets", "target": 6, "seed": 24},
    {"model": "plain_cnn", "attack": "blended", "target": 1, "seed": 25},
)
AGENT_TIMESTEPS = 4096
"""PPO steps over the whole zoo (each episode draws one model)."""
AGENT_PPO = {"n_epochs": 2}
PACKAGE_POLICY = Path(__file__).resolve().parents[1] / "onp" / "policies" / "fmnist"


def entry_name(entry: dict[str, Any]) -> str:
    return f"{entry['model']}-{entry['attack']}-t{entry['target']}-s{entry['seed']}"


def train_models(out: Path, indices: list[int]) -> None:
    for index in indices:
        entry = ZOO[index]
        folder = out / "models" / entry_name(entry)
        if (folder / "record.json").is_file():
            print(f"reusing {folder}")
            continue
        record = run_attack(AttackRunConfig(dataset="fashion-mnist", out=str(folder), **entry))
        print(f"{folder}: {record}")


def agent_command(out: Path) -> list[str]:
    models = [str(out / "models" / entry_name(e) / "model") for e in ZOO]
    return [sys.executable, "-m", "onp.train_agent", "--models", *models,
            "--dataset", "fashion-mnist", "--timesteps", str(AGENT_TIMESTEPS),
            "--ppo", json.dumps(AGENT_PPO), "--seed", "0", "--out", str(out / "agent")]


def train_agent(out: Path) -> None:
    command = agent_command(out)
    if (out / "agent").is_dir():
        command += ["--resume", "true"]
    print(" ".join(command))
    subprocess.run(command, check=True)


def ship(out: Path) -> None:
    policy = out / "agent" / "policy"
    PACKAGE_POLICY.mkdir(parents=True, exist_ok=True)
    for name in ("policy.safetensors", "policy.json"):
        shutil.copyfile(policy / name, PACKAGE_POLICY / name)
    records = {entry_name(e): json.loads((out / "models" / entry_name(e) / "record.json")
                                         .read_text())["percent"] for e in ZOO}
    agent_config = json.loads((out / "agent" / "config.json").read_text())
    (PACKAGE_POLICY / "zoo.json").write_text(json.dumps({
        "zoo": [{**e, "name": entry_name(e), "test_percent": records[entry_name(e)],
                 "attack_defaults": config_to_dict(AttackRunConfig(**e))} for e in ZOO],
        "agent": {k: agent_config[k] for k in ("timesteps", "ppo", "signal", "budget_fraction",
                                               "asr_threshold", "asr_weight", "seed")},
        "rebuild": "python benchmarks/policy_zoo.py --out runs/policy-zoo",
    }, indent=2, sort_keys=True) + "\n")
    print(f"shipped {policy} -> {PACKAGE_POLICY}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/policy-zoo"))
    parser.add_argument("--stage", choices=("all", "models", "agent", "ship"), default="all")
    parser.add_argument("--only", type=int, nargs="+", default=list(range(len(ZOO))),
                        help="zoo entries to train (indices)")
    args = parser.parse_args()
    if args.stage in ("all", "models"):
        train_models(args.out, args.only)
    if args.stage in ("all", "agent"):
        train_agent(args.out)
    if args.stage in ("all", "ship"):
        ship(args.out)


if __name__ == "__main__":
    main()

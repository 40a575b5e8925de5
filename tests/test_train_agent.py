from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from agents.checkpoint import STATE_JSON
from envs.pruning_env import ChannelPruningEnv
from onp.attack import main as attack_main
from onp.outputs import MARKER, read_marker
from onp.train_agent import main

TINY_SIGNAL = '{"trigger_steps": 20, "unlearn_max_steps": 30, "probe_size": 64}'
TINY_PPO = '{"n_steps": 16, "batch_size": 8, "n_epochs": 1, "hidden": 8, "layers": 1}'


def _args(infected_run, tiny_data, out, timesteps: int) -> list[str]:
    return [
        "--models", str(infected_run / "model"), "--dataset", "npz",
        "--data-root", str(tiny_data), "--timesteps", str(timesteps), "--ppo", TINY_PPO,
        "--signal", TINY_SIGNAL, "--checkpoint-every", "16", "--clean-batch", "64",
        "--probe-batch", "32", "--out", str(out),
    ]


def _checkpoint_steps(out: Path) -> int:
    return json.loads((out / "checkpoints/latest" / STATE_JSON).read_text())["num_timesteps"]


@pytest.fixture(scope="module")
def trained(infected_run, tiny_data, tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("agent")
    with single_thread():
        assert main(_args(infected_run, tiny_data, out, 32)) == 0
    return out


def test_writes_policy_masks_results_config_and_tensorboard(trained) -> None:
    for name in ("config.json", "best_masks.json", "results.json", "policy/policy.safetensors",
                 f"checkpoints/latest/{STATE_JSON}"):
        assert (trained / name).is_file(), name
    assert any((trained / "tb").rglob("events.out.tfevents.*"))
    results = json.loads((trained / "results.json").read_text())
    entry = results["models"]["badnets"]
    assert results["known_trigger"] is False
    assert entry["policy_mask"]["pruned"] == len(entry["policy_mask"]["pruned_nodes"]) > 0
    assert set(entry["unpruned"]["test"]) == {"CA", "ASR", "RA"}
    [signal_file] = (trained / "signal").glob("badnets-*.json")
    assert json.loads(signal_file.read_text())["probe"]["known_trigger"] is False
    assert read_marker(trained) == {"command": "onp.train_agent", "finished": True}


def _outputs(out: Path) -> dict[str, object]:
    """What a run leaves that must not depend on being interrupted."""
    policy = load_file(str(out / "policy/policy.safetensors"))
    results = json.loads((out / "results.json").read_text())
    for key in ("setup_seconds", "train_seconds"):
        results.pop(key)
    return {"policy": {k: v.tolist() for k, v in sorted(policy.items())},
            "best_masks": json.loads((out / "best_masks.json").read_text()),
            "results": results, "steps": _checkpoint_steps(out)}


@pytest.fixture(scope="module")
def whole_run(infected_run, tiny_data, tmp_path_factory, single_thread) -> dict[str, object]:
    """The outputs of an uninterrupted 64-step run (one torch thread, as every test)."""
    out = tmp_path_factory.mktemp("whole")
    with single_thread():
        assert main(_args(infected_run, tiny_data, out, 64)) == 0
    return _outputs(out)


def test_resume_after_a_stop_gives_the_uninterrupted_run(
    whole_run, infected_run, tiny_data, tmp_path, caplog
) -> None:
    """Stopped after 16, 32 or 48 of 64 steps and resumed: the same policy, masks, results."""
    caplog.set_level(logging.INFO)
    assert whole_run["steps"] == 64
    for stop in (16, 32, 48):
        out = tmp_path / f"stop-{stop}"
        assert main(_args(infected_run, tiny_data, out, stop)) == 0
        assert _checkpoint_steps(out) == stop
        assert _outputs(out) != whole_run
        assert main(_args(infected_run, tiny_data, out, 64) + ["--resume", "true"]) == 0
        assert f"at {stop} steps" in caplog.text  # it resumed rather than starting over
        assert _outputs(out) == whole_run, stop


class Killed(Exception):
    """Stands in for a kill in the middle of a rollout."""


def test_a_run_killed_mid_rollout_resumes_exactly(
    whole_run, infected_run, tiny_data, tmp_path, monkeypatch
) -> None:
    """Killed at step 40 (after the checkpoint at 32): kept unfinished; --resume finishes it."""
    out = tmp_path / "killed"
    real_step, calls = ChannelPruningEnv.step, []

    def dying_step(self, action):
        calls.append(action)
        if len(calls) == 40:
            raise Killed
        return real_step(self, action)

    monkeypatch.setattr(ChannelPruningEnv, "step", dying_step)
    with pytest.raises(Killed):
        main(_args(infected_run, tiny_data, out, 64))
    monkeypatch.setattr(ChannelPruningEnv, "step", real_step)
    marker = read_marker(out)
    assert marker is not None and (marker["command"], marker["finished"]) == (
        "onp.train_agent", False)
    assert _checkpoint_steps(out) == 32
    assert main(_args(infected_run, tiny_data, out, 64) + ["--resume", "true"]) == 0
    assert _outputs(out) == whole_run


def test_a_killed_run_is_kept_for_resume_and_resumes_exactly(
    infected_run, tiny_data, tmp_path
) -> None:
    """A kill after the last checkpoint: the folder stays unfinished; --resume finishes it."""
    whole = tmp_path / "whole"
    assert main(_args(infected_run, tiny_data, whole, 32)) == 0
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    for name in ("policy", "results.json", "best_masks.json"):  # what the kill cut short
        path = killed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (killed / MARKER).write_text('{"command": "onp.train_agent", "finished": false}')
    assert main(_args(infected_run, tiny_data, killed, 32)) == 2  # neither resume nor overwrite
    assert main(_args(infected_run, tiny_data, killed, 32) + ["--resume", "true"]) == 0
    assert _outputs(killed) == _outputs(whole)


def test_resume_with_other_settings_is_refused_naming_them(trained, infected_run, tiny_data,
                                                           caplog) -> None:
    before = _checkpoint_steps(trained)
    args = _args(infected_run, tiny_data, trained, 64) + ["--resume", "true", "--seed", "3"]
    assert main(args) == 2
    assert "seed: checkpoint 0, now 3" in caplog.text
    assert _checkpoint_steps(trained) == before


def test_a_damaged_checkpoint_is_a_clear_error(trained, infected_run, tiny_data, tmp_path,
                                               caplog) -> None:
    out = tmp_path / "damaged"
    shutil.copytree(trained, out)
    weights = out / "checkpoints/latest/state.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(_args(infected_run, tiny_data, out, 64) + ["--resume", "true"]) == 2
    assert "checkpoint is damaged" in caplog.text


def test_no_model_is_a_clear_error(tmp_path) -> None:
    assert main(["--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_an_earlier_run_is_replaced_only_with_overwrite(trained, infected_run, tiny_data,
                                                        tmp_path) -> None:
    out = tmp_path / "again"
    shutil.copytree(trained, out)
    assert main(_args(infected_run, tiny_data, out, 16)) == 2
    assert _checkpoint_steps(out) == 32
    assert main(_args(infected_run, tiny_data, out, 16) + ["--overwrite", "true"]) == 0
    assert _checkpoint_steps(out) == 16


def test_known_trigger_mode_does_not_reuse_the_trigger_free_probe(
    trained, infected_run, tiny_data, tmp_path
) -> None:
    out = tmp_path / "known"
    shutil.copytree(trained, out)
    args = _args(infected_run, tiny_data, out, 16) + ["--known-trigger", "true"]
    assert main(args + ["--overwrite", "true"]) == 0
    [signal_file] = (out / "signal").glob("badnets-*.json")
    assert json.loads(signal_file.read_text())["probe"]["known_trigger"] is True
    results = json.loads((out / "results.json").read_text())
    assert results["known_trigger"] is True


def test_models_in_folders_of_the_same_name_get_their_own_probe_and_results(
    infected_run, tiny_data, tmp_path
) -> None:
    """Two different models both called ``badnets``: two probes, two result entries."""
    other = tmp_path / "other" / "badnets"
    assert attack_main(["--dataset", "npz", "--data-root", str(tiny_data), "--model", "resnet",
                        "--model-options", '{"width": 4, "depth": 8}', "--attack", "badnets",
                        "--target", "2", "--poison-rate", "0.2", "--epochs", "2",
                        "--batch-size", "32", "--defense-size", "0.25", "--seed", "1",
                        "--out", str(other)]) == 0
    out = tmp_path / "agent"
    args = _args(infected_run, tiny_data, out, 16)
    args[1:2] = [str(infected_run / "model"), str(other / "model")]
    assert main(args) == 0
    probes = sorted((out / "signal").glob("badnets*.json"))
    assert len(probes) == 2
    keys = [json.loads(p.read_text())["key"]["model"] for p in probes]
    assert keys[0] != keys[1]
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["models"]) == ["badnets", "badnets-2"]

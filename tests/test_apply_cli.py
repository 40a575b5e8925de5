"""Smoke tests of ``python -m onp.apply`` on the tiny infected model, at tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from onp.apply import main as apply_main
from onp.config import parse_config
from onp.errors import ONPInputError
from onp.eval.metrics import predict
from onp.graph.groups import trace_groups
from onp.graph.mask import masked
from onp.models.bundle import load_bundle
from onp.models.loading import load_model
from onp.repair import pipeline
from onp.repair.compact import load_compact
from onp.repair.detector import choose_rule, load_detector
from onp.repair.pipeline import ApplyConfig
from onp.train_agent import main as train_agent_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_SIGNAL = '{"trigger_steps": 20, "unlearn_max_steps": 20, "probe_size": 64}'
TINY_PPO = '{"n_steps": 16, "batch_size": 8, "n_epochs": 1, "hidden": 8, "layers": 1}'


def _tiny(out: Path, *extra: str) -> list[str]:
    """Tiny budgets; a policy trained here (not the shipped one) unless ``extra`` names one."""
    policy = [] if "--policy" in extra else ["--policy", "none"]
    return ["--signal", TINY_SIGNAL, "--ppo", TINY_PPO, "--agent-timesteps", "16", *policy,
            "--rounds", "2", "--clean-batch", "64", "--probe-batch", "32",
            "--perturbation-steps", "8", "--refresh-steps", "2", "--out", str(out), *extra]


def _subject_args(infected_run: Path, tiny_data: Path) -> list[str]:
    return ["--model", str(infected_run / "model"), "--dataset", "npz",
            "--data-root", str(tiny_data)]


@pytest.fixture(scope="module")
def applied(infected_run, tiny_data, tmp_path_factory, single_thread) -> Path:
    out = tmp_path_factory.mktemp("apply") / "run"
    with single_thread():
        assert apply_main(_subject_args(infected_run, tiny_data) + _tiny(out)) == 0
    return out


def test_apply_writes_b_prime_g_compact_copy_report_and_plots(applied) -> None:
    for name in ("repaired/spec.json", "repaired_compact/widths.json", "detector/detector.json",
                 "report.json", "report.md", "masks.json", "config.json",
                 "plots/rounds.png", "plots/pruning_map.png"):
        assert (applied / name).is_file(), name
    # the agent trained here (--policy none): its TensorBoard logs come along
    assert list((applied / "tb").rglob("events.out.tfevents.*"))
    report = json.loads((applied / "report.json").read_text())
    assert set(report["test"]["B"]) == {"CA", "ASR", "RA"}
    assert report["test"]["B"]["ASR"] > 80  # the infected model, before
    assert report["not_measured"] == []
    assert report["mask"]["source"].startswith("trained")
    assert len(report["sparse"]["rounds"]) == 2
    # refit (the default) retrained B' on the held-in images: its held-in row says so
    assert report["sparse"]["config"]["refit"] is True
    assert "B' (refit: trained on these images)" in report["held_in"]
    assert set(report["seconds"]) >= {"signal", "mask", "repair", "evaluate", "save", "total"}
    g = report["test"]["G"]
    assert g == report["test"]["G_rules"]["disagree"]
    assert 0 <= g["false_alarm"] <= 100 and 0 <= g["detection"] <= 100
    assert "## Held-out test data" in (applied / "report.md").read_text()
    # G watches the probe's suspected targets, and the report scores the "target" rule with them.
    saved = json.loads((applied / "detector" / "detector.json").read_text())
    assert saved["targets"] == sorted(int(t) for t in report["probe"]["targets"])
    assert "target" in report["test"]["G_rules"]
    # refit trained B' on the held-in images: G's rules are not scored there, and it says so
    assert report["G_rules_held_in"] is None and report["data"]["detector_probe"] is None
    assert "not scored on held-in data: B' was refit" in (applied / "report.md").read_text()
    masks = json.loads((applied / "masks.json").read_text())
    assert set(masks["seed_pruned"]) <= set(masks["final_pruned"])  # the seed stays pruned


def test_b_prime_has_its_mask_baked_and_the_compact_copy_agrees(applied, tiny_data) -> None:
    repaired = load_bundle(applied / "repaired")
    assert repaired.spec.provenance["repaired_by"] == "onp.apply"
    groups = trace_groups(repaired, repaired.spec.input_shape)
    final = json.loads((applied / "masks.json").read_text())["final_pruned"]
    mask = torch.ones(groups.num_nodes, dtype=torch.bool)
    mask[final] = False
    x = torch.rand(6, *repaired.spec.input_shape)
    with torch.no_grad():
        baked = repaired(x)
        with masked(repaired, groups, mask):
            torch.testing.assert_close(repaired(x), baked)
        small = load_compact(applied / "repaired_compact")
        torch.testing.assert_close(small(x), baked, atol=1e-5, rtol=1e-4)
    detector = load_detector(applied / "detector")
    decisions = detector.predict(x)
    agree = detector.original(x).argmax(1) == baked.argmax(1)
    assert torch.equal(decisions[agree], baked.argmax(1)[agree])
    assert bool((decisions[~agree] == detector.num_classes).all())


@pytest.fixture(scope="module")
def tiny_policy(infected_run, tiny_data, tmp_path_factory, single_thread) -> Path:
    """A policy trained by train_agent on the tiny model."""
    agent = tmp_path_factory.mktemp("policy") / "agent"
    with single_thread():
        assert train_agent_main(["--models", str(infected_run / "model"), "--dataset", "npz",
                                 "--data-root", str(tiny_data), "--timesteps", "16", "--ppo",
                                 TINY_PPO, "--signal", TINY_SIGNAL, "--clean-batch", "64",
                                 "--probe-batch", "32", "--out", str(agent)]) == 0
    return agent / "policy"


def test_the_shipped_policy_is_the_default_when_the_model_fits(
    infected_run, tiny_data, tmp_path, tiny_policy, monkeypatch
) -> None:
    monkeypatch.setattr(pipeline, "shipped_policy", lambda: tiny_policy)
    out = tmp_path / "apply"
    args = _subject_args(infected_run, tiny_data) + _tiny(out, "--policy", "shipped")
    args.remove("--agent-timesteps")
    args.remove("16")
    assert apply_main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mask"]["source"].startswith("shipped:") and report["mask"]["timesteps"] == 0
    # asked to fine-tune it: the same policy, trained on for the given steps
    again = tmp_path / "finetuned"
    assert apply_main(_subject_args(infected_run, tiny_data) + _tiny(again, "--policy",
                                                                     "shipped")) == 0
    report = json.loads((again / "report.json").read_text())
    assert report["mask"]["source"].startswith("shipped-finetuned:")
    assert report["mask"]["timesteps"] == 16


def test_a_model_the_shipped_policy_cannot_take_gets_a_policy_trained_here(
    infected_run, tiny_data, tmp_path, tiny_policy, monkeypatch
) -> None:
    small = tmp_path / "small-policy"
    small.mkdir()
    (small / "policy.safetensors").write_bytes((tiny_policy / "policy.safetensors").read_bytes())
    spec = json.loads((tiny_policy / "policy.json").read_text())
    (small / "policy.json").write_text(json.dumps({**spec, "max_nodes": 2}))
    monkeypatch.setattr(pipeline, "shipped_policy", lambda: small)
    out = tmp_path / "apply"
    assert apply_main(_subject_args(infected_run, tiny_data) + _tiny(out, "--policy",
                                                                     "shipped")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mask"]["source"].startswith("trained (the shipped policy does not fit)")
    monkeypatch.setattr(pipeline, "shipped_policy", lambda: None)
    out = tmp_path / "none-shipped"
    assert apply_main(_subject_args(infected_run, tiny_data) + _tiny(out, "--policy",
                                                                     "shipped")) == 0
    assert json.loads((out / "report.json").read_text())["mask"]["source"].startswith("trained:")


def test_a_trained_policy_is_applied_as_is(infected_run, tiny_data, tmp_path,
                                           tiny_policy) -> None:
    agent = tiny_policy.parent
    out = tmp_path / "apply"
    args = _subject_args(infected_run, tiny_data) + _tiny(out, "--policy", str(agent / "policy"),
                                                          "--detector-rule", "auto",
                                                          "--refit", "false")
    args.remove("--agent-timesteps")
    args.remove("16")
    assert apply_main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mask"]["source"].startswith("policy") and report["mask"]["timesteps"] == 0
    # auto: G's rule is the one choose_rule picks from the held-in scores in the report
    assert "target" in report["G_rules_held_in"]  # without refit they are scored, all rules
    held_in = {(n.split("@")[0], float(n.split("@")[1]) if "@" in n else 1.0): g
               for n, g in report["G_rules_held_in"].items()}
    saved = json.loads((out / "detector" / "detector.json").read_text())
    assert (saved["rule"], saved["threshold"]) == choose_rule(held_in)


def _write_h5(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    with h5py.File(path, "w") as handle:
        handle["data"] = images  # CSAW layout: [N, H, W, C], pixels 0..255
        handle["label"] = labels
    return path


def test_files_without_true_labels_report_what_was_not_measured(infected_run, tiny_data,
                                                                tmp_path) -> None:
    train = np.load(tiny_data / "train.npz")
    images = train["x"][..., None].astype(np.float32)
    defense = _write_h5(tmp_path / "clean_valid.h5", images[:200], train["y"][:200])
    poisoned = images[200:240].copy()
    poisoned[:, -3:, -3:, :] = 255.0
    bd = _write_h5(tmp_path / "bd_test.h5", poisoned, np.zeros(40))
    out = tmp_path / "apply"
    args = ["--model", str(infected_run / "model"), "--data", str(defense),
            "--eval-poisoned", str(bd)] + _tiny(out, "--rounds", "1")
    assert apply_main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["B"]["CA"] is None and report["test"]["B"]["RA"] is None
    assert report["test"]["B"]["ASR"] is not None
    assert any("clean" in m for m in report["not_measured"])
    assert any("true classes" in m for m in report["not_measured"])
    assert "## Not measured" in (out / "report.md").read_text()


def test_a_failing_run_leaves_no_output_folder(infected_run, tiny_data, tmp_path,
                                               monkeypatch) -> None:
    out = tmp_path / "apply"
    assert apply_main(["--model", str(infected_run / "model"), "--data",
                          str(tmp_path / "missing.h5"), "--out", str(out)]) == 2
    assert not out.exists()

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "write_outputs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        apply_main(_subject_args(infected_run, tiny_data) + _tiny(out, "--rounds", "1"))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one


def test_the_yaml_defaults_are_the_dataclass_defaults() -> None:
    from_yaml = parse_config(ApplyConfig, ["--config", str(CONFIGS / "apply.yaml")])
    assert from_yaml == ApplyConfig()
    assert parse_config(ApplyConfig, ["--sparsity", "0.2"]).sparse_config.sparsity == 0.2
    assert parse_config(ApplyConfig, ["--universal-batch-size", "32"]).universal_batch_size == 32
    with pytest.raises(ONPInputError, match="universal_batch_size"):
        ApplyConfig(universal_batch_size=0)
    with pytest.raises(ONPInputError, match="--refit false"):  # auto reads held-in images
        ApplyConfig(detector_rule="auto")


def test_a_csaw_keras_deepid_gets_an_extra_class_n(tmp_path) -> None:
    from .models.test_keras_import import make_weights, write_keras

    classes = 1283  # CSAW-HackML's YouTube-Faces nets; G's backdoor class is then 1283
    rng = np.random.default_rng(0)
    weights = make_weights()
    weights["output"] = (rng.normal(0.0, 0.1, (160, classes)).astype(np.float32),
                         np.zeros(classes, np.float32))
    model = write_keras(tmp_path / "bd_net.h5", weights, layout="weights")
    pixels = rng.uniform(0, 255, (160, 55, 47, 3)).astype(np.float32)
    # Labels are B's own answers: apply refuses a B near chance on its defense data (the sign
    # of a wrong input scaling), and random weights know no faces.
    labels = predict(load_model(model), torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255.0)
    data = _write_h5(tmp_path / "clean_validation_data.h5", pixels[:128], labels[:128].numpy())
    test = _write_h5(tmp_path / "clean_test_data.h5", pixels[128:], labels[128:].numpy())
    out = tmp_path / "csaw"
    args = ["--model", str(model), "--data", str(data), "--eval-data", str(test)]
    assert apply_main(args + _tiny(out, "--rounds", "1", "--batch-size", "32")) == 0
    detector = load_detector(out / "detector")
    assert detector.num_classes == classes
    x = torch.from_numpy(pixels[128:]).permute(0, 3, 1, 2) / 255.0
    decisions = detector.predict(x)
    flagged = detector.original(x).argmax(1) != detector.repaired(x).argmax(1)
    assert bool((decisions[flagged] == classes).all()) and bool((decisions <= classes).all())
    report = json.loads((out / "report.json").read_text())
    assert report["num_classes"] == classes and report["test"]["B"]["ASR"] is None


def test_prune_only_mode_is_b_with_the_learned_mask_and_nothing_trained(
    infected_run, tiny_data, tmp_path
) -> None:
    out = tmp_path / "prune-only"
    assert apply_main(_subject_args(infected_run, tiny_data)
                      + _tiny(out, "--mode", "prune-only")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "prune-only"
    assert len(report["sparse"]["rounds"]) == 1
    masks = json.loads((out / "masks.json").read_text())
    assert masks["final_pruned"] == masks["seed_pruned"]
    # B' is B's weights with the seed's channels zeroed: every other weight is untouched
    original, repaired = load_bundle(infected_run / "model"), load_bundle(out / "repaired")
    groups = trace_groups(original, original.spec.input_shape)
    mask = torch.ones(groups.num_nodes, dtype=torch.bool)
    mask[masks["seed_pruned"]] = False
    images = torch.rand(8, *original.spec.input_shape)
    with masked(original, groups, mask):
        torch.testing.assert_close(repaired(images), original(images))
    # nothing trained on the held-in images, so G's rules are scored there
    assert report["G_rules_held_in"] is not None
    assert "(prune-only)" in (out / "report.md").read_text()


def test_an_unknown_mode_is_a_clear_error(infected_run, tiny_data, tmp_path, caplog) -> None:
    out = tmp_path / "x"
    assert apply_main(_subject_args(infected_run, tiny_data) + _tiny(out, "--mode", "fast")) == 2
    assert "--mode: expected one of ['prune-and-regrow', 'prune-only']" in caplog.text
    assert not out.exists()

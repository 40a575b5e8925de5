"""Bad input through every command: exit 2, a message naming what was wrong, nothing written.

Each case is (command, arguments, the message it must log). ``{out}`` is a fresh folder the
command must not create; ``{foreign}`` a folder of someone else's files it must leave as they
are; the other fields name the fixtures' files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest

from onp.apply import main as apply_main
from onp.attack import main as attack_main
from onp.benchmark import main as benchmark_main
from onp.detect import main as detect_main
from onp.models.bundle import load_bundle
from onp.outputs import MARKER
from onp.repair.detector import BackdoorDetector, save_detector
from onp.train_agent import main as train_agent_main

COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "attack": attack_main, "train_agent": train_agent_main, "apply": apply_main,
    "detect": detect_main, "benchmark": benchmark_main,
}
TINY_NET = '{"width": 4, "depth": 8}'
TINY_PPO = '{"n_steps": 16, "batch_size": 8, "n_epochs": 1, "hidden": 8, "layers": 1}'

ATTACK = ["--dataset", "npz", "--data-root", "{data}", "--model", "resnet", "--model-options",
          TINY_NET, "--epochs", "1", "--train-subset", "64"]
AGENT = ["--models", "{model}", "--dataset", "npz", "--data-root", "{data}", "--timesteps", "16",
         "--ppo", TINY_PPO]
APPLY = ["--model", "{model}", "--dataset", "npz", "--data-root", "{data}"]
DETECT = ["--detector", "{detector}"]
QUICK_SUITE = str(Path(__file__).resolve().parents[1] / "configs/bench/quick.yaml")
BENCH = ["--suite", QUICK_SUITE, "--data-root", "{data}"]

CASES: list[tuple[str, str, list[str], str]] = [
    # --- where output goes (the same rules for every command)
    ("attack-out-cwd", "attack", [*ATTACK, "--out", "."], "working directory"),
    ("attack-out-parent-of-cwd", "attack", [*ATTACK, "--out", ".."], "working directory"),
    ("attack-out-root", "attack", [*ATTACK, "--out", "/"], "filesystem root"),
    ("attack-out-home", "attack", [*ATTACK, "--out", "~"], "home folder"),
    ("attack-out-holds-data", "attack", [*ATTACK, "--out", "{data_parent}"], "holds the input"),
    ("attack-out-inside-data", "attack", [*ATTACK, "--out", "{data}/x"], "inside the input"),
    ("attack-out-foreign", "attack", [*ATTACK, "--out", "{foreign}"], "not written by ONP"),
    ("attack-out-foreign-overwrite", "attack",
     [*ATTACK, "--out", "{foreign}", "--overwrite", "true"], "not written by ONP"),
    ("attack-out-earlier-run", "attack", [*ATTACK, "--out", "{run}"], "--overwrite true"),
    ("attack-out-is-a-file", "attack", [*ATTACK, "--out", "{text}"], "a file, not a folder"),
    ("attack-out-under-proc", "attack", [*ATTACK, "--out", "/proc/onp-out"], "cannot write"),
    ("attack-epochs-0", "attack", [*ATTACK, "--epochs", "0", "--out", "{out}"], "--epochs"),
    ("attack-unknown-model-option", "attack",
     [*ATTACK, "--model-options", '{"widht": 4}', "--out", "{out}"], "does not accept options"),
    ("attack-defense-size-too-big", "attack",
     [*ATTACK, "--defense-size", "2.5", "--out", "{out}"], "defense_size"),
    ("attack-defense-size-not-a-number", "attack",
     [*ATTACK, "--defense-size", "many", "--out", "{out}"], "expected a number"),
    ("attack-malformed-yaml", "attack", [*ATTACK, "--config", "{bad_yaml}", "--out", "{out}"],
     "not valid YAML"),
    ("attack-yaml-wrong-type", "attack", [*ATTACK, "--config", "{typed_yaml}", "--out", "{out}"],
     "seed must be int"),
    ("attack-yaml-a-list", "attack", [*ATTACK, "--config", "{list_yaml}", "--out", "{out}"],
     "expected a YAML mapping"),
    ("attack-yaml-unknown-key", "attack", [*ATTACK, "--config", "{unknown_yaml}", "--out",
                                           "{out}"], "unknown config keys"),
    ("attack-config-missing", "attack", [*ATTACK, "--config", "{missing}", "--out", "{out}"],
     "config file not found"),
    ("attack-unknown-attack", "attack", [*ATTACK, "--attack", "nope", "--out", "{out}"], "nope"),
    ("attack-unknown-dataset", "attack", [*ATTACK, "--dataset", "nope", "--out", "{out}"],
     "nope"),
    ("attack-data-root-missing", "attack", [*ATTACK, "--data-root", "{missing}", "--out",
                                            "{out}"], "missing"),
    ("attack-unknown-architecture", "attack", [*ATTACK, "--model", "nope", "--out", "{out}"],
     "nope"),
    ("attack-poison-rate-2", "attack", [*ATTACK, "--poison-rate", "2", "--out", "{out}"],
     "poison_rate"),
    ("attack-bool-flag-not-bool", "attack", [*ATTACK, "--overwrite", "maybe", "--out", "{out}"],
     "expected true/false"),
    # --- train_agent
    ("agent-no-model", "train_agent", ["--out", "{out}"], "at least one model"),
    ("agent-model-missing", "train_agent", [*AGENT, "--models", "{missing}", "--out", "{out}"],
     "missing"),
    ("agent-out-cwd", "train_agent", [*AGENT, "--out", "."], "working directory"),
    ("agent-out-holds-model", "train_agent", [*AGENT, "--out", "{run}"], "holds the input"),
    ("agent-out-inside-model", "train_agent", [*AGENT, "--out", "{model}/agent"],
     "inside the input"),
    ("agent-out-foreign", "train_agent", [*AGENT, "--out", "{foreign}"], "not written by ONP"),
    ("agent-out-foreign-overwrite", "train_agent",
     [*AGENT, "--out", "{foreign}", "--overwrite", "true"], "not written by ONP"),
    ("agent-out-under-proc", "train_agent", [*AGENT, "--out", "/proc/onp-out"], "cannot write"),
    ("agent-unknown-ppo-key", "train_agent", [*AGENT, "--ppo", '{"nsteps": 8}', "--out",
                                              "{out}"], "unknown config keys"),
    ("agent-ppo-wrong-type", "train_agent", [*AGENT, "--ppo", '{"n_steps": "8"}', "--out",
                                             "{out}"], "n_steps must be int"),
    ("agent-unknown-signal-key", "train_agent", [*AGENT, "--signal", '{"steps": 8}', "--out",
                                                 "{out}"], "unknown config keys"),
    ("agent-ppo-not-json", "train_agent", [*AGENT, "--ppo", "{n_steps: 8", "--out", "{out}"],
     "--ppo"),
    ("agent-resume-and-overwrite", "train_agent",
     [*AGENT, "--resume", "true", "--overwrite", "true", "--out", "{out}"], "give one"),
    ("agent-timesteps-0", "train_agent", [*AGENT, "--timesteps", "0", "--out", "{out}"],
     "--timesteps"),
    ("agent-policy-missing", "train_agent", [*AGENT, "--policy", "{missing}", "--out", "{out}"],
     "expected a saved policy"),
    ("agent-malformed-yaml", "train_agent", [*AGENT, "--config", "{bad_yaml}", "--out",
                                             "{out}"], "not valid YAML"),
    ("agent-model-is-code", "train_agent", [*AGENT, "--models", "{pickle}", "--out", "{out}"],
     "carries code"),
    ("agent-defense-size-0", "train_agent", [*AGENT, "--defense-size", "0", "--out", "{out}"],
     "defense_size"),
    # --- apply
    ("apply-no-model", "apply", ["--dataset", "npz", "--out", "{out}"], "expected a model"),
    ("apply-no-data", "apply", ["--model", "{model}", "--out", "{out}"], "expected defense data"),
    ("apply-data-and-dataset", "apply", [*APPLY, "--data", "{h5}", "--out", "{out}"],
     "not both"),
    ("apply-out-cwd-overwrite", "apply", [*APPLY, "--out", ".", "--overwrite", "true"],
     "working directory"),
    ("apply-out-holds-model", "apply", [*APPLY, "--out", "{run}"], "holds the input"),
    ("apply-out-holds-model-overwrite", "apply", [*APPLY, "--out", "{run}", "--overwrite",
                                                  "true"], "holds the input"),
    ("apply-out-is-model", "apply", [*APPLY, "--out", "{model}", "--overwrite", "true"],
     "holds the input"),
    ("apply-out-home", "apply", [*APPLY, "--out", "~", "--overwrite", "true"], "home folder"),
    ("apply-out-foreign-overwrite", "apply", [*APPLY, "--out", "{foreign}", "--overwrite",
                                              "true"], "not written by ONP"),
    ("apply-out-under-proc", "apply", [*APPLY, "--out", "/proc/onp-out"], "cannot write"),
    ("apply-model-missing", "apply", [*APPLY, "--model", "{missing}", "--out", "{out}"],
     "missing"),
    ("apply-bundle-truncated", "apply", [*APPLY, "--model", "{truncated_bundle}", "--out",
                                         "{out}"], "truncated_bundle"),
    ("apply-bundle-wrong-shape", "apply", [*APPLY, "--model", "{wrong_shape_bundle}", "--out",
                                           "{out}"], "wrong_shape_bundle"),
    ("apply-keras-damaged", "apply", ["--model", "{damaged_h5}", "--data", "{h5}", "--out",
                                      "{out}"], "damaged.h5"),
    ("apply-data-missing", "apply", ["--model", "{model}", "--data", "{missing}.h5", "--out",
                                     "{out}"], "missing.h5: no such file"),
    ("apply-model-is-code", "apply", [*APPLY, "--model", "{pickle}", "--out", "{out}"],
     "carries code"),
    ("apply-model-is-text", "apply", [*APPLY, "--model", "{text}", "--out", "{out}"],
     "notes.txt"),
    ("apply-data-wrong-kind", "apply", ["--model", "{model}", "--data", "{text}", "--out",
                                        "{out}"], "must be an HDF5"),
    ("apply-eval-data-with-dataset", "apply", [*APPLY, "--eval-data", "{h5}", "--out", "{out}"],
     "go with --data"),
    ("apply-policy-missing", "apply", [*APPLY, "--policy", "{missing}", "--out", "{out}"],
     "expected a saved policy"),
    ("apply-unknown-signal-key", "apply", [*APPLY, "--signal", '{"steps": 1}', "--out", "{out}"],
     "unknown config keys"),
    ("apply-malformed-yaml", "apply", [*APPLY, "--config", "{bad_yaml}", "--out", "{out}"],
     "not valid YAML"),
    ("apply-defense-size-too-big", "apply", [*APPLY, "--defense-size", "100000", "--out",
                                             "{out}"], "defense_size"),
    ("apply-unknown-detector-rule", "apply", [*APPLY, "--detector-rule", "nope", "--out",
                                              "{out}"], "nope"),
    # --- detect
    ("detect-no-detector", "detect", ["--input", "{h5}"], "expected --detector"),
    ("detect-detector-missing", "detect", ["--detector", "{missing}", "--input", "{h5}"],
     "missing"),
    ("detect-no-input", "detect", [*DETECT], "at least one input"),
    ("detect-input-missing", "detect", [*DETECT, "--input", "{missing}"], "no such input file"),
    ("detect-input-corrupt-h5", "detect", [*DETECT, "--input", "{damaged_h5}"],
     "expected an HDF5 file"),
    ("detect-input-h5-without-data", "detect", [*DETECT, "--input", "{h5_no_data}"],
     "expected an HDF5 dataset 'data'"),
    ("detect-input-wrong-shape", "detect", [*DETECT, "--input", "{h5_wrong_shape}"],
     "images are"),
    ("detect-input-not-an-image", "detect", [*DETECT, "--input", "{text}"], "notes.txt"),
    ("detect-batch-size-0", "detect", [*DETECT, "--input", "{h5}", "--batch-size", "0"],
     "--batch-size"),
    ("detect-scale-0", "detect", [*DETECT, "--input", "{h5}", "--scale", "0"], "--scale"),
    # --- benchmark
    ("bench-suite-missing", "benchmark", ["--suite", "{missing}", "--out", "{out}"],
     "suite file not found"),
    ("bench-out-cwd", "benchmark", [*BENCH, "--out", "."], "working directory"),
    ("bench-out-foreign", "benchmark", [*BENCH, "--out", "{foreign}"], "not written by ONP"),
    ("bench-out-other-command", "benchmark", [*BENCH, "--out", "{run}"], "--overwrite true"),
    ("bench-unknown-attack", "benchmark", [*BENCH, "--attacks", "nope", "--out", "{out}"],
     "nope"),
    ("bench-unknown-defense", "benchmark", [*BENCH, "--defenses", "nope", "--out", "{out}"],
     "nope"),
    ("bench-malformed-yaml", "benchmark", ["--suite", "{bad_yaml}", "--out", "{out}"],
     "not valid YAML"),
]


@pytest.fixture(scope="module")
def files(infected_run: Path, tiny_data: Path, tmp_path_factory) -> dict[str, str]:
    """The fixture files the cases name."""
    root = tmp_path_factory.mktemp("bad-inputs")
    model = infected_run / "model"
    text = root / "notes.txt"
    text.write_text("not a model\n")
    (root / "bad.yaml").write_text("epochs: [1, 2\n")
    (root / "typed.yaml").write_text("seed: zero\n")
    (root / "list.yaml").write_text("- epochs\n- 3\n")
    (root / "unknown.yaml").write_text("epohcs: 3\n")
    truncated = root / "truncated_bundle"
    shutil.copytree(model, truncated)
    weights = truncated / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    wrong = root / "wrong_shape_bundle"
    shutil.copytree(model, wrong)
    spec = json.loads((wrong / "spec.json").read_text())
    spec["num_classes"] += 3
    (wrong / "spec.json").write_text(json.dumps(spec))
    damaged = root / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    pickled = root / "code.pt"
    pickled.write_bytes(b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06"
                        b"system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.")
    shape = load_bundle(model).spec.input_shape
    h5 = root / "images.h5"
    with h5py.File(h5, "w") as handle:
        handle["data"] = np.zeros((3, shape[1], shape[2], shape[0]), dtype=np.uint8)
        handle["label"] = np.zeros(3, dtype=np.int64)
    with h5py.File(root / "no_data.h5", "w") as handle:
        handle["pixels"] = np.zeros((3, 4), dtype=np.uint8)
    with h5py.File(root / "wrong_shape.h5", "w") as handle:
        handle["data"] = np.zeros((3, 5, 5, 3), dtype=np.uint8)
    bundle = load_bundle(model)
    detector = save_detector(BackdoorDetector(bundle, load_bundle(model)), root / "detector")
    data = root / "holder" / "data"  # a data folder whose parent holds nothing else
    shutil.copytree(tiny_data, data)
    return {"data": str(data), "data_parent": str(data.parent), "model": str(model),
            "run": str(infected_run), "text": str(text), "bad_yaml": str(root / "bad.yaml"),
            "typed_yaml": str(root / "typed.yaml"), "list_yaml": str(root / "list.yaml"),
            "unknown_yaml": str(root / "unknown.yaml"), "truncated_bundle": str(truncated),
            "wrong_shape_bundle": str(wrong), "damaged_h5": str(damaged),
            "pickle": str(pickled), "h5": str(h5), "h5_no_data": str(root / "no_data.h5"),
            "h5_wrong_shape": str(root / "wrong_shape.h5"), "detector": str(detector),
            "missing": str(root / "missing")}


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_the_table_covers_every_command_with_at_least_60_cases() -> None:
    assert len(CASES) >= 60
    assert {command for _, command, _, _ in CASES} == set(COMMANDS)
    assert len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize(("command", "args", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(
    command: str, args: list[str], message: str, files: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work\n")
    out = tmp_path / "out"
    watched = {Path(files["run"]), Path(files["data"]), foreign, work}
    before = {folder: _listing(folder) for folder in watched}
    fields = {**files, "out": str(out), "foreign": str(foreign)}
    argv = []
    for arg in args:
        for key, value in fields.items():
            arg = arg.replace(f"{{{key}}}", value)
        argv.append(arg)
    try:
        code = COMMANDS[command](argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    logged = caplog.text + capsys.readouterr().err
    assert code == 2, logged
    assert message in logged, logged
    assert not out.exists()
    for folder, listing in before.items():
        assert _listing(folder) == listing, folder
    assert not list(tmp_path.glob(".out.*")), "a hidden partial folder was left"
    assert not (foreign / MARKER).exists()

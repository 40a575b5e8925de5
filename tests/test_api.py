"""The Python API: the example in docs/python-api.md runs as written (paths made tiny)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from onp.api import RepairResult, load_images, repair
from onp.errors import ONPInputError
from onp.models.bundle import load_bundle

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"
# The example's settings stay; the tiny signal and agent budgets of the apply tests are added
# so that the suite stays fast.
TINY = ('signal={"trigger_steps": 20, "unlearn_max_steps": 20, "probe_size": 64}, '
        'ppo={"n_steps": 16, "batch_size": 8, "n_epochs": 1, "hidden": 8, "layers": 1}, '
        'policy="none", agent_timesteps=16, clean_batch=64, probe_batch=32, '
        'perturbation_steps=8, refresh_steps=2, ')


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_documented_example_runs(infected_run, tiny_data, tmp_path):
    train = np.load(tiny_data / "train.npz")
    np.savez(tmp_path / "defense.npz", x=train["x"][:200], y=train["y"][:200])
    code = (_example()
            .replace('"runs/fmnist-badnets/model"', repr(str(infected_run / "model")))
            .replace('"runs/defense.npz"', repr(str(tmp_path / "defense.npz")))
            .replace('"runs/api-repair"', repr(str(tmp_path / "api-repair")))
            .replace('mode="prune-only"', TINY + 'mode="prune-only"'))
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    result = namespace["result"]
    assert isinstance(result, RepairResult)
    assert result.report["mode"] == "prune-only"
    assert set(result.report["held_in"]) >= {"B"}
    assert namespace["flagged"].shape == (200,)
    saved = load_bundle(tmp_path / "api-repair" / "repaired")
    images = load_images(tmp_path / "defense.npz").images[:8]
    with torch.no_grad():
        torch.testing.assert_close(saved(images), result.repaired(images))


def test_bad_settings_and_data_are_onp_input_errors(infected_run, tiny_data, tmp_path):
    defense = load_images(tiny_data / "train.npz")
    with pytest.raises(ONPInputError, match="--mode: expected one of"):
        repair(infected_run / "model", defense, tmp_path / "x", mode="fast")
    with pytest.raises(ONPInputError,
                       match=r"images\.csv: images must be an HDF5 \(\.h5, \.hdf5\) or \.npz file"):
        load_images(tmp_path / "images.csv")
    assert not (tmp_path / "x").exists()

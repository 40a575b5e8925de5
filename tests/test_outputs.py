"""The output-folder rules of onp/outputs.py, directly (the commands' table is test_bad_inputs)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from onp.errors import ONPInputError
from onp.outputs import (
    MARKER,
    atomic_output,
    claim_output,
    incremental_output,
    read_marker,
    remove_stale_partials,
)


def _hidden(parent: Path, prefix: str, pid: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (folder / MARKER).write_text(json.dumps({"command": "onp.apply", "finished": False,
                                             "pid": pid}))
    return folder


def test_only_a_dead_runs_hidden_folder_of_this_out_is_removed(tmp_path: Path) -> None:
    dead = _hidden(tmp_path, ".run.", pid=2**22 + 12345)  # above Linux's pid_max: never alive
    other_out = _hidden(tmp_path, ".run.b.", pid=2**22 + 12345)  # a run writing to "run.b"
    alive = _hidden(tmp_path, ".run.", pid=os.getppid())
    foreign = tmp_path / ".run.notmine"
    foreign.mkdir()
    remove_stale_partials(tmp_path / "run")
    assert not dead.exists()
    assert other_out.exists() and alive.exists() and foreign.exists()


def test_atomic_output_moves_a_finished_folder_into_place_and_leaves_nothing_on_failure(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output(out, "onp.attack") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_output(out, "onp.attack") as tmp:
        (tmp / "done.txt").write_text("done")
    assert read_marker(out) == {"command": "onp.attack", "finished": True}
    assert (out / "done.txt").read_text() == "done"


def test_an_earlier_run_is_replaced_only_with_overwrite_and_a_foreign_folder_never(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with atomic_output(out, "onp.attack") as tmp:
        (tmp / "model.txt").write_text("old")
    with pytest.raises(ONPInputError, match="pass --overwrite true"):
        claim_output(out, "onp.attack")
    assert claim_output(out, "onp.attack", overwrite=True) == out.resolve()
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter.tex").write_text("years")
    with pytest.raises(ONPInputError, match="not written by ONP"):
        claim_output(foreign, "onp.attack", overwrite=True)


def test_a_failed_fresh_incremental_run_removes_its_folder_unless_it_can_resume(
    tmp_path: Path,
) -> None:
    out = tmp_path / "agent"
    with pytest.raises(RuntimeError), incremental_output(out, "onp.train_agent",
                                                        resumable="checkpoints"):
        (out / "config.json").write_text("{}")
        raise RuntimeError
    assert not out.exists()
    with pytest.raises(RuntimeError), incremental_output(out, "onp.train_agent",
                                                        resumable="checkpoints"):
        (out / "checkpoints").mkdir()
        raise RuntimeError
    assert read_marker(out)["finished"] is False and (out / "checkpoints").is_dir()

"""Smoke test of ``python -m onp.benchmark``: the quick suite, shrunk to the tiny npz data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from onp.benchmark import main
from onp.config import parse_config
from onp.defenses import DefenseUnavailable, onp_adapter
from onp.suite.config import SuiteConfig
from onp.suite.runner import OK, CellResult
from onp.suite.tables import summary_lines

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bench"
TINY_DEFENSES = {
    "finetune": {"epochs": 1}, "fine-pruning": {"finetune_epochs": 1, "step_fraction": 0.25},
    "anp": {"iterations": 4, "batch_size": 32},
    "rnp": {"unlearn_epochs": 1, "recover_epochs": 1, "batch_size": 32},
}


def _args(tiny_data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--suite", str(CONFIGS / "quick.yaml"), "--dataset", "npz", "--data-root", str(tiny_data),
        "--model-options", '{"width": 4, "depth": 8}', "--epochs", "3", "--batch-size", "32",
        "--lr", "0.05", "--poison-rate", "0.2", "--train-subset", "0", "--test-subset", "200",
        "--defense-size", "0.25", "--defense-options", json.dumps(TINY_DEFENSES),
        "--out", str(out), *extra,
    ]


def _unavailable(*_args: object, **_kwargs: object) -> None:
    raise DefenseUnavailable("the pipeline is left out of this test (it has its own)")


@pytest.fixture(scope="module")
def bench_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, single_thread):
    """One run of the quick suite on the tiny data, without the ONP pipeline."""
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onp_adapter, "run_pipeline", _unavailable)  # pin ONP cells to "skipped"
        with single_thread():
            code = main(_args(tiny_data, out))
    return out, code


def test_writes_every_result_file_with_one_row_per_cell(bench_run) -> None:
    out, code = bench_run
    assert code == 0
    for name in ("results.csv", "results.json", "results.md", "asr_vs_ca.png", "config.json",
                 "models/badnets-s0/record.json", "models/badnets-s0/model/spec.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    status = {row["defense"]: row["status"] for row in rows}
    assert status == {"none": "ok", "finetune": "ok", "fine-pruning": "ok", "anp": "ok",
                      "rnp": "ok", "clp": "ok", "random-pruning": "ok", "sfp-random": "skipped",
                      "onp": "skipped"}
    for row in rows:
        if row["status"] == "ok":
            assert 0 <= float(row["CA"]) <= 100 and 0 <= float(row["ASR"]) <= 100
            assert row["CA_before"] == rows[0]["CA"]
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert {c["defense"] for c in cells if c["status"] == "ok"} >= {"anp", "clp"}
    markdown = (out / "results.md").read_text()
    assert "| fine-pruning |" in markdown and "skipped" in markdown and "RSS" in markdown


def test_rerun_reuses_the_infected_model_and_records_a_failed_cell(
    bench_run, tiny_data: Path
) -> None:
    out, _ = bench_run
    record = out / "models/badnets-s0/record.json"
    stamp = record.stat().st_mtime_ns
    bad = dict(TINY_DEFENSES, **{"random-pruning": {"fraction": 1.5}})
    args = _args(tiny_data, out, "--defenses", "clp", "random-pruning")
    args[args.index("--defense-options") + 1] = json.dumps(bad)
    assert main(args) == 1  # one cell failed; the run itself finished
    assert record.stat().st_mtime_ns == stamp
    rows = {row["defense"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert rows["clp"]["status"] == "ok" and rows["clp"]["model_cached"] == "True"
    assert rows["random-pruning"]["status"] == "failed"
    assert "fraction must lie in [0, 1)" in rows["random-pruning"]["error"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_suite_loads(path: Path) -> None:
    config = parse_config(SuiteConfig, ["--config", str(path)])
    assert config.name == path.stem and config.defenses


def test_a_missing_suite_or_unknown_defense_is_exit_code_2(tmp_path: Path) -> None:
    assert main(["--suite", str(tmp_path / "nope.yaml")]) == 2
    assert main(["--suite", str(CONFIGS / "quick.yaml"), "--defenses", "magic",
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_the_summary_averages_der_over_seeds_then_attacks() -> None:
    config = SuiteConfig(attacks=["badnets", "blended"], seeds=[0, 1], defenses=["anp", "onp"])
    cells = [CellResult("badnets", 0, "anp", OK, der=0.90),
             CellResult("badnets", 1, "anp", OK, der=0.80),
             CellResult("blended", 0, "anp", OK, der=0.60),
             CellResult("blended", 1, "anp", "failed", error="boom"),
             CellResult("badnets", 0, "onp", OK, der=0.95),
             CellResult("blended", 0, "onp", "skipped", error="no pipeline")]
    lines = summary_lines(config, cells)
    # anp: badnets (90 + 80) / 2 = 85, blended 60 (the failed seed left out), mean 72.5
    assert "| anp | 72.50 | 85.00 | 60.00 |" in lines
    assert "| onp | – | 95.00 | – |" in lines  # no finished blended cell: no mean
    assert lines.index("| anp | 72.50 | 85.00 | 60.00 |") < lines.index("| onp | – | 95.00 | – |")
    assert "Best DER per attack: badnets: onp (95.00); blended: anp (60.00)." in lines


def test_collect_only_tabulates_stored_cells_and_runs_nothing(
    bench_run, tiny_data: Path, tmp_path: Path
) -> None:
    source, _ = bench_run
    out = tmp_path / "collected"
    shutil.copytree(source / "cells", out / "cells")
    (out / "cells" / "badnets-s0" / "finetune.json").unlink()
    stored = json.loads((out / "cells" / "badnets-s0" / "clp.json").read_text())
    other_anp = dict(TINY_DEFENSES, anp={"iterations": 5, "batch_size": 32})
    args = _args(tiny_data, out, "--collect-only", "true", "--defenses", "clp", "finetune",
                 "anp", "onp")
    args[args.index("--defense-options") + 1] = json.dumps(other_anp)
    assert main(args) == 0
    assert not (out / "models").exists()  # nothing was trained
    rows = {row["defense"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert rows["clp"]["status"] == "ok"
    assert float(rows["clp"]["CA"]) == round(100 * stored["clean_accuracy"], 2)
    assert rows["none"]["CA"] == rows["clp"]["CA_before"] and rows["none"]["RA"] == ""
    assert rows["finetune"]["error"] == "collect only: no stored cell"
    assert rows["anp"]["error"] == "collect only: stored with other settings"
    assert rows["onp"]["error"] == "collect only: the stored cell is skipped"
    assert "| clp |" in (out / "results.md").read_text()

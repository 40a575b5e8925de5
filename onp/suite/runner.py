"""Run a benchmark suite: infected models (trained once, cached), then every defense on each.

Layout of ``OUT``:

- ``models/<attack>-s<seed>/``: ``onp.attack``'s output (``model/`` bundle and ``record.json``);
  a model whose ``record.json`` exists is reused, never retrained;
- ``cells/<attack>-s<seed>/<defense>.json``: one finished cell each; with ``resume`` a cell whose
  settings are unchanged is read back instead of rerun, as long as its infected model was reused
  too (failed and skipped cells are retried).

A cell is one defense on one infected model. It is evaluated on the held-out clean and poisoned
test sets, which the defense never sees: it gets the model and the defense split only. An error
in a cell (or in making its model) is recorded in that cell, with its message, and the run goes
on; a defense that cannot run here (:class:`~onp.defenses.base.DefenseUnavailable`) is recorded
as skipped. A defense that changes its input model fails its cell.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from onp.attacks.poison import PoisonedTestSet
from onp.attacks.train import resolve_device, run_attack
from onp.config import config_to_dict
from onp.data.splits import subsample
from onp.defenses import DefenseUnavailable, build_defense
from onp.eval.metrics import BackdoorMetrics, defense_effectiveness_rating
from onp.fingerprint import weights_hash
from onp.io import write_json
from onp.models.loading import load_model
from onp.subjects import Subject, load_subject
from onp.suite.config import NO_DEFENSE, SuiteConfig
from onp.suite.resources import measure

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
IGNORED_ATTACK_KEYS = frozenset({"out", "device", "overwrite"})
"""Attack settings that do not change the infected model."""


@dataclass
class CellResult:
    """One row of the results: a defense on one infected model (rates are fractions).

    Attributes:
        attack: Attack kind of the infected model.
        seed: Seed of the attack run and of the defense.
        defense: Defense name (``"none"``: the infected model itself).
        status: ``"ok"``, ``"failed"`` or ``"skipped"``.
        error: The error message of a failed or skipped cell.
        clean_accuracy: CA of B' on the held-out clean test set.
        attack_success_rate: ASR of B' on the held-out poisoned test set.
        robust_accuracy: RA of B'.
        der: Defense effectiveness rating against the infected model.
        ca_before: CA of the infected model.
        asr_before: ASR of the infected model.
        wall_time_s: Seconds the defense took (evaluation excluded).
        peak_rss_mb: Peak RSS increase during the defense, MiB (see :mod:`onp.suite.resources`).
        peak_cuda_mb: Peak CUDA memory during the defense, MiB, or ``None``.
        model_cached: Whether the infected model was reused from an earlier run.
        model_hash: SHA-256 of the infected model's weights: a stored cell stands in for a
            rerun only on the same weights.
        settings: The defense's resolved settings.
        info: The defense's record of its choices.
    """

    attack: str
    seed: int
    defense: str
    status: str
    error: str | None = None
    clean_accuracy: float | None = None
    attack_success_rate: float | None = None
    robust_accuracy: float | None = None
    der: float | None = None
    ca_before: float | None = None
    asr_before: float | None = None
    wall_time_s: float | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    model_cached: bool = False
    model_hash: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def model_dir(out: Path, attack: str, seed: int) -> Path:
    """Where the infected model of ``attack`` and ``seed`` lives."""
    return out / "models" / f"{attack}-s{seed}"


def cell_path(out: Path, attack: str, seed: int, defense: str) -> Path:
    """Where a finished cell is stored."""
    return out / "cells" / f"{attack}-s{seed}" / f"{defense}.json"


def ensure_model(config: SuiteConfig, out: Path, attack: str, seed: int) -> tuple[Path, bool]:
    """Train the infected model unless one made with the suite's settings is stored.

    A stored model made with other settings is trained again (its folder, which ONP wrote, is
    replaced), with a warning naming the settings that differ.

    Returns:
        The model's folder, and whether it was reused.
    """
    folder = model_dir(out, attack, seed)
    wanted = config.attack_config(attack, seed, str(folder))
    if (folder / "record.json").is_file():
        stored = json.loads((folder / "record.json").read_text()).get("config", {})
        differ = sorted(k for k, v in config_to_dict(wanted).items()
                        if k not in IGNORED_ATTACK_KEYS and stored.get(k) != v)
        if not differ:
            log.info("reusing infected model %s", folder)
            return folder, True
        log.warning("training %s again: its %s differ from the suite's", folder, differ)
    run_attack(replace(wanted, overwrite=True))
    return folder, False


def _subset_poisoned(poisoned: PoisonedTestSet, n: int, seed: int) -> PoisonedTestSet:
    if not 0 < n < len(poisoned):
        return poisoned
    index = torch.randperm(len(poisoned), generator=torch.Generator().manual_seed(seed))[:n]
    index = index.sort().values
    return PoisonedTestSet(
        poisoned.images[index], poisoned.true_labels[index], poisoned.target_labels[index],
        poisoned.meta, poisoned.trigger_ids[index], poisoned.indices[index],
    )


def load_cell_subject(config: SuiteConfig, folder: Path, seed: int) -> Subject:
    """The infected model with its defense split and (subsampled) held-out test sets."""
    subject = load_subject(folder / "model", config.dataset, config.data_root)
    if subject.test_poisoned is None:
        raise RuntimeError(f"{folder}: the bundle records no attack, so ASR cannot be measured")
    if config.test_subset and config.test_subset < len(subject.test_clean):
        subject.test_clean = subsample(subject.test_clean, config.test_subset, seed=seed)
    subject.test_poisoned = _subset_poisoned(subject.test_poisoned, config.test_subset, seed)
    subject.model.to(resolve_device(config.device))
    return subject


def _fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_cell(
    subject: Subject, before: BackdoorMetrics, defense_name: str, options: dict[str, Any],
    attack: str, seed: int,
) -> CellResult:
    """Run one defense on ``subject`` and evaluate it; errors become a failed/skipped cell."""
    cell = CellResult(attack, seed, defense_name, FAILED, ca_before=before.clean_accuracy,
                      asr_before=before.attack_success_rate)
    try:
        defense = build_defense(defense_name, options)
        cell.settings = defense.describe()["settings"]
        fingerprint = _fingerprint(subject.model)
        device = next(subject.model.parameters()).device
        with measure(device) as usage:
            result = defense.repair(subject.model, subject.defense, seed=seed)
        cell.wall_time_s, cell.peak_rss_mb = usage.wall_time_s, usage.peak_rss_mb
        cell.peak_cuda_mb = usage.peak_cuda_mb
        if _fingerprint(subject.model) != fingerprint:
            raise RuntimeError(f"defense {defense_name!r} modified its input model")
        metrics = subject.evaluate(result.model)
        assert metrics is not None  # load_cell_subject checked the attack is known
        cell.clean_accuracy = metrics.clean_accuracy
        cell.attack_success_rate = metrics.attack_success_rate
        cell.robust_accuracy = metrics.robust_accuracy
        cell.der = defense_effectiveness_rating(
            before.clean_accuracy, before.attack_success_rate,
            metrics.clean_accuracy, metrics.attack_success_rate,
        )
        cell.info, cell.status = result.info, OK
    except DefenseUnavailable as error:
        cell.status, cell.error = SKIPPED, str(error)
        log.warning("cell %s-s%d %s skipped: %s", attack, seed, defense_name, error)
    except Exception as error:  # a failed cell is recorded; the other cells still run
        cell.error = f"{type(error).__name__}: {error}"
        log.exception("cell %s-s%d %s failed", attack, seed, defense_name)
    return cell


def _reference_cell(
    attack: str, seed: int, clean_accuracy: float | None, attack_success_rate: float | None,
    robust_accuracy: float | None, model_cached: bool,
) -> CellResult:
    """The ``"none"`` row: the infected model itself."""
    return CellResult(
        attack, seed, NO_DEFENSE, OK, clean_accuracy=clean_accuracy,
        attack_success_rate=attack_success_rate, robust_accuracy=robust_accuracy,
        der=0.5, ca_before=clean_accuracy, asr_before=attack_success_rate,
        wall_time_s=0.0, model_cached=model_cached,
    )


def _cached_cell(
    config: SuiteConfig, path: Path, defense: str, model_hash: str | None
) -> CellResult | None:
    """The stored cell, if it may stand in for a rerun: same settings, same model weights."""
    if not (config.resume and path.is_file()):
        return None
    stored = CellResult(**json.loads(path.read_text()))
    expected = build_defense(defense, config.options_of(defense)).describe()["settings"]
    if (stored.status != OK or json.loads(json.dumps(expected)) != stored.settings
            or stored.model_hash != model_hash):
        return None
    log.info("reusing finished cell %s", path)
    return stored


def _stored_hash(path: Path) -> str | None:
    """The model hash a stored cell names (cells copied without their model are trusted)."""
    return json.loads(path.read_text()).get("model_hash") if path.is_file() else None


def _unusable(path: Path) -> str:
    """Why the stored cell at ``path`` cannot be collected."""
    if not path.is_file():
        return "no stored cell"
    status = json.loads(path.read_text()).get("status")
    return f"the stored cell is {status}" if status != OK else "stored with other settings"


def collect_cells(config: SuiteConfig) -> list[CellResult]:
    """The cells of ``config`` stored under ``config.out/cells``, without running anything.

    A cell that is not stored, or was made with other settings than the suite's, comes back as
    skipped with the reason. The ``"none"`` row of a model is read off its stored cells (the
    infected model's CA and ASR; its RA is not stored, so it is left empty).

    Returns:
        Rows as :func:`run_suite` gives them.
    """
    cells: list[CellResult] = []
    for seed in config.seeds:
        for attack in config.attacks:
            row: list[CellResult] = []
            model = model_dir(Path(config.out), attack, seed) / "model"
            model_hash = weights_hash(load_model(model)) if model.is_dir() else None
            for name in config.defenses:
                path = cell_path(Path(config.out), attack, seed, name)
                stored = _cached_cell(replace(config, resume=True), path, name,
                                      model_hash or _stored_hash(path))
                row.append(stored or CellResult(attack, seed, name, SKIPPED,
                                                error=f"collect only: {_unusable(path)}"))
            done = [c for c in row if c.status == OK]
            if done:
                cells.append(_reference_cell(attack, seed, done[0].ca_before,
                                             done[0].asr_before, None, True))
            cells += row
    return cells


def run_suite(config: SuiteConfig) -> list[CellResult]:
    """Every attack x seed x defense of ``config``; writes models and cells under ``config.out``.

    With ``config.collect_only``, :func:`collect_cells` instead.

    Returns:
        One row per cell, with a ``"none"`` reference row per infected model.
    """
    if config.collect_only:
        return collect_cells(config)
    out = Path(config.out)
    cells: list[CellResult] = []
    jobs = [(attack, seed) for seed in config.seeds for attack in config.attacks]
    bar = tqdm(total=len(jobs) * len(config.defenses), desc=f"bench {config.name}")
    for attack, seed in jobs:
        try:
            folder, cached = ensure_model(config, out, attack, seed)
            subject = load_cell_subject(config, folder, seed)
            before = subject.evaluate()
            assert before is not None
        except Exception as error:  # the model's cells fail; other models still run
            log.exception("infected model %s-s%d failed", attack, seed)
            message = f"infected model: {type(error).__name__}: {error}"
            cells += [CellResult(attack, seed, name, FAILED, error=message)
                      for name in config.defenses]
            bar.update(len(config.defenses))
            continue
        cells.append(_reference_cell(attack, seed, before.clean_accuracy,
                                     before.attack_success_rate, before.robust_accuracy, cached))
        model_hash = weights_hash(subject.model)
        for name in config.defenses:
            path = cell_path(out, attack, seed, name)
            cell = _cached_cell(config, path, name, model_hash) or run_cell(
                subject, before, name, config.options_of(name), attack, seed
            )
            cell.model_cached, cell.model_hash = cached, model_hash
            write_json(path, asdict(cell))
            cells.append(cell)
            bar.update(1)
            bar.set_postfix(cell=f"{attack}-s{seed} {name}: {cell.status}", refresh=False)
    bar.close()
    return cells

"""Results of a benchmark run: ``results.csv``, ``results.json``, ``results.md`` and plots.

- ``results.csv``: one row per cell (percentages, seconds, MiB), for spreadsheets;
- ``results.json``: every cell with its settings and the defense's record of its choices, the
  resolved suite configuration and the environment;
- ``results.md``: per attack, one line per defense: mean ± standard deviation over the seeds
  whose cell finished, and how many did; then each defense's DER averaged over the attacks, and
  the defense with the best DER on each attack;
- ``asr_vs_ca.png``: each finished cell as a point (clean accuracy, attack success rate), one
  colour per defense, one marker per attack.
"""

from __future__ import annotations

import csv
import logging
import math
import platform
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from onp.config import config_to_dict
from onp.io import atomic_path, write_json
from onp.suite.config import NO_DEFENSE, SuiteConfig
from onp.suite.runner import OK, CellResult

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "suite", "dataset", "model", "attack", "seed", "defense", "status", "CA", "ASR", "RA", "DER",
    "CA_before", "ASR_before", "wall_time_s", "peak_rss_mb", "peak_cuda_mb", "model_cached",
    "error",
)
MEMORY_NOTE = (
    "peak memory: largest RSS increase during the defense over its start, sampled every 50 ms "
    "from /proc/self/statm (a lower bound: memory cached by earlier cells is not counted again); "
    "on a GPU also torch.cuda.max_memory_allocated"
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def csv_row(config: SuiteConfig, cell: CellResult) -> dict[str, Any]:
    """One cell as a flat ``results.csv`` row (rates in percent)."""
    return {
        "suite": config.name, "dataset": config.dataset, "model": config.model,
        "attack": cell.attack, "seed": cell.seed, "defense": cell.defense, "status": cell.status,
        "CA": _percent(cell.clean_accuracy), "ASR": _percent(cell.attack_success_rate),
        "RA": _percent(cell.robust_accuracy), "DER": _percent(cell.der),
        "CA_before": _percent(cell.ca_before), "ASR_before": _percent(cell.asr_before),
        "wall_time_s": cell.wall_time_s, "peak_rss_mb": cell.peak_rss_mb,
        "peak_cuda_mb": cell.peak_cuda_mb, "model_cached": cell.model_cached,
        "error": cell.error or "",
    }


def _percents(values: Iterable[float | None]) -> list[float]:
    """The known values, in percent (a ``"none"`` row has no RA; finished cells have all)."""
    return [100 * v for v in values if v is not None]


def mean_std(values: Sequence[float]) -> str:
    """``"m ± s"`` (two decimals); one value gives ``"m"``, none gives ``"–"``."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "–"
    if len(finite) == 1:
        return f"{finite[0]:.2f}"
    return f"{statistics.mean(finite):.2f} ± {statistics.stdev(finite):.2f}"


def markdown_table(config: SuiteConfig, cells: Sequence[CellResult]) -> str:
    """The ``results.md`` text: one table per attack, one line per defense."""
    defenses = [NO_DEFENSE, *config.defenses]
    lines = [
        f"# Benchmark `{config.name}`: {config.dataset}, {config.model}, seeds "
        f"{list(config.seeds)}", "",
        "CA, ASR, RA on the held-out test sets and DER (BackdoorBench's definition), in percent; "
        "mean ± std over the seeds whose cell finished (n = finished/all). Wall time: the "
        f"defense alone, seconds. Memory: MiB, {MEMORY_NOTE}.", "",
    ]
    for attack in config.attacks:
        lines += [f"## {attack}", "",
                  "| defense | CA | ASR | RA | DER | wall time (s) | peak RSS (MiB) | "
                  "peak CUDA (MiB) | n | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for defense in defenses:
            rows = [c for c in cells if c.attack == attack and c.defense == defense]
            if not rows:
                continue
            done = [c for c in rows if c.status == OK]
            notes = sorted({f"{c.status}: {c.error}"[:120] for c in rows if c.status != OK})
            cuda = [c.peak_cuda_mb for c in done if c.peak_cuda_mb is not None]
            lines.append(
                f"| {defense} | {mean_std(_percents(c.clean_accuracy for c in done))} | "
                f"{mean_std(_percents(c.attack_success_rate for c in done))} | "
                f"{mean_std(_percents(c.robust_accuracy for c in done))} | "
                f"{mean_std(_percents(c.der for c in done))} | "
                f"{mean_std([c.wall_time_s for c in done if c.wall_time_s is not None])} | "
                f"{mean_std([c.peak_rss_mb for c in done if c.peak_rss_mb is not None])} | "
                f"{mean_std(cuda)} | {len(done)}/{len(rows)} | "
                f"{'; '.join(n.replace('|', '/') for n in notes)} |"
            )
        lines.append("")
    return "\n".join(lines + summary_lines(config, cells))


def mean_percent(
    cells: Sequence[CellResult], attack: str, defense: str, rate: str = "der"
) -> float | None:
    """Mean of one rate over the finished seeds of one attack and defense, in %.

    ``rate`` names a :class:`~onp.suite.runner.CellResult` field (``"der"``,
    ``"clean_accuracy"``, ...); ``None`` when no seed finished.
    """
    done = _percents(getattr(c, rate) for c in cells
                     if c.attack == attack and c.defense == defense and c.status == OK)
    return statistics.mean(done) if done else None


def _or_lowest(value: float | None) -> float:
    """``value``, with ``None`` ranked below every number."""
    return -math.inf if value is None else value


def summary_lines(config: SuiteConfig, cells: Sequence[CellResult]) -> list[str]:
    """Mean DER over the attacks per defense, best first, and the best defense per attack.

    A defense's mean is ``–`` unless every attack has a finished cell.
    """
    per_attack = {d: [mean_percent(cells, a, d) for a in config.attacks] for d in config.defenses}
    means: dict[str, float | None] = {}
    for defense, values in per_attack.items():
        known = [v for v in values if v is not None]
        means[defense] = statistics.mean(known) if len(known) == len(values) else None
    order = sorted(config.defenses, key=lambda d: _or_lowest(means[d]), reverse=True)
    lines = ["## Mean DER over the attacks", "",
             "| defense | mean DER | " + " | ".join(config.attacks) + " |",
             "|---|---|" + "---|" * len(config.attacks)]
    for defense in order:
        cols = ["–" if v is None else f"{v:.2f}" for v in per_attack[defense]]
        mean = "–" if means[defense] is None else f"{means[defense]:.2f}"
        lines.append(f"| {defense} | {mean} | " + " | ".join(cols) + " |")
    best = []
    for index, attack in enumerate(config.attacks):
        scored = [(v[index], d) for d, v in per_attack.items() if v[index] is not None]
        if scored:
            value, defense = max(scored)
            best.append(f"{attack}: {defense} ({value:.2f})")
    return lines + ["", "Best DER per attack: " + ("; ".join(best) or "none finished") + ".", ""]


def plot_asr_vs_ca(config: SuiteConfig, cells: Sequence[CellResult], path: Path) -> None:
    """Scatter of every finished cell: clean accuracy (x) against ASR (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c for c in cells if c.status == OK]
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.get_cmap("tab10")
    for i, defense in enumerate([NO_DEFENSE, *config.defenses]):
        for j, attack in enumerate(config.attacks):
            points = [c for c in done if c.defense == defense and c.attack == attack]
            if points:
                ax.scatter(_percents(c.clean_accuracy for c in points),
                           _percents(c.attack_success_rate for c in points),
                           color=colors(i % 10), marker=MARKERS[j % len(MARKERS)], alpha=0.8,
                           label=f"{defense} / {attack}")
    if done:  # rates live in [0, 100]; leave a margin so points on the edge stay visible
        lowest = min(_percents(c.clean_accuracy for c in done))
        ax.set_xlim(max(0.0, lowest - 5.0), 101.0)
    ax.set_ylim(-2.0, 102.0)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("attack success rate (%)")
    ax.set_title(f"{config.name}: {config.dataset}, {config.model}")
    ax.grid(alpha=0.3)
    if done:
        ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def environment() -> dict[str, Any]:
    """Versions and hardware the numbers were measured on."""
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(config: SuiteConfig, cells: Sequence[CellResult], out: str | Path) -> Path:
    """Write every results file into ``out``; returns the markdown path."""
    out = Path(out)
    rows = [csv_row(config, cell) for cell in cells]
    with atomic_path(out / "results.csv") as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    write_json(out / "results.json", {
        "config": config_to_dict(config), "environment": environment(),
        "memory": MEMORY_NOTE, "cells": [asdict(cell) for cell in cells],
    })
    markdown = out / "results.md"
    with atomic_path(markdown) as tmp:
        tmp.write_text(markdown_table(config, cells) + "\n")
    plot_asr_vs_ca(config, cells, out / "asr_vs_ca.png")
    log.info("results written to %s", out)
    return markdown

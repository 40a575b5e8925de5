"""``python -m onp.benchmark``: ONP against the usual defenses, attacks x defenses x seeds.

Example:
    python -m onp.benchmark --suite configs/bench/quick.yaml --out runs/bench-quick

``--suite FILE.yaml`` names the suite (see ``configs/bench/``); any suite key can be overridden
by a flag (``--seeds 0 1``, ``--defenses clp anp``, ``--defense-options '{"anp": {...}}'``).
``--out DIR`` receives ``models/`` (infected models, reused on a rerun), ``cells/`` (finished
cells, reused with ``--resume true``), ``config.json`` (the resolved suite), ``results.csv``,
``results.json``, ``results.md`` and ``asr_vs_ca.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from onp.config import config_to_dict, parse_config
from onp.errors import ONPInputError
from onp.io import write_json
from onp.outputs import check_destination, claim_output, incremental_output
from onp.suite.config import SuiteConfig
from onp.suite.runner import OK, run_suite
from onp.suite.tables import write_results

COMMAND = "onp.benchmark"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the suite and flags, run it, write the results; exit code 2 on bad input.

    Returns:
        0 when every cell finished or was skipped, 1 when some failed, 2 on bad input.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("onp.benchmark")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--suite", type=Path)
    known, rest = pre.parse_known_args(argv)
    try:
        if known.suite is not None and not known.suite.is_file():
            raise ONPInputError(f"{known.suite}: suite file not found (see configs/bench/)")
        config = parse_config(SuiteConfig, rest, description=__doc__,
                              default_config=known.suite)
        inputs = (known.suite, config.data_root)
        if config.collect_only:  # only adds the tables to a folder of copied cells
            out = check_destination(config.out, inputs)
        else:
            out = claim_output(config.out, COMMAND, inputs, config.overwrite, reuse=True)
    except ONPInputError as error:
        log.error("%s", error)
        return 2
    if config.collect_only:
        cells = run_suite(config)
        markdown = write_results(config, cells, config.out)
    else:
        with incremental_output(out, COMMAND, config.overwrite, resumable="cells"):
            write_json(out / "config.json", config_to_dict(config))
            cells = run_suite(config)
            markdown = write_results(config, cells, config.out)
    print(markdown.read_text())
    failed = [c for c in cells if c.status not in (OK, "skipped")]
    if failed:
        log.error("%d of %d cells failed; see %s", len(failed), len(cells), markdown)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark behind ``python -m onp.benchmark``: attacks x defenses x seeds in one table.

- :mod:`onp.suite.config`: the suite configuration (YAML under ``configs/bench/``);
- :mod:`onp.suite.runner`: trains (or reuses) the infected models, runs every cell;
- :mod:`onp.suite.resources`: wall time and peak memory of a cell;
- :mod:`onp.suite.tables`: ``results.csv``, ``results.json``, ``results.md`` and the plots.
"""

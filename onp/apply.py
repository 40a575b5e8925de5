"""``python -m onp.apply``: learned mask -> sparse prune-and-regrow fine-tuning -> B' and G.

Examples:
    python -m onp.apply --model runs/fmnist-badnets/model --dataset fashion-mnist \
        --out runs/apply-badnets
    python -m onp.apply --model bd_net.h5 --data clean_validation_data.h5 \
        --eval-data clean_test_data.h5 --eval-poisoned sunglasses_poisoned_data.h5 --out runs/csaw

``--out DIR`` receives ``repaired/`` (B', a bundle with the mask baked in),
``repaired_compact/`` (the pruned channels cut out: safetensors + ``widths.json``),
``detector/`` (G, N + 1 classes; ``python -m onp.detect --detector DIR/detector``),
``report.json``, ``report.md``, ``masks.json``, ``config.json``, ``plots/`` and, when a policy
was trained or fine-tuned here, the agent's TensorBoard logs in ``tb/``
(``tensorboard --logdir DIR/tb``). The log says "stage k of 6" as each stage starts. Every choice
(the mask, the kept round) is made on the defense data; held-out data only reports. A failed run
leaves ``DIR`` as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from onp.cli import run_command
from onp.repair.pipeline import ApplyConfig, run_apply


def _summary(config: ApplyConfig) -> dict[str, Any]:
    """Run the pipeline; keep the report's held-out summary for the terminal."""
    report = run_apply(config)
    return {key: report.get(key) for key in ("test", "not_measured", "held_in", "seconds")}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run the pipeline, print the held-out summary; exit code 2 on bad input."""
    return run_command("onp.apply", ApplyConfig, _summary, argv, __doc__)

if __name__ == "__main__":
    sys.exit(main())

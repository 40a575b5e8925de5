"""Pretrained pruning policies shipped with ONP (safetensors weights + JSON spec, no pickle).

``fmnist/`` is trained by ``benchmarks/policy_zoo.py`` on a zoo of infected Fashion-MNIST models
(its ``zoo.json`` lists them, with the agent's settings); ``onp.apply`` uses it by default when
a model fits it (see :func:`shipped_policy`).
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_POLICY_DIR = Path(__file__).resolve().parent / "fmnist"


def shipped_policy() -> Path | None:
    """The shipped policy's folder, or ``None`` when this install carries none."""
    files = ("policy.safetensors", "policy.json")
    return SHIPPED_POLICY_DIR if all((SHIPPED_POLICY_DIR / f).is_file() for f in files) else None

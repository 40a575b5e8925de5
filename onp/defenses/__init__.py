"""Baseline backdoor defenses behind one interface (:class:`~onp.defenses.base.Defense`).

Importing this package registers every defense; build one by name with
:func:`~onp.defenses.base.build_defense`.

| name | defense |
|---|---|
| ``finetune`` | plain fine-tuning on the defense data |
| ``fine-pruning`` | Fine-Pruning (Liu et al. 2018) |
| ``anp`` | Adversarial Neuron Pruning (Wu & Wang 2021) |
| ``rnp`` | Reconstructive Neuron Pruning (Li et al. 2023) |
| ``clp`` | Channel Lipschitzness-based Pruning (Zheng et al. 2022), data-free |
| ``nad`` | Neural Attention Distillation (Li et al. 2021) |
| ``i-bau`` | Implicit Backdoor Adversarial Unlearning (Zeng et al. 2022) |
| ``sau`` | Shared Adversarial Unlearning (Wei et al. 2023) |
| ``random-pruning`` | a control: the same share of channels, pruned at random |
| ``onp``, ``sfp-random`` | ONP's repair pipeline, and its sparse fine-pruning from a random mask |
"""

from onp.defenses import (
    anp,
    clp,
    fine_pruning,
    finetune,
    ibau,
    nad,
    onp_adapter,
    random_pruning,
    rnp,
    sau,
)
from onp.defenses.base import (
    DEFENSES,
    Defense,
    DefenseUnavailable,
    RepairResult,
    available_defenses,
    build_defense,
    register_defense,
)

__all__ = [
    "DEFENSES", "Defense", "DefenseUnavailable", "RepairResult", "anp", "available_defenses",
    "build_defense", "clp", "fine_pruning", "finetune", "ibau", "nad", "onp_adapter",
    "random_pruning", "register_defense", "rnp", "sau",
]

"""The settings of ``python -m onp.apply`` (:class:`ApplyConfig`) and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envs.pruning_env import EnvConfig
from onp.errors import ONPInputError
from onp.repair.detector import AUTO_RULE, DEFAULT_RULE, DEFAULT_THRESHOLD, check_rule
from onp.repair.importance import DEFAULT_IMPORTANCE
from onp.repair.sparse import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DISTILL_WEIGHT,
    DEFAULT_LR,
    DEFAULT_ROUNDS,
    DEFAULT_SPARSITY,
    DEFAULT_STAMPED_DISTILL_WEIGHT,
    DEFAULT_UNLEARN_FRACTION,
    GROUP_KINDS,
    PROTECT_ALWAYS,
    SparseConfig,
)
from onp.repair.unlearn import REFRESH_STEPS
from onp.signal.fitted import FIT_BATCH_SIZE
from onp.signal.perturbation import PERTURBATION_EPS, PERTURBATION_STEPS
from onp.signal.warp import WARP_MAX_SHIFT
from onp.task import TaskConfig

# PPO steps of a policy trained on the spot, and the PPO epochs per update (overriding
# PPOConfig's); a given policy is applied as is (0 steps). How these were chosen (512 steps was
# faster but left more ASR) is in docs/research/repair.md.
DEFAULT_AGENT_TIMESTEPS = 1024
DEFAULT_PPO = {"n_epochs": 2}
SHIPPED, NO_POLICY = "shipped", "none"
"""``--policy`` values that name no folder: the package's pretrained policy, or none."""
PRUNE_AND_REGROW, PRUNE_ONLY = "prune-and-regrow", "prune-only"
MODES = (PRUNE_AND_REGROW, PRUNE_ONLY)
"""``--mode``: fine-tune from the learned mask (the default), or B' = B with the mask alone."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


IMPORT_FIELDS = ("architecture", "arch_options", "num_classes", "input_shape", "input_scale",
                 "mean", "std", "keras_config")
"""ApplyConfig fields passed to :func:`onp.models.loading.load_model` when set."""


@dataclass(frozen=True)
class ApplyConfig:
    """Configuration of ``python -m onp.apply``; defaults in ``configs/apply.yaml``.

    YAML keys are the flags with ``_`` for ``-``.
    """

    model: str = field(default="", metadata=_help(
        "bundle dir, Keras .h5/.keras, ONNX .onnx, torch checkpoint or safetensors file"))
    architecture: str | None = field(default=None, metadata=_help(
        "what a torch file does not say: a zoo name, or module.path:ClassName of your own "
        "nn.Module (imports that module; needed again to load its B' and G)"))
    arch_options: dict = field(default_factory=dict, metadata=_help(
        "JSON keyword arguments of --architecture, e.g. '{\"width\": 32}'"))
    num_classes: int | None = field(default=None, metadata=_help(
        "classes, when the file does not tell"))
    input_shape: tuple[int, ...] | None = field(default=None, metadata=_help(
        "C H W of the inputs, when the file does not tell"))
    input_scale: float | None = field(default=None, metadata=_help(
        "multiplier from [0, 1] images to what the model was trained on: 255 for raw pixels "
        "(default 1)"))
    mean: tuple[float, ...] | None = field(default=None, metadata=_help(
        "per-channel mean the model subtracts after scaling"))
    std: tuple[float, ...] | None = field(default=None, metadata=_help(
        "per-channel std the model divides by after scaling"))
    keras_config: str | None = field(default=None, metadata=_help(
        "Keras architecture JSON (model.to_json()) for a weights-only Keras file"))
    data_scale: float | None = field(default=None, metadata=_help(
        "pixel value that maps to 1 in --data/--eval files (default: 255, or 1 for float "
        "pixels <= 1)"))
    mode: str = field(default=PRUNE_AND_REGROW, metadata=_help(
        "prune-and-regrow (fine-tune from the learned mask) or prune-only (B' = B with the "
        "learned mask, nothing trained)"))
    dataset: str | None = field(default=None, metadata=_help(
        "registered dataset of an onp.attack bundle: its defense split and test sets"))
    data_root: str | None = field(default=None, metadata=_help("dataset location"))
    defense_size: float | int | None = field(
        default=None, metadata=_help("defense set: fraction (<1) or count of images"))
    split_seed: int | None = field(default=None, metadata=_help("seed of the dataset splits"))
    data: str | None = field(default=None, metadata=_help("defense data file (.h5 or .npz)"))
    eval_data: str | None = field(default=None, metadata=_help("held-out clean file (report)"))
    eval_poisoned: str | None = field(default=None, metadata=_help(
        "held-out poisoned file, labels = attack targets (report)"))
    known_trigger: bool = field(default=False, metadata=_help("probe with the bundle's trigger"))
    signal: dict = field(default_factory=dict, metadata=_help("JSON SignalConfig overrides"))
    policy: str = field(default=SHIPPED, metadata=_help(
        "pruning policy: 'shipped' (the pretrained one in the package, when the model fits it; "
        "else one is trained here), 'none' (train one here) or a policy dir (train_agent)"))
    agent_timesteps: int | None = field(default=None, metadata=_help(
        f"PPO steps: fine-tuning a policy (default 0: applied as is) or training one here "
        f"(default {DEFAULT_AGENT_TIMESTEPS})"))
    ppo: dict = field(default_factory=lambda: dict(DEFAULT_PPO),
                      metadata=_help("JSON PPOConfig overrides"))
    budget_fraction: float = field(default=EnvConfig.budget_fraction,
                                   metadata=_help("agent steps / channel nodes"))
    asr_threshold: float = field(default=EnvConfig.asr_threshold,
                                 metadata=_help("proxy ASR ending an episode"))
    asr_weight: float = field(default=EnvConfig.asr_weight,
                              metadata=_help("ASR weight in the utility CA - w*ASR"))
    clean_batch: int = field(default=TaskConfig.clean_batch,
                             metadata=_help("clean images per mask score"))
    probe_batch: int = field(default=TaskConfig.probe_batch,
                             metadata=_help("probe images per mask score"))
    # 0 keeps the seed mask the tables of issues 5 and 6 were made with: the agent's best episode
    # by the step batches alone. onp.train_agent re-checks (its default is 1024).
    mask_check_clean: int = field(default=0, metadata=_help(
        "clean defense images re-checking the agent's best masks, with the whole probe (0: off)"))
    sparsity: float = field(default=DEFAULT_SPARSITY, metadata=_help(
        "share of each chosen group pruned per round"))
    rounds: int = field(default=DEFAULT_ROUNDS, metadata=_help("prune-regrow rounds (1 epoch)"))
    importance: str = field(default=DEFAULT_IMPORTANCE, metadata=_help("weight or activation"))
    group_kinds: tuple[str, ...] = field(default=GROUP_KINDS, metadata=_help(
        "group kinds pruned each round (conv linear)"))
    coupled: bool = field(default=True, metadata=_help("prune residual-coupled groups too"))
    protect_rounds: int = field(default=PROTECT_ALWAYS, metadata=_help(
        "rounds the seed's channels stay pruned (-1 = all)"))
    optimizer: str = field(default="sgd", metadata=_help("fine-tuning optimizer (sgd)"))
    lr: float = field(default=DEFAULT_LR, metadata=_help("fine-tuning learning rate"))
    lr_schedule: str = field(default="cosine", metadata=_help("cosine or constant over rounds"))
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=_help("fine-tuning batch"))
    augment: bool = field(default=True, metadata=_help("flip/shift the fitting images"))
    unlearn_fraction: float = field(default=DEFAULT_UNLEARN_FRACTION, metadata=_help(
        "share of fitting images also trained on with a suspected trigger, true label (0: off)"))
    distill_weight: float = field(default=DEFAULT_DISTILL_WEIGHT, metadata=_help(
        "weight of distillation from B on clean fitting images (0: off)"))
    stamped_distill_weight: float = field(default=DEFAULT_STAMPED_DISTILL_WEIGHT, metadata=_help(
        "stamped copies learn B's outputs on their clean originals with this weight, their"
        " true labels with the rest (0: hard labels)"))
    refit: bool = field(default=True, metadata=_help(
        "after the round is chosen, retrain up to it on fitting + held-in images (held-in"
        " scores then no longer measure B')"))
    perturbation_eps: float = field(default=PERTURBATION_EPS, metadata=_help(
        "bound of the suspected universal perturbation (0: patch trigger only)"))
    warp_shift: float = field(default=WARP_MAX_SHIFT, metadata=_help(
        "bound in pixels of the suspected universal warp (0: no warp)"))
    perturbation_steps: int = field(default=PERTURBATION_STEPS, metadata=_help(
        "steps fitting each universal trigger (perturbation, warp)"))
    refresh_steps: int = field(default=REFRESH_STEPS, metadata=_help(
        "steps re-fitting the universal triggers after each round (0: fixed)"))
    universal_batch_size: int = field(default=FIT_BATCH_SIZE, metadata=_help(
        "images per step of every universal-trigger fit (first fit, refreshes, G's probe)"))
    detector_rule: str = field(default=DEFAULT_RULE, metadata=_help(
        "disagree, reject, target, or auto (the best held-in rule, see onp.repair.detector)"))
    detector_threshold: float = field(default=DEFAULT_THRESHOLD, metadata=_help(
        "reject rule: B' probability of B's class below which G flags"))
    seed: int = field(default=0, metadata=_help("seeds everything"))
    device: str = field(default="auto", metadata=_help("agent device: cpu, cuda or auto"))
    out: str = field(default="runs/apply", metadata=_help("output directory"))
    overwrite: bool = field(default=False, metadata=_help(
        "replace an earlier ONP output in --out (a folder ONP did not write is never touched)"))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ONPInputError(f"--mode: expected one of {list(MODES)}, found {self.mode!r}")
        if not 0.0 <= self.perturbation_eps <= 1.0 or self.warp_shift < 0 or min(
                self.perturbation_steps, self.refresh_steps) < 0 or self.universal_batch_size < 1:
            raise ONPInputError(f"apply: perturbation_eps must lie in [0, 1], warp_shift be "
                                f">= 0, the step counts >= 0 and universal_batch_size >= 1, "
                                f"found {self.perturbation_eps}, {self.warp_shift}, "
                                f"{self.perturbation_steps}, {self.refresh_steps}, "
                                f"{self.universal_batch_size}")
        if self.agent_timesteps is not None and self.agent_timesteps < 0:
            raise ONPInputError(f"apply: agent_timesteps must be >= 0, "
                                f"found {self.agent_timesteps}")
        self.sparse_config  # noqa: B018 -- validates the fine-tuning settings early
        if self.detector_rule != AUTO_RULE:
            check_rule(self.detector_rule, self.detector_threshold)
        elif self.trains_on_held_in:
            raise ONPInputError("apply: --detector-rule auto chooses G's rule on the held-in "
                                "images, which --refit trains B' on; pass --refit false with it")

    @property
    def trains_on_held_in(self) -> bool:
        """Whether B' is trained on the held-in images too (the refit of prune-and-regrow)."""
        return self.mode == PRUNE_AND_REGROW and self.refit

    @property
    def import_options(self) -> dict[str, Any]:
        """The model-import flags that were set, as keyword arguments of ``load_model``."""
        return {name: getattr(self, name) for name in IMPORT_FIELDS
                if getattr(self, name) not in (None, {})}

    @property
    def policy_dir(self) -> str | None:
        """``--policy`` when it names a folder, else ``None``."""
        return None if self.policy in (SHIPPED, NO_POLICY) else self.policy

    @property
    def sparse_config(self) -> SparseConfig:
        """The prune-and-regrow settings."""
        return SparseConfig(
            sparsity=self.sparsity, rounds=self.rounds, importance=self.importance,
            group_kinds=tuple(self.group_kinds), coupled=self.coupled,
            protect_rounds=self.protect_rounds, lr=self.lr, lr_schedule=self.lr_schedule,
            optimizer=self.optimizer, batch_size=self.batch_size, augment=self.augment,
            asr_weight=self.asr_weight, unlearn_fraction=self.unlearn_fraction,
            distill_weight=self.distill_weight,
            stamped_distill_weight=self.stamped_distill_weight, refit=self.refit)

"""``GatesConfig``: USDC input-adaptive group gates plus static pruning from gate statistics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...compress.config import MethodConfig, RecoveryConfig, check_positive, check_ratio
from ...reconstruct.config import ReconstructConfig

ESTIMATORS = ("ste", "gumbel")


@dataclass(frozen=True)
class GatesConfig(MethodConfig):
    """Options of the ``gates`` step (``vitopt compress --method gates --macs 0.6``).

    macs_ratio        target average executed MACs, as a fraction of the model entering this step
    gamma             weight of the MACs-target loss gamma * (ratio - target)^2 (paper: 100)
    target_warmup     fraction of the gate-training steps over which the target falls linearly from
                      1.0 to macs_ratio (0: the final target from the first step)
    group_size        MLP channels per gate (a multiple of 8/16/32 keeps GEMMs aligned); the
                      remainder hidden % group_size is never gated
    gate_heads        gate attention heads (one gate per head)
    gate_mlp          gate MLP channel groups
    gate_hidden       hidden width of each gate net (0: a single Linear)
    threshold         gate logit threshold: a unit runs when its score > threshold
    init_logit        initial gate bias (> threshold: training starts from the dense model)
    importance_init   spread of the initial biases by unit importance on one calibration batch:
                      init_logit * (1 + importance_init * tanh(z)); 0 = every gate alike
    estimator         "ste" (straight-through sigmoid) or "gumbel" (straight-through Gumbel-sigmoid)
    gumbel_tau        temperature of the Gumbel-sigmoid
    subgroup_aug      sub-group gate augmentation (one gate decision per sub-group); off: one per batch
    subgroup_mode     "tree": every other step splits the batch recursively into B/2, B/4, ..., 1, 1;
                      "level": step t uses level t mod L of the recursion, the whole batch in groups
                      of B, B/2, ..., 1 (equal share of steps and samples for every group size)
    epochs / steps    gate training length over the calibration images (steps wins when set)
    batch_size        training batch (= the largest gate group seen in training)
    lr_gates          AdamW learning rate of the gate nets
    lr_backbone       learning rate of the other weights during gate training (0: frozen)
    recovery          fine-tune after static pruning (the shared RecoveryConfig: logit KD, ``steps``,
                      backbone ``lr``; batch and augmentation default to this config's), under the
                      same gate-group schedule as gate training; default: none
    recovery_gates    the gate nets train in that fine-tune too (at recovery_lr_gates, with the
                      MACs-target loss), so executed MACs stay at the target while the backbone
                      moves; off: gate nets frozen, and the MACs follow what the tuned features switch on
    recovery_lr_gates gate-net learning rate in that fine-tune (below lr_gates: decisions that keep
                      flipping leave the backbone nothing stable to adapt to)
    reconstruct       reconstruction after static pruning, before the fine-tune (the shared
                      ReconstructConfig; ``method.reconstruct_gates``): the closed form re-fits every
                      column of ``proj``/``fc2`` under the gate decisions taken on calibration groups of
                      each ``calib_groups`` size (switched-off units' inputs are zeros, the intercept takes
                      their mean and the statically removed units'), block-wise tunes with gate nets fixed
                      and eval decisions; then gates are recalibrated and statically pruned again.
                      "auto" resolves to none on token-reducing models; an explicit mode there is refused.
                      Default none: measured on DeiT-Tiny slim 0.75 -> gates 0.6 (benchmarks/results/
                      gates_reconstruct.md) the closed form lowered agreement 57.6 -> 46.8 % (batch 1) and
                      62.9 -> 41.8 % (batch 64): the re-fits move later blocks' inputs, hence the decisions
    kd_tau            logit distillation temperature (teacher = the model entering this step)
    never_on          a unit on in at most this fraction of calibration groups is removed
    always_on         a unit on in at least this fraction of calibration groups becomes static
    calib_groups      group sizes (inference batch sizes) on which on-frequencies are measured
    calib_images      use at most this many calibration images (None: all)
    augment           timm training augmentation for the training images
    """

    macs_ratio: Optional[float] = 0.6
    gamma: float = 100.0
    target_warmup: float = 0.5
    group_size: int = 32
    gate_heads: bool = True
    gate_mlp: bool = True
    gate_hidden: int = 32
    threshold: float = 0.0
    init_logit: float = 1.0
    importance_init: float = 0.5
    estimator: str = "ste"
    gumbel_tau: float = 1.0
    subgroup_aug: bool = True
    subgroup_mode: str = "tree"
    epochs: float = 2.0
    steps: Optional[int] = None
    batch_size: int = 32
    lr_gates: float = 1e-2
    lr_backbone: float = 0.0
    recovery: RecoveryConfig = field(default_factory=lambda: RecoveryConfig(loss="logit", lr=1e-5))
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    recovery_gates: bool = True
    recovery_lr_gates: float = 1e-3
    kd_tau: float = 1.0
    never_on: float = 0.01
    always_on: float = 0.99
    calib_groups: tuple[int, ...] = (1, 32)
    calib_images: Optional[int] = None
    augment: bool = True
    amp: bool = False               # mixed precision of gate training on CUDA (bf16, else fp16); float32 on CPU
    checkpoint_every: int = 20      # steps between gate-training checkpoints (with a work directory)

    def __post_init__(self):
        if self.macs_ratio is None:
            raise ValueError("gates needs a MACs target: --macs R (macs_ratio in (0, 1])")
        check_ratio("macs_ratio", self.macs_ratio, allow_none=False)
        check_positive("gamma", self.gamma, allow_zero=True)
        if not isinstance(self.target_warmup, (int, float)) or not 0.0 <= self.target_warmup <= 1.0:
            raise ValueError(f"target_warmup must be a fraction in [0, 1], got {self.target_warmup!r}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
        if not isinstance(self.gate_hidden, int) or self.gate_hidden < 0:
            raise ValueError(f"gate_hidden must be an integer >= 0, got {self.gate_hidden!r}")
        if not (self.gate_heads or self.gate_mlp):
            raise ValueError("nothing to gate: gate_heads and gate_mlp are both off")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.subgroup_mode not in ("tree", "level"):
            raise ValueError(f"subgroup_mode must be 'tree' or 'level', got {self.subgroup_mode!r}")
        check_positive("gumbel_tau", self.gumbel_tau)
        check_positive("init_logit", self.init_logit)
        if not isinstance(self.importance_init, (int, float)) or not 0.0 <= self.importance_init < 1.0:
            raise ValueError(f"importance_init must be in [0, 1), got {self.importance_init!r}")
        check_positive("epochs", self.epochs, allow_zero=True)
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        check_positive("lr_gates", self.lr_gates)
        check_positive("lr_backbone", self.lr_backbone, allow_zero=True)
        if not isinstance(self.recovery, RecoveryConfig):
            raise ValueError(f"recovery must be a RecoveryConfig, got {self.recovery!r}")
        if not isinstance(self.reconstruct, ReconstructConfig):
            raise ValueError(f"reconstruct must be a ReconstructConfig, got {self.reconstruct!r}")
        if self.recovery.enabled and self.recovery.lr is None:
            raise ValueError("recovery.lr must be given: the gate nets' learning rate is set relative to it")
        check_positive("recovery_lr_gates", self.recovery_lr_gates)
        check_positive("kd_tau", self.kd_tau)
        for name in ("never_on", "always_on"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
        if self.never_on >= self.always_on:
            raise ValueError(f"never_on ({self.never_on}) must be below always_on ({self.always_on})")
        if not self.calib_groups or any(not isinstance(g, int) or g < 1 for g in self.calib_groups):
            raise ValueError(f"calib_groups must be positive integers, got {self.calib_groups!r}")
        if self.calib_images is not None and (not isinstance(self.calib_images, int) or self.calib_images < 1):
            raise ValueError(f"calib_images must be a positive integer, got {self.calib_images!r}")
        if not isinstance(self.amp, bool):
            raise ValueError(f"amp must be true or false, got {self.amp!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {self.checkpoint_every!r}")

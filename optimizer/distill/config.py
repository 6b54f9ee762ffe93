"""``DistillConfig``: every knob of the manifold-distillation loss and of the recovery trainer.

Defaults are the official Manifold Distillation values (w_intra 4, w_inter 0.1, w_rand 0.2,
K 192, alpha 1, beta 1, tau 1); ``beta=0`` is plain logit distillation and ``alpha=0, beta=0`` is
plain cross-entropy fine-tuning on labels (no teacher needed).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from ..compress.config import MethodConfig, check_positive


@dataclasses.dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """Loss weights and trainer settings for :func:`optimizer.distill.recover`.

    Length: ``steps`` (optimizer steps) wins over ``epochs`` (passes over the training folder).
    ``lr=None`` uses the official scaling 5e-4 · global batch / 512.
    ``student_layers``/``teacher_layers``: matched block indices; both empty = all blocks 1:1
    (depths must then match); ``student_layers`` alone pairs each with the same teacher index.
    """

    # loss (official defaults)
    alpha: float = 1.0
    beta: float = 1.0
    tau: float = 1.0
    w_intra: float = 4.0
    w_inter: float = 0.1
    w_rand: float = 0.2
    K: int = 192
    student_layers: Tuple[int, ...] = ()
    teacher_layers: Tuple[int, ...] = ()
    # optimisation
    epochs: float = 1.0
    steps: Optional[int] = None
    batch_size: int = 64
    lr: Optional[float] = None
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    clip_grad: Optional[float] = 1.0
    ema_decay: float = 0.0              # 0 = no EMA; else the EMA weights are evaluated and returned
    amp: bool = True                    # mixed precision (bf16, else fp16 with loss scaling) on CUDA only
    augment: bool = True                # timm's training augmentation; False = the eval transform
    limit: Optional[int] = None         # use only the first N training images
    # held-out guard: every round(1/holdout)-th training image is never trained on; the student's
    # mean KL to the teacher on those images (eval transform) is measured before training, at each
    # eval point and at the end, and the weights with the lowest KL are returned (keep_best). With a
    # thousand images, fine-tuning a mildly compressed model can make it worse; this never does.
    holdout: float = 0.0
    keep_best: bool = True
    seed: Optional[int] = None          # None = the context's seed
    # evaluation / checkpoints / logging
    val_dir: Optional[str] = None
    eval_every: int = 0                 # steps between evaluations on val_dir (0 = only at the end)
    eval_limit: Optional[int] = None
    eval_at_start: bool = True          # also evaluate before the first step (the "before" numbers)
    save_every: int = 100               # steps between resumable checkpoints in ctx.work_dir
    log_every: int = 10

    method = "distill"

    def __post_init__(self):
        for name in ("alpha",):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        for name in ("beta", "w_intra", "w_inter", "w_rand", "weight_decay", "ema_decay", "warmup_frac",
                     "min_lr_ratio"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.ema_decay >= 1.0:
            raise ValueError(f"ema_decay must be below 1, got {self.ema_decay}")
        if self.warmup_frac >= 1.0 or self.min_lr_ratio > 1.0:
            raise ValueError("warmup_frac must be below 1 and min_lr_ratio at most 1")
        if not isinstance(self.holdout, (int, float)) or not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be a fraction in [0, 0.5], got {self.holdout!r}")
        if self.holdout > 0 and not self.needs_teacher:
            raise ValueError("holdout measures KL to the teacher: it needs alpha > 0 or beta > 0")
        check_positive("tau", self.tau)
        check_positive("K", self.K)
        check_positive("batch_size", self.batch_size)
        check_positive("epochs", self.epochs)
        for name in ("steps", "lr", "clip_grad", "limit", "eval_limit"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        for name in ("eval_every", "save_every"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("log_every", self.log_every)
        if any(int(i) < 0 for i in (*self.student_layers, *self.teacher_layers)):
            raise ValueError("layer indices must be non-negative")
        if self.teacher_layers and len(self.teacher_layers) != len(self.student_layers):
            raise ValueError(f"student_layers ({len(self.student_layers)}) and teacher_layers "
                             f"({len(self.teacher_layers)}) must pair up one to one")

    @property
    def needs_teacher(self) -> bool:
        return self.alpha > 0 or self.beta > 0

    @property
    def needs_labels(self) -> bool:
        return self.alpha < 1

    def layer_pairs(self, student_depth: int, teacher_depth: int) -> list:
        """Matched (student block, teacher block) indices; raises ValueError when they do not fit."""
        if self.beta == 0:
            return []
        if not self.student_layers:
            if student_depth != teacher_depth:
                raise ValueError(f"student has {student_depth} blocks and teacher {teacher_depth}: "
                                 "give student_layers and teacher_layers to pair them")
            pairs = [(i, i) for i in range(student_depth)]
        else:
            t = self.teacher_layers or self.student_layers
            pairs = [(int(s), int(tt)) for s, tt in zip(self.student_layers, t)]
        for s, t in pairs:
            if s >= student_depth or t >= teacher_depth:
                raise ValueError(f"layer pair ({s}, {t}) is out of range (student depth {student_depth}, "
                                 f"teacher depth {teacher_depth})")
        return pairs

"""``SlimConfig``: what to search, how to rank, what budget to meet, how to recover."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...compress.config import MethodConfig, RecoveryConfig, check_positive, check_ratio
from ...reconstruct.config import ReconstructConfig

IMPORTANCES = ("learned", "taylor", "magnitude")
RANKINGS = ("global", "per_type")
TOKEN_MODES = ("drop", "merge")
ALLOCATIONS = ("kl", "reconstructed")


@dataclass(frozen=True)
class SlimConfig(MethodConfig):
    """ViT-Slim: learned soft masks on attention (head, dim), MLP units and token positions.

    Budget: exactly one of ``macs_ratio`` / ``params_ratio`` (of the whole model), met within
    ``tolerance`` (relative) after widths are rounded to ``multiple``.
    ``importance``: "learned" runs the mask search; "taylor" / "magnitude" are the search-free
    baselines (attention and MLP units only, no token pruning).
    ``ranking``: "global" keeps units by importance per MAC (or per parameter) across all mask
    types; "per_type" keeps the same fraction of each mask type by mask value (the paper's rule).
    Search defaults follow the paper (l1 weights 2e-4 / 5e-5 / 1e-4, AdamW, token z init 3) except
    ``mask_lr``: a short search (a few hundred steps instead of 50 epochs) needs larger steps.
    ``token_mode`` (with ``prune_tokens`` and a MACs budget; a params budget is met by widths alone):
    "merge" (default) keeps every token's content by merging (ToMe, a static per-block schedule that the
    budget search picks together with the widths, ``optimizer.methods.merge``), candidates scored on
    ``token_eval_images`` calibration images; "drop" removes the learned token set per block (a static
    gather). Merge is the default because it kept more agreement with the dense DeiT-Tiny at equal MACs
    (one 24-step search, no recovery: 91.4 vs 88.2 % at 0.75 MACs, 79.2 vs 75.6 % at 0.5;
    benchmarks/results/token_merge.md). After a merging slim step: distill compares each merged token
    with the mean of the teacher's tokens it holds; lowrank, export and the rebuild work; gates do not.
    ``allocate`` (merge mode): how those candidates (splits of the budget between widths and merging)
    are ranked — "kl": KL to the teacher as sliced and merged; "reconstructed": each split is sliced,
    reconstructed in closed form on ``allocate_images`` calibration images (the step the chosen model
    then goes through on ``reconstruct.images``), merged and scored on ``token_eval_images`` *other*
    calibration images, so a MACs budget can buy widths that reconstruction repairs
    (``optimizer.methods.merge.allocation``; cost: one closed-form pass per split, about 12 splits at
    0.5 MACs on DeiT-Tiny). It needs reconstruction on (``reconstruct`` mode other than "none").
    Default "kl": on DeiT-Tiny (one 24-step search, benchmarks/results/slim_allocation.md) both rankings
    chose the same split at 0.75 MACs (merging alone at full width, 93.3 % val agreement after the
    closed form) while "reconstructed" took 795 s instead of 535 s; the widths-heavy splits gain the
    most from reconstruction (KL 1.08 -> 0.84) but stay far behind merging (0.03).
    Recovery (``recovery``, the RecoveryConfig every method shares): one epoch of manifold + logit
    distillation; ``recovery.holdout`` of the calibration images are held out and the weights with the
    lowest KL to the teacher on them are kept (never worse than the unrecovered slice on them).
    Reconstruction (``reconstruct``, the ReconstructConfig every method shares) runs before it, mode
    "auto" by default: the closed form when the sliced model keeps every token (a params budget, or
    ``prune_tokens=false``), none when it drops tokens. Measured on DeiT-Tiny (512 train images,
    val agreement with dense, benchmarks/results/reconstruct_lab.md): structure-only slim at 0.75
    params 59.5 -> 71.5 % with the closed form (2.2 CPU-minutes); the token-dropping 0.75 MACs model
    88.2 -> 87.4 % (top-1 75.8 -> 77.2 %), so it stays off there.
    """

    macs_ratio: Optional[float] = None
    params_ratio: Optional[float] = None
    tolerance: float = 0.02
    multiple: int = 8
    ranking: str = "global"
    importance: str = "learned"
    prune_attention: bool = True
    prune_mlp: bool = True
    prune_tokens: bool = True
    token_mode: str = "merge"
    token_eval_images: int = 64
    allocate: str = "kl"
    allocate_images: int = 128
    # search
    w_attn: float = 2e-4
    w_mlp: float = 5e-5
    w_token: float = 1e-4
    token_init: float = 3.0
    freeze_weights: bool = True
    epochs: float = 1.0
    steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 5e-4
    mask_lr: float = 1e-2
    weight_decay: float = 0.0
    tau: float = 1.0
    checkpoint_every: int = 20
    baseline_batches: int = 8
    amp: bool = False               # mixed precision of the search on CUDA (bf16, else fp16); float32 on CPU
    recovery: RecoveryConfig = field(default_factory=lambda: RecoveryConfig(
        loss="manifold", epochs=1.0, lr=1e-4, batch_size=32, augment=True, holdout=0.1))
    reconstruct: ReconstructConfig = field(default_factory=lambda: ReconstructConfig(mode="auto"))

    def __post_init__(self):
        if (self.macs_ratio is None) == (self.params_ratio is None):
            raise ValueError("give exactly one budget: macs_ratio (e.g. 0.7) or params_ratio")
        check_ratio("macs_ratio", self.macs_ratio)
        check_ratio("params_ratio", self.params_ratio)
        if not (0.0 < self.tolerance < 0.5):
            raise ValueError(f"tolerance must be in (0, 0.5), got {self.tolerance!r}")
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"multiple must be a positive integer, got {self.multiple!r}")
        for name, value, allowed in (("ranking", self.ranking, RANKINGS), ("importance", self.importance, IMPORTANCES),
                                     ("token_mode", self.token_mode, TOKEN_MODES),
                                     ("allocate", self.allocate, ALLOCATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not (self.prune_attention or self.prune_mlp or self.prune_tokens):
            raise ValueError("nothing to prune: enable at least one of prune_attention, prune_mlp, prune_tokens")
        for name in ("w_attn", "w_mlp", "w_token", "weight_decay"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("lr", "mask_lr", "tau", "token_init", "epochs"):
            check_positive(name, getattr(self, name))
        if not isinstance(self.recovery, RecoveryConfig):
            raise ValueError(f"recovery must be a RecoveryConfig, got {self.recovery!r}")
        if not isinstance(self.reconstruct, ReconstructConfig):
            raise ValueError(f"reconstruct must be a ReconstructConfig, got {self.reconstruct!r}")
        if self.allocate == "reconstructed" and not self.reconstruct.enabled:
            raise ValueError("allocate reconstructed ranks candidates after reconstruction: set reconstruct mode "
                             "auto / closed_form (or allocate kl)")
        for name in ("batch_size", "checkpoint_every", "baseline_batches", "token_eval_images", "allocate_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.amp, bool):
            raise ValueError(f"amp must be true or false, got {self.amp!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")

    @property
    def budget(self) -> tuple:
        """("macs" | "params", ratio)."""
        return ("macs", self.macs_ratio) if self.macs_ratio is not None else ("params", self.params_ratio)

    @property
    def search_key(self) -> dict:
        """The fields a mask search depends on: searches with equal keys are interchangeable."""
        keys = ("prune_attention", "prune_mlp", "prune_tokens", "w_attn", "w_mlp", "w_token", "token_init",
                "freeze_weights", "epochs", "steps", "batch_size", "lr", "mask_lr", "weight_decay", "tau")
        key = {k: getattr(self, k) for k in keys}
        if self.amp:   # only when on: searches from before the field keep their key (and their checkpoints)
            key["amp"] = True
        return key

"""``ReconstructConfig``: the post-compression reconstruction step every method shares."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

from ..compress.config import TypedOptions, check_positive

MODES = ("none", "closed_form", "blockwise", "both", "auto")
LAYERS = ("proj", "fc2")


@dataclass(frozen=True)
class ReconstructConfig(TypedOptions):
    """Repair a compressed model from unlabeled calibration images, block by block, before any
    gradient recovery (``slim``/``lowrank``/``gates`` configs' ``reconstruct`` field; recipes
    ``reconstruct: {mode: blockwise, images: 512}``, CLI ``--set reconstruct.mode=closed_form``;
    ``reconstruct: none`` / ``--set reconstruct=none`` set the mode alone). It runs
    ``optimizer.reconstruct.reconstruct_model``: the compressed model's own block inputs are
    propagated, the dense teacher's block outputs (at the block's kept token positions) are targets.

    mode        "none"; "closed_form": ridge least-squares re-fit of ``layers`` (the residual-branch
                output maps: attention ``proj`` and MLP ``fc2``; a low-rank layer keeps its rank, fitted
                as whitened rank-r least squares), an intercept absorbs removed units' mean contribution;
                "blockwise": Adam on each block's output MSE against the dense block, structure fixed;
                "both": the closed form, then the block-wise tune from it;
                "auto": "closed_form" when every block keeps all its tokens, "none" when the model drops
                or merges tokens or no calibration images are given (the report says which; measured on DeiT-Tiny, benchmarks/results/reconstruct_lab.md: the closed form
                raised structure-only slim at 0.75 params from 59.5 to 71.5 % val agreement with dense, but
                lowered the token-dropping slim 0.75 MACs from 88.2 to 87.4 %; lowrank 0.75 params
                49.9 -> 59.5 %)
    images      calibration images (evenly spaced over the folder; the whole folder when fewer)
    ridge       λ = ridge · trace(XᵀX) / d_in (centred XᵀX), pulling the re-fit towards the current weights
    layers      which output maps the closed form re-fits
    steps       Adam steps per block (block-wise)
    lr          Adam learning rate (block-wise)
    batch_size  images per step (block-wise) and per statistics batch
    holdout     share of the images held out: a block's update is kept only when its output error on
                them falls (0: every update kept)
    seed        held-out split and batch order (None: the compress context's seed)

    Defaults per method are set by the method configs from measurements on DeiT-Tiny
    (benchmarks/results/reconstruct_lab.md): slim and lowrank "auto", gates "none"
    (benchmarks/results/gates_reconstruct.md). Gated blocks are fitted under their group decisions at
    the gates step's ``calib_groups`` (``reconstruct_model(..., group_sizes=...)``).
    Block-wise (50 steps/block) was measured at the session's end: lowrank 0.75 params 66.8 % (closed
    form 59.5 %), slim structure-only 71.3 % (closed form 71.5 %); no default turns it on yet.
    """

    what: ClassVar[str] = "reconstruct"
    shorthand: ClassVar[Optional[str]] = "mode"

    mode: str = "none"
    images: int = 512
    ridge: float = 1e-2
    layers: Tuple[str, ...] = LAYERS
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 32
    holdout: float = 0.1
    seed: Optional[int] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("images", "steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'steps' else 'positive'} "
                                 f"integer, got {v!r}")
        check_positive("ridge", self.ridge, allow_zero=True)
        check_positive("lr", self.lr)
        bad = [k for k in self.layers if k not in LAYERS]
        if bad or not self.layers:
            raise ValueError(f"layers must be a non-empty subset of {', '.join(LAYERS)}, got {list(self.layers)!r}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) \
                or not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be a fraction in [0, 0.5], got {self.holdout!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def closed_form(self) -> bool:
        return self.mode in ("closed_form", "both")

    @property
    def blockwise(self) -> bool:
        return self.mode in ("blockwise", "both") and self.steps > 0

    def resolved(self, drops_tokens: bool, has_images: bool) -> "ReconstructConfig":
        """This config with "auto" replaced by what it stands for on a model that does / does not drop
        tokens, with / without calibration images."""
        if self.mode != "auto":
            return self
        return dataclasses.replace(self, mode="closed_form" if has_images and not drops_tokens else "none")

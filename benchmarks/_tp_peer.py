"""The Torch-Pruning peer of ``benchmarks/reconstruct.py``: its recommended ViT recipe at vitopt's budgets.

Recipe (Torch-Pruning 1.6, examples/transformers/prune_timm_vit.py): ``MetaPruner`` with global
pruning, group Taylor importance (gradients of the cross-entropy on labelled calibration batches,
as the example accumulates them) or group magnitude (L2) importance, whole-head pruning through
``num_heads`` / ``prune_num_heads`` (head dims kept), the classifier's outputs left alone. After
pruning, each timm ``Attention`` gets its new ``num_heads`` / ``head_dim`` / ``attn_dim`` (the
example patches ``forward`` instead; timm 1.0's forward reads ``attn_dim``, so no patch is needed).

The pruning ratio that meets a MACs (or params) budget is found by bisection, counting with
``optimizer.counting`` on the pruned model: the same counter every vitopt row is measured with.

Torch-Pruning is a benchmark peer, not a vitopt dependency: ``pip install torch-pruning``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from optimizer.errors import MissingDependency, VitoptError

IMPORTANCES = ("taylor", "magnitude")
BUDGETS = ("macs_ratio", "params_ratio")


def require_torch_pruning():
    """The ``torch_pruning`` module, or one line saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise MissingDependency("the Torch-Pruning peer needs torch-pruning: pip install torch-pruning") from None
    return torch_pruning


@dataclass(frozen=True)
class PeerConfig:
    """One Torch-Pruning row: importance, one budget (a fraction of the dense model's), tolerance."""
    importance: str = "taylor"
    macs_ratio: Optional[float] = None
    params_ratio: Optional[float] = None
    tolerance: float = 0.02          # relative: |measured / target - 1| <= tolerance
    head_pruning_ratio: float = 0.5  # the example's setting (it hard-codes 0.5 whatever --head_pruning_ratio says)
    round_to: int = 2                # the example's channel rounding
    taylor_batch_size: int = 64      # the example's --train_batch_size

    def __post_init__(self):
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if (self.macs_ratio is None) == (self.params_ratio is None):
            raise ValueError("give exactly one budget: macs_ratio or params_ratio")
        r = self.budget[1]
        if not isinstance(r, (int, float)) or not 0 < r < 1:
            raise ValueError(f"the budget ratio must be in (0, 1), got {r!r}")
        if not 0 < self.tolerance < 0.5:
            raise ValueError(f"tolerance must be in (0, 0.5), got {self.tolerance!r}")
        if not 0 <= self.head_pruning_ratio < 1:
            raise ValueError(f"head_pruning_ratio must be in [0, 1), got {self.head_pruning_ratio!r}")

    @property
    def budget(self) -> tuple:
        """("macs_ratio" | "params_ratio", target)."""
        return ("macs_ratio", self.macs_ratio) if self.macs_ratio is not None else ("params_ratio", self.params_ratio)


def match_ratio(prune_at: Callable[[float], object], measure: Callable[[object], float], target: float,
                tolerance: float, lo: float = 0.0, hi: float = 0.95, max_iter: int = 14) -> tuple:
    """Find the pruning ratio r whose ``measure(prune_at(r))`` (falling as r grows, 1.0 near r = 0) is
    within ``tolerance`` (relative) of ``target``; returns (r, model, measured, trials).

    Bracketed search: each trial interpolates linearly inside the current bracket (kept 10 % away
    from its ends, so the bracket always shrinks like a bisection), since MACs fall about linearly
    with the ratio. Raises VitoptError when no ratio gets there (e.g. the measure jumps over the window)."""
    if not 0 < target < 1:
        raise VitoptError(f"the budget must be in (0, 1), got {target!r}")
    v_lo, v_hi = 1.0, 0.0          # assumed ends until measured: unpruned, everything pruned
    trials, best = [], None
    for _ in range(max_iter):
        t = (v_lo - target) / (v_lo - v_hi) if v_lo != v_hi else 0.5
        t = min(max(t, 0.1), 0.9)
        mid = lo + t * (hi - lo)
        model = prune_at(mid)
        value = measure(model)
        trials.append({"ratio": round(mid, 6), "measured": value})
        err = value / target - 1
        if best is None or abs(err) < abs(best[2] / target - 1):
            best = (mid, model, value)
        if abs(err) <= tolerance:
            return mid, model, value, trials
        if value > target:
            lo, v_lo = mid, value
        else:
            hi, v_hi = mid, value
    raise VitoptError(f"no pruning ratio meets {target:.3f} within {tolerance:.0%} after {max_iter} trials "
                      f"(closest: ratio {best[0]:.4f} -> {best[2]:.4f})")


def timm_attention_heads(model) -> dict:
    """{qkv Linear: num_heads} of every timm Attention (what the example passes as ``num_heads``)."""
    from timm.models.vision_transformer import Attention
    return {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}


def accumulate_taylor_grads(model, loader, max_images: Optional[int] = None) -> dict:
    """Cross-entropy gradients summed over labelled ``loader`` batches (the example's Taylor pass);
    returns {parameter name: grad} so each bisection trial can start from a fresh copy."""
    import torch.nn.functional as F
    model.zero_grad()
    seen = 0
    for batch in loader:
        if batch.images.numel() == 0:
            continue
        keep = batch.labels >= 0
        if not bool(keep.any()):
            raise VitoptError("Taylor importance needs labelled calibration images (a synsets.tsv beside the folder)")
        F.cross_entropy(model(batch.images[keep]), batch.labels[keep]).backward()
        seen += int(keep.sum())
        if max_images is not None and seen >= max_images:
            break
    if not seen:
        raise VitoptError("no calibration image could be read for the Taylor gradients")
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def prune_vit(dense, cfg: PeerConfig, ratio: float, grads: Optional[dict] = None):
    """A pruned copy of the timm ViT ``dense`` at Torch-Pruning ``ratio`` (``dense`` is untouched)."""
    tp = require_torch_pruning()
    import torch
    from optimizer.counting import model_input_size
    model = copy.deepcopy(dense).eval()
    for p in model.parameters():
        p.requires_grad_(True)   # a frozen (requires_grad=False) layer is one Torch-Pruning does not prune
    if cfg.importance == "taylor":
        if grads is None:
            raise VitoptError("Taylor importance needs the calibration gradients (accumulate_taylor_grads)")
        for n, p in model.named_parameters():
            p.grad = grads[n].clone() if n in grads else None
        imp = tp.importance.GroupTaylorImportance()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    p0 = next(model.parameters())
    example = torch.randn((1, *model_input_size(model)), dtype=p0.dtype, device=p0.device)
    heads = timm_attention_heads(model)
    with warnings.catch_warnings():
        # it warns that cls_token / pos_embed get their last dimension pruned: what a ViT needs
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = tp.pruner.MetaPruner(model, example, importance=imp, global_pruning=True, pruning_ratio=ratio,
                                      ignored_layers=[model.get_classifier()], num_heads=heads, prune_num_heads=True,
                                      prune_head_dims=False, head_pruning_ratio=cfg.head_pruning_ratio,
                                      round_to=cfg.round_to)
    for group in pruner.step(interactive=True):
        group.prune()
    for qkv, n_heads in heads.items():
        attn = next(m for m in model.modules() if getattr(m, "qkv", None) is qkv)
        attn.num_heads = pruner.num_heads[qkv]
        attn.head_dim = qkv.out_features // (3 * attn.num_heads)
        attn.attn_dim = attn.num_heads * attn.head_dim
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model(example)   # the new widths must run
    return model

"""Activation-aware mixed-rank factorisation of a ViT's Linear layers (method ``lowrank``).

    from optimizer.compress import compress
    from optimizer.methods.lowrank import LowRankConfig
    cm = compress(model, [LowRankConfig(params_ratio=0.5)], CompressContext(calib_dir="train/"))

See METHODS.md §2. Modules: ``module`` (LowRankLinear, rebuild, merge_for_export), ``svd``
(whitened SVD), ``compensate`` (second term by Adam), ``allocate`` (greedy mixed ranks),
``calibrate`` (streamed XᵀX), ``apply`` (the whole step).
"""
from ...compress.registry import register_method
from .apply import apply, factorize_linears
from .config import LowRankConfig
from .module import LowRankLinear, lowrank_structure, merge_for_export, rebuild

register_method("lowrank", LowRankConfig, apply, rebuild,
                description="activation-aware SVD + error compensation, mixed ranks under a params/MACs budget")

__all__ = ["LowRankConfig", "LowRankLinear", "factorize_linears", "lowrank_structure", "merge_for_export",
           "rebuild", "apply"]

"""Activation-aware mixed-rank factorisation of a ViT's Linear layers (method ``lowrank``).

    from optimizer.compress import compress
    from optimizer.methods.lowrank import LowRankConfig
    cm = compress(model, [LowRankConfig(params_ratio=0.5)], CompressContext(calib_dir="train/"))

Conventions and choices (see METHODS.md §2 for the paper's method):
* params_ratio = params(compressed model) / params(model this step receives), every parameter
  counted (``optimizer.counting.count_params``); after slim it is relative to the sliced model.
  macs_ratio likewise with ``count_macs``. Embeddings, norms and (unless ``include_head``) the
  head are never factorised; a layer is only factorised when r·(in+out) < in·out.
* Calibration is *independent* by default: every layer is whitened with its dense input Gram from
  one pass. ``sequential=True`` calibrates block i on the outputs of the already factorised
  blocks 0..i-1 (whitening from those inputs); on DeiT-Tiny it was not better (higher KL to the
  dense model at all four ratios tested), so it is an option. Only Gram matrices are kept (float32 per batch,
  summed in float64), plus the first block's input for the sequential replay.
* Ranks are allocated greedily by (sensitivity-weighted) error drop per parameter, MAC or measured
  millisecond (``latency``: per-shape ONNX Runtime table; ``latency_ratio`` budget, or break-even
  caps under a params/MACs budget so that no factorised layer is slower than dense).
* With exact whitening the rank-r activation-aware SVD is already the optimum of the layer's
  output loss on the calibration tokens, so a second term at the same total rank can only help
  when its target differs: the compensation term regresses the *dense* layer outputs on the
  drifted inputs of the factorised prefix. On DeiT-Tiny it did not clearly earn its place
  (0.6 params, 128 calibration images: agreement 9.2 % vs 6.9 % without it but higher KL, 13x the
  calibration time; with 32 calibration images it lowered agreement sharply), so it is off by
  default (``comp_fraction=0``); benchmarks/results/lowrank_deit_tiny.md has the ablation.

Modules: ``module`` (LowRankLinear, rebuild, merge_for_export), ``svd``
(whitened SVD), ``compensate`` (second term by Adam), ``allocate`` (greedy mixed ranks),
``calibrate`` (streamed XᵀX), ``latency`` (measured per-shape table), ``apply`` (the whole step).
"""
from ...compress.registry import register_method
from .apply import apply, factorize_linears
from .config import LowRankConfig
from .export import export_form
from .module import LowRankLinear, lowrank_structure, merge_for_export, rebuild

register_method("lowrank", LowRankConfig, apply, rebuild,
                description="activation-aware SVD + error compensation, mixed ranks under a params/MACs budget",
                export_form=export_form)

__all__ = ["LowRankConfig", "LowRankLinear", "factorize_linears", "lowrank_structure", "merge_for_export",
           "rebuild", "apply"]

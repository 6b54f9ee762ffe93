"""USDC gates: input-adaptive group-level gates over heads and MLP channel groups, unified with
static pruning (never-on units removed, always-on units kept without a gate).

    from optimizer.compress import compress, CompressContext
    from optimizer.methods.gates import GatesConfig
    cm = compress(model, [GatesConfig(macs_ratio=0.6)], CompressContext(calib_dir="train/"))

Modules: ``modules`` (GatedAttention/GatedMlp/GateNet), ``convert`` (surgery, static pruning,
structure/rebuild), ``train`` (gate training, calibration), ``export`` (ONNX with TopK/Gather).
"""
from ...compress.registry import register_method
from .config import GatesConfig
from .convert import gate_model, rebuild_gated, static_prune, structure_of
from .export import export_form
from .method import apply_gates, rebuild_gates
from .modules import (GatedAttention, GatedMlp, GateNet, gated_modules, set_fixed_k, set_forced_gates,
                      set_group_sizes, subgroup_sizes)

register_method("gates", GatesConfig, apply_gates, rebuild_gates,
                "input-adaptive group gates over heads and MLP channel groups + static pruning (USDC)",
                export_form=export_form)

__all__ = ["GatesConfig", "apply_gates", "rebuild_gates", "gate_model", "rebuild_gated", "static_prune",
           "structure_of", "GatedAttention", "GatedMlp", "GateNet", "gated_modules", "set_fixed_k",
           "set_forced_gates", "set_group_sizes", "subgroup_sizes"]

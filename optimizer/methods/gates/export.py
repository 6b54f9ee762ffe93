"""ONNX export of gated models with the gate decision inside the graph, and builder checks.

Each gated module exports as::

    x ─ReduceMean(batch, tokens)─ gate MLP ─ scores ─┬─ Greater(thr) ─ Cast ─ ReduceSum ─ Clip(min 1) ─ K
                                                     └──────────────────── TopK(scores, K) ─ indices
    W (initializer) ─ Reshape(units, ...) ─ Gather(indices) ─ Reshape ─ MatMul(x, W_active)

The data-dependent K is what makes the compute shrink at run time; no NonZero appears, so the
same file parses and builds in ONNX Runtime and TensorRT for RTX (checked by the tests and the
benchmark). ``fixed_k=True`` exports a constant K per module (the calibrated mean) for targets
that need static shapes: the same TopK → Gather path with a constant K.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

from ...errors import VitoptError
from .modules import gated_modules, set_fixed_k


GATES_K_MODES = ("data", "fixed")


@contextlib.contextmanager
def gates_k_mode(model, mode: Optional[str]):
    """Within the block the gated modules of ``model`` decide K as ``mode`` says: "data" (count of
    scores over the threshold: the input-adaptive graph), "fixed" (each module's calibrated mean K,
    top-scored units per group: static shapes) or None (a model without gates exports as is; a
    gated one as "data"). Yields the metadata to record ({} for a model without gates).

    Raises VitoptError for an unknown mode, any mode on a model without gates, or "fixed" on gates
    that were never calibrated (no mean K to fix: guessing one would silently change the MACs).
    """
    if mode is not None and mode not in GATES_K_MODES:
        raise VitoptError(f"gates K mode must be one of {', '.join(GATES_K_MODES)}, got {mode!r}")
    if not gated_modules(model):
        if mode is not None:
            raise VitoptError(f"gates K {mode!r} needs a model compressed with a gates step; this one has no gates")
        yield {}
        return
    mods = [m for m in gated_modules(model) if m.dynamic_units]
    if not mods:   # static pruning made every unit static or removed it: nothing is decided at run time
        yield {"vitopt.gates.k": "none (every gated unit static)", "vitopt.gates.modules": "0"}
        return
    if mode == "fixed" and any(m.mean_active is None for m in mods):
        raise VitoptError("gates K 'fixed' needs the calibrated mean K of every gated module; this model's "
                          "gates were never calibrated")
    set_fixed_k(model, mode == "fixed")
    try:
        yield {"vitopt.gates.k": "fixed (calibrated mean)" if mode == "fixed" else "data-dependent (TopK)",
               "vitopt.gates.modules": str(len(mods))}
    finally:
        set_fixed_k(model, False)


def onnx_from_gated(model, path: str | os.PathLike, *, fixed_k: bool = False, dynamo: bool = False,
                    opset: int = 18, input_name: str = "input", output_name: str = "logits",
                    example_batch: int = 2):
    """Export a gated model (eval mode, gates decided in the graph) with ``optimizer.export``.

    Args:
        fixed_k: constant K per module (calibrated mean) instead of the data-dependent count.
        dynamo: the torch.export-based exporter; the default TorchScript exporter records the
            data-dependent TopK K directly (both produce TopK+Gather; see the benchmark report).
    Returns the ``ExportInfo`` of ``optimizer.export.onnx_from_torch``.
    Example: ``onnx_from_gated(model, "gated.onnx")``
    """
    from ...export import onnx_from_torch, save_onnx, set_metadata
    if not gated_modules(model):
        raise VitoptError("the model has no gated modules: export it with optimizer.export.onnx_from_torch")
    with gates_k_mode(model, "fixed" if fixed_k else "data") as meta:
        info = onnx_from_torch(model, path, opset=opset, dynamo=dynamo, input_name=input_name,
                               output_name=output_name, example_batch=example_batch, fallback=False,
                               description="vitopt gated ViT (USDC)")
    import onnx
    proto = onnx.load(str(path))
    set_metadata(proto, meta)
    save_onnx(proto, path)
    return info


def op_counts(path: str | os.PathLike) -> dict:
    import onnx
    counts: dict = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))

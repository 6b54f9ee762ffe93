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

from ...compress.registry import METHODS
from ...errors import VitoptError
from .modules import gated_modules, set_fixed_k

# declared once, by the gates entry of the method registry (it is what `--gates-k` and recipes accept)
GATES_K_MODES = METHODS["gates"].export_options["gates_k"].choices


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


@contextlib.contextmanager
def export_form(model, options: dict):
    """The registry's export form of the gates method: ``gates_k_mode(model, options["gates_k"])``."""
    with gates_k_mode(model, options.get("gates_k")) as meta:
        yield model, meta


def onnx_from_gated(model, path: str | os.PathLike, *, fixed_k: bool = False, dynamo: bool = False,
                    opset: int = 18, parity_images: int = 8, atol: float = 1e-3):
    """Export a gated model (eval mode, gates decided in the graph) through the deployment chain
    (``optimizer.deploy``: export, graph rules, parity against PyTorch on seeded random inputs).

    Args:
        fixed_k: constant K per module (calibrated mean) instead of the data-dependent count.
        dynamo: the torch.export-based exporter; the default TorchScript exporter records the
            data-dependent TopK K directly (both produce TopK+Gather; see the benchmark report).
        parity_images: random inputs of the parity check.
        atol: its tolerance (1e-3, as the gates tests and benchmark use: a gate score at its threshold
            may decide differently in ONNX Runtime and PyTorch)
    Returns the chain's ``DeployResult`` (``.report`` has the export, clean-up and parity reports).
    Example: ``onnx_from_gated(model, "gated.onnx")``
    """
    from ...deploy import DeployOptions, deploy_model, parity_inputs, write_onnx
    if not gated_modules(model):
        raise VitoptError("the model has no gated modules: export it with optimizer.deploy.deploy_model")
    options = DeployOptions(opset=opset, exporter="dynamo" if dynamo else "legacy", fallback=False,
                            parity_images=parity_images, atol=atol,
                            method_options={"gates_k": "fixed" if fixed_k else "data"})
    result = deploy_model(model, options, parity_inputs(model, None, parity_images),
                          description="vitopt gated ViT (USDC)")
    write_onnx(result, path)
    return result

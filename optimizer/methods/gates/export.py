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
from typing import Optional, Sequence

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


def trt_rtx_build(path: str | os.PathLike, batch_sizes: Sequence[int] = (1, 8, 32),
                  input_shape: Optional[Sequence[int]] = None, fp16: bool = False) -> dict:
    """Try to build a TensorRT-for-RTX engine (strongly typed, one profile over ``batch_sizes``).

    Returns {"builder", "version", "parsed", "built", "errors", "engine_bytes", "seconds"}; never raises
    for parser/builder failures (they are the result), raises VitoptError when TensorRT for RTX is absent.
    """
    import time
    try:
        import tensorrt_rtx as trt
    except ImportError:
        raise VitoptError("TensorRT for RTX is not installed (pip install tensorrt_rtx)") from None
    if fp16:
        raise VitoptError("strongly typed TensorRT-RTX networks take their precision from the ONNX file: "
                          "convert the ONNX to fp16 first")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(net, logger)
    out = {"builder": "tensorrt_rtx", "version": trt.__version__, "parsed": False, "built": False, "errors": [],
           "engine_bytes": None, "seconds": None, "profile": list(batch_sizes)}
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        ok = parser.parse(f.read())
    out["parsed"] = bool(ok)
    out["errors"] = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok:
        return out
    inp = net.get_input(0)
    shape = list(input_shape) if input_shape else list(inp.shape)[1:]
    cfg = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    bs = sorted(batch_sizes)
    prof.set_shape(inp.name, [bs[0], *shape], [bs[len(bs) // 2], *shape], [bs[-1], *shape])
    cfg.add_optimization_profile(prof)
    try:
        engine = builder.build_serialized_network(net, cfg)
    except Exception as e:  # the builder raises RuntimeError/TypeError subclasses
        out["errors"].append(f"{type(e).__name__}: {e}")
        engine = None
    out["seconds"] = round(time.perf_counter() - t0, 2)
    if engine is not None:
        out["built"], out["engine_bytes"] = True, int(engine.nbytes)
    elif not out["errors"]:
        out["errors"].append("build_serialized_network returned None (see the TensorRT log)")
    return out

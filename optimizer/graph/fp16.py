"""FP32 -> FP16 conversion for strongly typed networks (TensorRT for RTX, TensorRT STRONGLY_TYPED).

A strongly typed builder takes every tensor's type from the ONNX file, so precision is decided
here, explicitly: all float32 weights and compute become float16 except the ops in ``FP32_OPS``
(LayerNormalization, Softmax and the reductions/power/sqrt a decomposed normalisation is made
of) and the elementwise ops downstream of those reductions (the rest of a decomposed LayerNorm:
centring, eps, division, affine), which keep float32 weights and get ``Cast`` nodes on their
float inputs and outputs. With
``keep_io_types=True`` graph inputs and outputs stay float32 and Casts are inserted at the
boundary, so callers feed and read the same arrays as for the fp32 model.

Written with onnx + onnx-graphsurgeon (no onnxconverter-common). Weights beyond the fp16 range
are clipped to +-65504 (reported in the ``vitopt.fp16_clipped_weights`` metadata).
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from ..errors import VitoptError

# ops computed in fp32: normalisations and the reductions of a decomposed normalisation
FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", "GroupNormalization", "InstanceNormalization",
    "RMSNormalization", "SkipLayerNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt",
})

_FP16_MAX = float(np.finfo(np.float16).max)

# a decomposed normalisation: elementwise ops fed by these stay fp32 (transitively), so
# mean/variance/eps/rsqrt and the affine part are all computed in fp32 up to the next MatMul
_REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Pow", "Neg", "Abs", "Max", "Min"})


def _fp32_nodes(nodes, keep32, keep_keys=frozenset()) -> set:
    """ids of nodes computed in fp32: ``keep32`` ops, nodes whose first output is in ``keep_keys``
    (found by the probe), plus elementwise ops downstream of reductions."""
    fp32, spread = set(), set()
    for node in nodes:  # topological order
        if node.outputs and node.outputs[0].name in keep_keys:
            fp32.add(id(node))
        if node.op in keep32:
            fp32.add(id(node))
            if node.op in _REDUCTIONS:
                spread.add(id(node))
        elif node.op in _ELEMENTWISE:
            srcs = [t.inputs[0] for t in node.inputs if len(t.inputs) == 1]
            if any(id(p) in spread for p in srcs):
                fp32.add(id(node))
                spread.add(id(node))
    return fp32


def _np_dtype_ok(dtype) -> bool:
    if dtype is None:
        return False
    try:
        np.dtype(dtype)
        return True
    except TypeError:  # onnx-only types (bfloat16, float8) have no numpy dtype
        return False


def _is_f32(dtype) -> bool:
    return _np_dtype_ok(dtype) and np.dtype(dtype) == np.float32


def convert_to_fp16(model_proto, keep_io_types: bool = True, fp32_ops: Optional[Iterable[str]] = None,
                    probe_inputs=None, probe_tolerance: Optional[float] = None,
                    fp32_nodes: Optional[Iterable[str]] = None):
    """Return an FP16 copy of ``model_proto`` (the input is not modified).

    Args:
        model_proto: float32 ``onnx.ModelProto``.
        keep_io_types: keep float32 graph inputs/outputs, with Casts at the boundary (default).
        fp32_ops: op types kept in float32 (default ``FP32_OPS``; ``()`` keeps none by type).
        probe_inputs: real inputs (N, ...); when given, ``fp16_probe.probe_fp16`` checks every node
            in fp16 on them and the ones that overflow or lose more than ``probe_tolerance`` stay
            fp32 too (recorded in the ``vitopt.fp16_probe`` / ``vitopt.fp16_fp32_nodes`` metadata).
        probe_tolerance: the probe's relative-error limit (default ``fp16_probe.PROBE_TOLERANCE``).
        fp32_nodes: first-output names of nodes to keep fp32 (e.g. ``probe_fp16(...).kept``).

    Raises VitoptError when the graph has no float32 tensors to convert or the result is invalid.

    Example: ``fp16 = convert_to_fp16(onnx.load("m.onnx"), probe_inputs=val_images[:8])``
    """
    import onnx
    import onnx_graphsurgeon as gs
    from ..export.torch_to_onnx import set_metadata
    from .cleanup import _copy_model_fields, infer_shapes
    keep32 = frozenset(FP32_OPS if fp32_ops is None else fp32_ops)
    for p in model_proto.metadata_props:
        if p.key == "vitopt.precision" and p.value == "fp16":
            raise VitoptError("model is already converted to fp16")
    keep_keys = set(fp32_nodes or ())
    probe = None
    if probe_inputs is not None:
        from .fp16_probe import PROBE_TOLERANCE, probe_fp16
        probe = probe_fp16(model_proto, probe_inputs,
                           tolerance=PROBE_TOLERANCE if probe_tolerance is None else probe_tolerance)
        keep_keys |= set(probe.kept)
    graph = gs.import_onnx(infer_shapes(model_proto))
    graph.toposort()

    f16_consts: dict = {}
    casts: dict = {}
    clipped = [0]

    def const16(c):
        if id(c) not in f16_consts:
            v = c.values
            big = np.abs(v) > _FP16_MAX
            if big.any():
                clipped[0] += int(big.sum())
                v = np.clip(v, -_FP16_MAX, _FP16_MAX)
            f16_consts[id(c)] = gs.Constant(f"{c.name}_fp16", v.astype(np.float16))
        return f16_consts[id(c)]

    def cast(t, to):
        key = (id(t), to)
        if key not in casts:
            suffix = "fp16" if to == np.float16 else "fp32"
            out = gs.Variable(f"{t.name}_{suffix}", dtype=to, shape=t.shape)
            graph.nodes.append(gs.Node("Cast", name=f"Cast_{t.name}_{suffix}",
                                       attrs={"to": onnx.TensorProto.FLOAT16 if to == np.float16
                                              else onnx.TensorProto.FLOAT},
                                       inputs=[t], outputs=[out]))
            casts[key] = out
        return casts[key]

    # graph inputs
    input_f32 = set()
    for t in graph.inputs:
        if _is_f32(t.dtype):
            if keep_io_types:
                input_f32.add(id(t))
            else:
                t.dtype = np.float16
    # decide each node's precision and retype its outputs
    converted = 0
    fp32_ids = _fp32_nodes(graph.nodes, keep32, frozenset(keep_keys))
    for node in list(graph.nodes):
        fp32 = id(node) in fp32_ids
        want = np.float32 if fp32 else np.float16
        if node.op == "Cast":
            # Cast to float keeps the network's precision: to=FLOAT becomes FLOAT16 in fp16 regions
            if node.attrs.get("to") == onnx.TensorProto.FLOAT:
                node.attrs["to"] = onnx.TensorProto.FLOAT16
                for o in node.outputs:
                    o.dtype = np.float16
                converted += 1
            continue
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant):
                if t.values.dtype == np.float32 and not fp32:
                    node.inputs[i] = const16(t)
                    converted += 1
                continue
            if not _np_dtype_ok(t.dtype) or np.dtype(t.dtype) not in (np.float32, np.float16):
                continue
            have = np.float32 if (np.dtype(t.dtype) == np.float32) else np.float16
            if have != want:
                node.inputs[i] = cast(t, want)
        if not fp32:
            for o in node.outputs:
                if _is_f32(o.dtype):
                    o.dtype = np.float16
                    converted += 1
            for key in ("value",):  # ConstantOfShape / Constant attributes
                v = node.attrs.get(key)
                if isinstance(v, gs.Constant) and v.values.dtype == np.float32:
                    node.attrs[key] = gs.Constant(v.name, v.values.astype(np.float16))
                    converted += 1
    if converted == 0:
        raise VitoptError("no float32 tensors to convert: is the model already fp16 or integer-only?")
    # graph-input Casts already exist where fp16 nodes read an fp32 input; outputs next
    for idx, out in enumerate(list(graph.outputs)):
        if keep_io_types and _np_dtype_ok(out.dtype) and np.dtype(out.dtype) == np.float16:
            name = out.name
            out.name = f"{name}_fp16"
            final = gs.Variable(name, dtype=np.float32, shape=out.shape)
            graph.nodes.append(gs.Node("Cast", name=f"Cast_{name}_output",
                                       attrs={"to": onnx.TensorProto.FLOAT}, inputs=[out], outputs=[final]))
            graph.outputs[idx] = final
        elif not keep_io_types and _is_f32(out.dtype) and out.inputs and out.inputs[0].op in keep32:
            graph.outputs[idx] = cast(out, np.float16)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    _copy_model_fields(model_proto, out)
    out.ir_version = model_proto.ir_version
    # stale value_info from the fp32 graph would contradict the new types: recompute
    del out.graph.value_info[:]
    out = infer_shapes(out)
    set_metadata(out, {"vitopt.precision": "fp16", "vitopt.fp16_keep_io_types": str(bool(keep_io_types)).lower(),
                       "vitopt.fp16_fp32_ops": ",".join(sorted(keep32)),
                       "vitopt.fp16_clipped_weights": clipped[0]})
    if keep_keys:
        set_metadata(out, {"vitopt.fp16_fp32_nodes": ",".join(sorted(keep_keys))})
    if probe is not None:
        set_metadata(out, {"vitopt.fp16_probe": probe.summary()})
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        raise VitoptError(f"fp16 conversion produced an invalid model: {str(e).splitlines()[0]}") from None
    return out

"""Find the nodes that must stay fp32 by checking them on real inputs (per-node fp16 probe).

For every node that computes floats, the probe graph holds the original node and a clone that
reads the *same* fp32 activations rounded to fp16 (``Cast`` to float16 and back) and whose
outputs are rounded the same way::

    x ──► node ──► y ───────────────┐
    │                               Sub ──► ReduceSumSquare ──► err²
    └─► Cast16 ─► Cast32 ─► node' ─► Cast16 ─► Cast32 ─► y16
    y ──► ReduceSumSquare ──► ref²        y ──► Abs ──► ReduceMax ──► max|y|

so each node's error is its own (no error carried in from upstream), and the graph outputs are
scalars: one ONNX Runtime run per chunk of images, whatever the model's size. A node is kept in
fp32 when its relative error ``sqrt(err² / ref²)`` exceeds the tolerance, or when an input or
output overflows fp16 (|x| > 65504 becomes Inf, so the error is not finite). A kept node whose
float input comes from an elementwise node (Add/Sub/Mul/Div) keeps that producer in fp32 too: an
error that comes from the input's rounding (``(x + 1000) - 1000``) is only gone when the input is
produced in fp32.

What it measures: rounding of inputs, weights and outputs to fp16 and fp16 overflow. What it
does not: accumulation inside a kernel (TensorRT accumulates fp16 MatMuls in fp32, and a
normalisation's internal precision is the builder's choice) — which is why ``convert_to_fp16``
keeps its fixed list of normalisation ops as well by default.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np

from ..errors import VitoptError

PROBE_TOLERANCE = 1e-2  # relative (L2) error of one node in fp16; fp16 rounding alone gives ~3e-4
FP16_MAX = float(np.finfo(np.float16).max)
# ops that only move or pick values: in fp16 they add no error beyond their input's rounding
_MOVES = frozenset({"Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Squeeze",
                    "Unsqueeze", "Flatten", "Expand", "Identity", "Split", "Shape", "Size", "Cast", "CastLike",
                    "Constant", "ConstantOfShape", "Tile", "Pad", "Where", "TopK", "NonZero", "Range"})
_FLOAT = 1  # onnx.TensorProto.FLOAT
_ELEMENTWISE_PRODUCERS = frozenset({"Add", "Sub", "Mul", "Div"})


@dataclass(frozen=True)
class NodeProbe:
    """One node's fp16 check: ``key`` is its first output's name (stable through graph rewrites)."""
    key: str
    name: str
    op: str
    rel_error: float
    max_abs: float
    overflow: bool
    keep_fp32: bool
    reason: str = ""  # "overflow", "error", or "feeds <key>" for a producer kept with its consumer


@dataclass(frozen=True)
class Fp16Probe:
    """Result of ``probe_fp16``: every probed node, and which ones stay fp32."""
    nodes: tuple
    tolerance: float
    images: int

    @property
    def kept(self) -> list:
        """Keys (first output names) of the nodes to keep in fp32."""
        return [n.key for n in self.nodes if n.keep_fp32]

    def islands(self) -> dict:
        """Kept nodes counted by op type."""
        out: dict = {}
        for n in self.nodes:
            if n.keep_fp32:
                out[n.op] = out.get(n.op, 0) + 1
        return dict(sorted(out.items()))

    def worst(self, k: int = 10) -> list:
        """The ``k`` nodes with the largest relative error (Inf/NaN first)."""
        def order(n):
            return float("inf") if not np.isfinite(n.rel_error) else n.rel_error
        return sorted(self.nodes, key=order, reverse=True)[:k]

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "images": self.images, "probed": len(self.nodes),
                "kept": [asdict(n) for n in self.nodes if n.keep_fp32], "islands": self.islands(),
                "worst": [asdict(n) for n in self.worst()]}

    def summary(self) -> str:
        """One line for metadata and logs."""
        return json.dumps({"tolerance": self.tolerance, "images": self.images, "probed": len(self.nodes),
                           "islands": self.islands()}, sort_keys=True)


def _float_tensors(proto) -> set:
    """Names of float32 tensors (graph inputs, initializers, inferred values, Constant outputs)."""
    g = proto.graph
    names = {v.name for v in list(g.input) + list(g.value_info) + list(g.output)
             if v.type.tensor_type.elem_type == _FLOAT}
    names |= {i.name for i in g.initializer if i.data_type == _FLOAT}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == _FLOAT:
                    names.add(n.output[0])
    return names


def _probe_model(proto):
    """(probe ModelProto, [(key, node name, op, [err, ref, max] output names)])."""
    import onnx
    from onnx import helper
    from .cleanup import infer_shapes
    inferred = infer_shapes(proto)
    floats = _float_tensors(inferred)
    g = inferred.graph
    new_nodes, outputs, probes, rounded = [], [], [], {}

    def round16(t: str, tag: str) -> str:
        if t in rounded:
            return rounded[t]
        mid, out = f"probe16/{tag}/{t}/h", f"probe16/{tag}/{t}/f"
        new_nodes.append(helper.make_node("Cast", [t], [mid], to=onnx.TensorProto.FLOAT16))
        new_nodes.append(helper.make_node("Cast", [mid], [out], to=onnx.TensorProto.FLOAT))
        rounded[t] = out
        return out

    def scalar(name: str):
        outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []))

    for i, node in enumerate(g.node):
        if node.op_type in _MOVES or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                         for a in node.attribute):
            continue
        outs = [o for o in node.output if o and o in floats]
        if not outs or not node.output[0]:
            continue
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = f"probe16/{i}"
        del clone.input[:]
        clone.input.extend([round16(t, "in") if t and t in floats else t for t in node.input])
        del clone.output[:]
        clone.output.extend([f"probe16/{i}/{o}" if o else "" for o in node.output])
        new_nodes.append(clone)
        names = []
        for j, o in enumerate(node.output):
            if o not in floats:
                continue
            y16 = round16(clone.output[j], "out")
            err, ref, mx, d, a = (f"probe16/{i}/{j}/{s}" for s in ("err", "ref", "max", "d", "a"))
            new_nodes += [helper.make_node("Sub", [y16, o], [d]),
                          helper.make_node("ReduceSumSquare", [d], [err], keepdims=0),
                          helper.make_node("ReduceSumSquare", [o], [ref], keepdims=0),
                          helper.make_node("Abs", [o], [a]),
                          helper.make_node("ReduceMax", [a], [mx], keepdims=0)]
            for s in (err, ref, mx):
                scalar(s)
            names.append((err, ref, mx))
        probes.append((node.output[0], node.name, node.op_type, names, [t for t in node.input if t in floats]))
    graph = helper.make_graph(list(g.node) + new_nodes, "fp16_probe", list(g.input), outputs,
                              initializer=list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return model, probes


def probe_fp16(model_proto, probe_inputs, tolerance: float = PROBE_TOLERANCE, chunk: int = 4,
               threads: Optional[int] = None) -> Fp16Probe:
    """Run every float-computing node of an fp32 graph in emulated fp16 on real inputs; report the errors.

    Args:
        model_proto: float32 ``onnx.ModelProto`` with one image input.
        probe_inputs: float32 array (N, ...) of real inputs (e.g. preprocessed val images).
        tolerance: largest relative L2 error of a node's output computed in fp16 (inputs, weights
            and outputs rounded) that still converts; above it, or on fp16 overflow, the node
            stays fp32.
        chunk: images per ONNX Runtime run (memory stays that of the fp32 model at this batch).
        threads: ONNX Runtime intra-op threads (default: physical cores).
    Returns an ``Fp16Probe``; ``.kept`` feeds ``convert_to_fp16(..., fp32_nodes=...)``.
    Raises VitoptError for bad inputs or a graph ONNX Runtime cannot run.
    Example: ``probe = probe_fp16(onnx.load("m.onnx"), images); probe.islands()``
    """
    from ..runners.base import physical_cores
    from ..runners.ort_runner import ort_session
    if not tolerance > 0:
        raise VitoptError(f"probe tolerance must be positive, got {tolerance}")
    x = np.asarray(probe_inputs)
    if x.ndim < 1 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.floating):
        raise VitoptError(f"probe inputs must be a float array (N, ...) with N >= 1, got {x.dtype} {x.shape}")
    if len(model_proto.graph.input) != 1:
        raise VitoptError(f"the fp16 probe needs a single-input graph, got {len(model_proto.graph.input)} inputs")
    probe, probes = _probe_model(model_proto)
    sess = ort_session(probe.SerializeToString(), threads=threads or physical_cores())
    feed_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    sums = {n: 0.0 for n in names}
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(0, x.shape[0], max(1, int(chunk))):
            vals = sess.run(names, {feed_name: x[s:s + chunk].astype(np.float32)})
            for n, v in zip(names, vals):
                v = float(np.asarray(v, dtype=np.float64))
                sums[n] = max(sums[n], v) if n.endswith("/max") else sums[n] + v
    nodes = {}
    for key, name, op, outs, _ in probes:
        rel, mx, overflow = 0.0, 0.0, False
        for err, ref, m in outs:
            e, r = sums[err], sums[ref]
            mx = max(mx, sums[m])
            if not np.isfinite(e) or sums[m] > FP16_MAX:
                overflow = True
                rel = float("inf")
                continue
            rel = max(rel, float(np.sqrt(e / r)) if r > 0 else (0.0 if e == 0 else float("inf")))
        keep = bool(overflow or rel > tolerance)
        nodes[key] = NodeProbe(key, name, op, rel, mx, overflow, keep,
                               "overflow" if overflow else ("error" if keep else ""))
    for key, _, _, _, inputs in probes:  # producers of a kept node's inputs, elementwise ones only
        if not nodes[key].reason or nodes[key].reason.startswith("feeds"):
            continue
        for t in inputs:
            p = nodes.get(t)
            if p is not None and not p.keep_fp32 and p.op in _ELEMENTWISE_PRODUCERS:
                nodes[t] = replace(p, keep_fp32=True, reason=f"feeds {key}")
    return Fp16Probe(tuple(nodes.values()), float(tolerance), int(x.shape[0]))

"""Replace the flatten-transpose-unflatten that swaps the last two dims by one Transpose."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .base import Rule, const_value, detach, only_consumer, producer, register_rule


def shape_tokens(tensor, depth: int = 0) -> Optional[list]:
    """Evaluate a 1-D int64 shape tensor symbolically: a list of ints and ("dim", tensor, i) tokens.

    Understands constants, Shape (start/end), Slice (one axis, step 1), Concat, Gather with a
    scalar index, Unsqueeze of a scalar and Cast; returns None for anything else.
    """
    import onnx_graphsurgeon as gs
    if depth > 8:
        return None
    v = const_value(tensor)
    if v is not None:
        return [int(i) for i in np.asarray(v).reshape(-1)] if v.dtype.kind in "iu" else None
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Shape":
        src = node.inputs[0]
        if src.shape is None:
            return None
        toks = [d if isinstance(d, (int, np.integer)) and d >= 0 else ("dim", id(src), i)
                for i, d in enumerate(src.shape)]
        toks = [int(t) if not isinstance(t, tuple) else t for t in toks]
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return toks[start:end]
    if node.op == "Slice":
        data = shape_tokens(node.inputs[0], depth + 1)
        parts = [const_value(t) for t in node.inputs[1:]]
        if data is None or any(p is None or p.size != 1 for p in parts):
            return None
        starts, ends = int(parts[0].reshape(-1)[0]), int(parts[1].reshape(-1)[0])
        if len(parts) > 2 and int(parts[2].reshape(-1)[0]) not in (0, -1):
            return None
        if len(parts) > 3 and int(parts[3].reshape(-1)[0]) != 1:
            return None
        return data[starts:ends]
    if node.op == "Concat" and node.attrs.get("axis", 0) in (0, -1):
        out = []
        for t in node.inputs:
            part = shape_tokens(t, depth + 1)
            if part is None:
                return None
            out += part
        return out
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        data = shape_tokens(node.inputs[0], depth + 1)
        idx = const_value(node.inputs[1])
        if data is None or idx is None or idx.size != 1:
            return None
        i = int(idx.reshape(-1)[0])
        return [data[i]] if -len(data) <= i < len(data) else None
    if node.op in ("Unsqueeze", "Cast", "Identity", "Squeeze"):
        return shape_tokens(node.inputs[0], depth + 1)
    del gs
    return None


def _dim_token(x, i):
    d = x.shape[i]
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else ("dim", id(x), i)


@register_rule
class ReshapeTransposeToTranspose(Rule):
    """The dynamo exporter lowers ``k.transpose(-2, -1)`` inside attention as a 3-D flatten, a
    transpose and an unflatten computed from ``Shape(k)``; one 4-D Transpose is equivalent and
    removes the shape arithmetic TensorRT would otherwise evaluate at run time.

    Matched subgraph (x: [B, H, N, D] with static N, D)::

        x --> Reshape([-1, N, D]) --> Transpose(0,2,1) --> Reshape(shape) --> y
               shape = [x.dim0, x.dim1, D, N]  (constants / Slice/Gather of Shape(x), Concat)

                                   =>   x --> Transpose(0,1,3,2) --> y

    Fires once per attention block of a dynamo-exported ViT, never on the TorchScript export
    (which already emits the 4-D Transpose).
    """

    name = "reshape_transpose_to_transpose"

    def match(self, node, graph):
        if node.op != "Reshape" or len(node.inputs) != 2:
            return None
        x, c1 = node.inputs
        c1v = const_value(c1)
        if x.shape is None or len(x.shape) != 4 or c1v is None or c1v.size != 3:
            return None
        n, d = x.shape[2], x.shape[3]
        if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (n, d)):
            return None
        c1v = [int(v) for v in c1v.reshape(-1)]
        lead_static = all(isinstance(v, (int, np.integer)) and v >= 0 for v in x.shape[:2])
        if c1v[1:] != [n, d] or not (c1v[0] == -1 or (lead_static and c1v[0] == x.shape[0] * x.shape[1])):
            return None
        t = only_consumer(node.outputs[0], graph)
        if t is None or t.op != "Transpose" or list(t.attrs.get("perm", [])) != [0, 2, 1]:
            return None
        r2 = only_consumer(t.outputs[0], graph)
        if r2 is None or r2.op != "Reshape" or r2.inputs[0] is not t.outputs[0]:
            return None
        toks = shape_tokens(r2.inputs[1])
        if toks is None or toks != [_dim_token(x, 0), _dim_token(x, 1), d, n]:
            return None
        return node, t, r2

    def rewrite(self, graph, match) -> None:
        import onnx_graphsurgeon as gs
        r1, t, r2 = match
        x, y = r1.inputs[0], r2.outputs[0]
        detach(r2)
        detach(t)
        detach(r1)
        graph.nodes.append(gs.Node("Transpose", name=f"{t.name}_last_two", attrs={"perm": [0, 1, 3, 2]},
                                   inputs=[x], outputs=[y]))

"""Merge the two factor pairs of an exported ``LowRankLinear`` into one pair of rank r1 + r2."""
from __future__ import annotations

import numpy as np

from .base import Rule, const_value, detach, only_consumer, producer, register_rule, replace_tensor


def _branch(tensor, graph):
    """Parse ``[Add(bias)] <- MatMul(., U) <- MatMul(X, D)``; return (X, D, U, bias, nodes) or None."""
    nodes, bias = [], None
    node = producer(tensor)
    if node is None or only_consumer(tensor, graph) is None:
        return None
    if node.op == "Add" and len(node.inputs) == 2:
        for i in (0, 1):
            b = const_value(node.inputs[1 - i])
            if b is not None:
                bias, nodes = node.inputs[1 - i], [node]
                tensor = node.inputs[i]
                node = producer(tensor)
                if node is None or only_consumer(tensor, graph) is None:
                    return None
                break
        else:
            return None
    if node.op != "MatMul" or len(node.inputs) != 2:
        return None
    up = const_value(node.inputs[1])
    mid = node.inputs[0]
    first = producer(mid)
    if up is None or up.ndim != 2 or first is None or first.op != "MatMul" or only_consumer(mid, graph) is None:
        return None
    down = const_value(first.inputs[1])
    if down is None or down.ndim != 2 or down.shape[1] != up.shape[0] or down.dtype != up.dtype:
        return None
    return first.inputs[0], down, up, bias, nodes + [node, first]


@register_rule
class MergeLowRankPairs(Rule):
    """A factorised Linear exported with two low-rank terms (activation-aware SVD + error
    compensation) runs four MatMuls; concatenating the factors gives the same map with two
    (``LowRankLinear.merged`` does the same in PyTorch before export).

    Matched subgraph (D_i: in×r_i and U_i: r_i×out constants; every inner tensor has one consumer;
    the bias Add is optional and may sit on either branch)::

        X --> MatMul(D1) --> MatMul(U1) --> [Add(b)] --+
        |                                              +--> Add --> Y
        +---> MatMul(D2) --> MatMul(U2) ---------------+

            =>   X --> MatMul([D1 D2]) --> MatMul([U1; U2]) --> [Add(b)] --> Y

    Exact up to float summation order. Fires once per two-term factorised Linear.
    """

    name = "merge_lowrank_pairs"

    def match(self, node, graph):
        if node.op != "Add" or len(node.inputs) != 2:
            return None
        a = _branch(node.inputs[0], graph)
        b = _branch(node.inputs[1], graph)
        if a is None or b is None or a[0] is not b[0] or (a[3] is not None and b[3] is not None):
            return None
        if a[1].shape[0] != b[1].shape[0] or a[2].shape[1] != b[2].shape[1] or a[1].dtype != b[1].dtype:
            return None
        return node, a, b

    def rewrite(self, graph, match) -> None:
        import onnx_graphsurgeon as gs
        node, a, b = match
        x, bias = a[0], a[3] if a[3] is not None else b[3]
        base = node.name or node.outputs[0].name
        down = gs.Constant(f"{base}_lowrank_down", np.ascontiguousarray(np.concatenate([a[1], b[1]], axis=1)))
        up = gs.Constant(f"{base}_lowrank_up", np.ascontiguousarray(np.concatenate([a[2], b[2]], axis=0)))
        mid = gs.Variable(f"{base}_lowrank_mid", dtype=x.dtype)
        out = gs.Variable(f"{base}_lowrank_out", dtype=node.outputs[0].dtype)
        graph.nodes.append(gs.Node("MatMul", f"{base}_lowrank_down_mm", inputs=[x, down], outputs=[mid]))
        if bias is None:
            graph.nodes.append(gs.Node("MatMul", f"{base}_lowrank_up_mm", inputs=[mid, up], outputs=[out]))
        else:
            pre = gs.Variable(f"{base}_lowrank_pre", dtype=node.outputs[0].dtype)
            graph.nodes.append(gs.Node("MatMul", f"{base}_lowrank_up_mm", inputs=[mid, up], outputs=[pre]))
            graph.nodes.append(gs.Node("Add", f"{base}_lowrank_bias", inputs=[pre, bias], outputs=[out]))
        y = node.outputs[0]
        out.shape = y.shape
        if not replace_tensor(graph, y, out):
            return
        for n in [node] + a[4] + b[4]:
            detach(n)

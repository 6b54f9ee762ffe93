"""Fold the two softmax-scale multiplies of decomposed attention into one."""
from __future__ import annotations

import numpy as np

from .base import Rule, const_value, detach, only_consumer, producer, register_rule, scalar_value


@register_rule
class MergeAttentionScales(Rule):
    """Exporters lower ``scaled_dot_product_attention`` as q·√s and kᵀ·√s (numerically kind to
    fp16 in eager mode); the product only needs one multiply, on the smaller operand.

    Matched subgraph (c1, c2 scalar constants; each Mul feeds only the MatMul)::

        q --> Mul(c1) --+                           q --> Mul(c1*c2) --+
                        +--> MatMul --> scores  =>                     +--> MatMul --> scores
        kT -> Mul(c2) --+                           kT ----------------+

    Exact up to float rounding (|Δ| ~ 1e-7 relative). Fires once per attention block.
    """

    name = "merge_attention_scales"

    def _scaled(self, tensor, graph):
        mul = producer(tensor)
        if mul is None or mul.op != "Mul" or len(mul.inputs) != 2 or only_consumer(tensor, graph) is None:
            return None
        for i in (0, 1):
            c = scalar_value(mul.inputs[1 - i])
            if c is not None:
                return mul, mul.inputs[i], c, mul.inputs[1 - i]
        return None

    def match(self, node, graph):
        if node.op != "MatMul" or len(node.inputs) != 2:
            return None
        a = self._scaled(node.inputs[0], graph)
        b = self._scaled(node.inputs[1], graph)
        if a is None or b is None:
            return None
        if a[3].dtype is not None and b[3].dtype is not None and a[3].dtype != b[3].dtype:
            return None
        return node, a, b

    def rewrite(self, graph, match) -> None:
        import onnx_graphsurgeon as gs
        node, (mul_a, q, ca, const_a), (mul_b, kt, cb, _) = match
        template = const_value(const_a)  # keep the constant's dtype and rank
        merged = gs.Constant(f"{mul_a.name or node.name}_merged_scale",
                             np.full_like(template, ca * cb))
        mul_a.inputs[list(mul_a.inputs).index(const_a)] = merged
        node.inputs[1] = kt
        detach(mul_b)

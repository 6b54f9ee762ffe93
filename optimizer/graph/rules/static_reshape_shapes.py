"""Replace a Reshape's computed target shape by a constant (-1 / 0 for the dynamic dims)."""
from __future__ import annotations

import numpy as np

from .base import Rule, const_value, register_rule
from .reshape_transpose_to_transpose import shape_tokens


@register_rule
class StaticReshapeShapes(Rule):
    """A Reshape target computed at run time from ``Shape`` arithmetic becomes a constant when every
    dim is static except the batch: that dim is ``-1`` (or ``0`` = "copy", when it is the Reshape
    input's own dim at the same place).

    Matched subgraph (the legacy exporter's ``x.reshape(B, N, 3, H, D)`` with B = x.shape[0])::

        t --> Shape --> Gather(0) --> Unsqueeze --+
                  [N] [3] [H] [D] (constants) ----+--> Concat --> s
        x ----------------------------------------------------------> Reshape(x, s) --> y

                 =>   x --> Reshape(x, [-1, N, 3, H, D]) --> y

    Exact: ``-1`` is computed from x's element count, which the original target matched. Fires once
    per run-time reshape of a legacy-exported ViT (patch flatten, 2 per attention block).
    """

    name = "static_reshape_shapes"

    def match(self, node, graph):
        if node.op != "Reshape" or len(node.inputs) != 2 or node.attrs.get("allowzero", 0):
            return None
        x, s = node.inputs
        if const_value(s) is not None:
            return None
        toks = shape_tokens(s)
        if toks is None:
            return None
        out = []
        for p, t in enumerate(toks):
            if isinstance(t, int):
                if t < -1:
                    return None
                out.append(t)
            elif t[1] == id(x) and t[2] == p:
                out.append(0)               # x's own dim at the same place: copy it
            else:
                out.append(-1)
        if out.count(-1) > 1:
            return None
        return node, np.array(out, dtype=np.int64)

    def rewrite(self, graph, match) -> None:
        import onnx_graphsurgeon as gs
        node, shape = match
        node.inputs[1] = gs.Constant(f"{node.name or node.outputs[0].name}_static_shape", shape)

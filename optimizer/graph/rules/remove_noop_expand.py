"""Drop Expand nodes that broadcast a tensor to the shape it already has."""
from __future__ import annotations

import numpy as np

from .base import Rule, bypass, const_value, register_rule


@register_rule
class RemoveNoopExpand(Rule):
    """An Expand whose target shape broadcasts to the input's own shape is the identity.

    Matched subgraph (s constant; every s[i] is 1 or equals x's static dim at that place, and s has
    no more dims than x)::

        x --> Expand(s) --> y      =>      x --> y

    Fires 0 times on DeiT exports (their one Expand broadcasts the class token over the batch).
    """

    name = "remove_noop_expand"

    def match(self, node, graph):
        if node.op != "Expand" or len(node.inputs) != 2:
            return None
        x, s = node.inputs
        sv = const_value(s)
        if sv is None or x.shape is None:
            return None
        sv = [int(v) for v in np.asarray(sv).reshape(-1)]
        if len(sv) > len(x.shape):
            return None
        dims = list(x.shape)[len(x.shape) - len(sv):]
        if all(v == 1 or (isinstance(d, (int, np.integer)) and d == v) for d, v in zip(dims, sv)):
            return node
        return None

    def rewrite(self, graph, node) -> None:
        bypass(graph, node)

"""Compose Transpose chains into one Transpose (or none) and drop identity Transposes."""
from __future__ import annotations

from .base import Rule, bypass, only_consumer, producer, register_rule


def _perm(node, rank=None):
    perm = node.attrs.get("perm")
    if perm is None:
        return list(range(rank))[::-1] if rank is not None else None
    return [int(p) for p in perm]


def _rank(t):
    return len(t.shape) if t.shape is not None else None


@register_rule
class SimplifyTransposes(Rule):
    """Transpose of a Transpose is one Transpose (none when the permutations cancel).

    Matched subgraphs (perm of the composition q[i] = p1[p2[i]])::

        x --> Transpose(p1) --> Transpose(p2) --> y    =>   x --> Transpose(q) --> y   (q != identity)
                                                       =>   x --> y                    (q == identity)
        x --> Transpose(identity perm) --> y           =>   x --> y

    Fires 0 times on DeiT exports (each attention has one Transpose per layout change).
    """

    name = "simplify_transposes"

    def match(self, node, graph):
        if node.op != "Transpose" or len(node.inputs) != 1:
            return None
        x = node.inputs[0]
        p2 = _perm(node, _rank(x))
        if p2 is None:
            return None
        if p2 == list(range(len(p2))):
            return ("bypass", node)
        first = producer(x)
        if first is None or first.op != "Transpose" or only_consumer(x, graph) is not node:
            return None
        p1 = _perm(first, _rank(first.inputs[0]))
        if p1 is None or len(p1) != len(p2):
            return None
        return ("compose", node, first, [p1[i] for i in p2])

    def rewrite(self, graph, match) -> None:
        if match[0] == "bypass":
            bypass(graph, match[1])
            return
        _, node, first, q = match
        node.inputs[0] = first.inputs[0]
        node.attrs["perm"] = q
        first.outputs.clear()
        if q == list(range(len(q))):
            bypass(graph, node)

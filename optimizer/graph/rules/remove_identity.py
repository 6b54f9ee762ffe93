"""Drop Identity nodes (the legacy exporter emits them for aliased weights and outputs)."""
from __future__ import annotations

from .base import Rule, detach, producer, register_rule, replace_tensor


@register_rule
class RemoveIdentity(Rule):
    """Bypass every ``Identity``: its consumers read the Identity's input directly.

    Matched subgraph::

        x --> Identity --> y --> consumers      =>      x --> consumers

    When ``y`` is a graph output, the producer of ``x`` writes the output directly (the output keeps
    its name); an Identity from a graph input straight to a graph output is kept.
    """

    name = "remove_identity"

    def match(self, node, graph):
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            return None
        src, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs and (src in graph.outputs or src in graph.inputs or producer(src) is None):
            return None  # the Identity is what gives this graph output its own name
        return node

    def rewrite(self, graph, node) -> None:
        if replace_tensor(graph, node.outputs[0], node.inputs[0]):
            detach(node)

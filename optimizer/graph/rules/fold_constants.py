"""Constant folding (incl. static shape arithmetic) as a named, selectable rule."""
from __future__ import annotations

from .base import Rule, register_rule


@register_rule
class FoldConstants(Rule):
    """Evaluate every subgraph whose inputs are all constants (ONNX Runtime runs it once) and store
    the result as an initializer; shape arithmetic on static dims folds too.

    Matched subgraph (any node whose inputs are constants, transitively)::

        W --> Transpose --+                         W' (= Wᵀ, computed once) --+
                          +--> MatMul      =>                                  +--> MatMul
        x ----------------+                         x -------------------------+

        Shape(x)[1:] --> Concat([-1, ...]) --> Reshape    =>   const --> Reshape   (x's dims static)

    Counts the nodes it removed. A graph pass (it overrides ``apply``): ``cleanup_graph`` runs it
    before and after the other rules when ``fold=True``.
    """

    name = "fold_constants"

    def apply(self, graph) -> int:
        from ..cleanup import fold_constants
        before = len(graph.nodes)
        fold_constants(graph)
        return max(before - len(graph.nodes), 0)

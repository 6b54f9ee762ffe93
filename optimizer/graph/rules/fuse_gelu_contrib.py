"""Decomposed erf-GELU -> ``com.microsoft.Gelu`` for graphs below opset 20 (opt-in, not a default rule)."""
from __future__ import annotations

from .base import Rule, register_rule
from .fuse_gelu import emit_gelu, match_gelu


@register_rule
class FuseGeluContrib(Rule):
    """Decomposed erf-GELU -> ``com.microsoft.Gelu``: one node on opsets that lack the native Gelu.

    Matched subgraph (as ``fuse_gelu``, erf form only: the contrib Gelu has no tanh mode)::

        x --> Div(√2) --> Erf --> Add(1) --> Mul(x) --> Mul(0.5) --> y   =>   x --> com.microsoft.Gelu --> y

    Checked accepting it: ONNX Runtime 1.23 (CPU contrib op) and the TensorRT-RTX 1.2 ONNX parser
    (parses and builds it as its Gelu layer). Not a default rule: ONNX shape inference does not know
    contrib ops, other runtimes may reject the domain, and ONNX Runtime / TensorRT already fuse
    the decomposed form at build time.
    """

    name = "fuse_gelu_contrib"

    def match(self, node, graph):
        m = match_gelu(node, graph)
        return m if m is not None and m[2] == "none" else None

    def rewrite(self, graph, match) -> None:
        emit_gelu(graph, match, domain="com.microsoft")

"""Recognise GELU from its decomposed forms (erf and tanh approximation) and emit one Gelu node."""
from __future__ import annotations

import math
from typing import Optional

from .base import Rule, const_is, detach, only_consumer, other_input, producer, register_rule, replace_tensor

_SQRT2 = math.sqrt(2.0)
_TANH_SCALE = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def _const_operand(node, value: float):
    """The non-constant input of a two-input node whose other input is the constant ``value``."""
    if len(node.inputs) != 2:
        return None
    for i in (0, 1):
        if const_is(node.inputs[1 - i], value):
            return node.inputs[i]
    return None


def _erf_input(erf, graph):
    """x for ``Erf(x / √2)`` or ``Erf(x * (1/√2))``; with the nodes between (each used once)."""
    u = erf.inputs[0]
    p = producer(u)
    if p is None or only_consumer(u, graph) is None:
        return None
    if p.op == "Div" and len(p.inputs) == 2 and const_is(p.inputs[1], _SQRT2):
        return p.inputs[0], [p]
    if p.op == "Mul":
        x = _const_operand(p, 1.0 / _SQRT2)
        if x is not None:
            return x, [p]
    return None


def _cube_of(t, graph) -> Optional[tuple]:
    """x for ``Pow(x, 3)``, ``Mul(x, Mul(x, x))`` or ``Mul(Mul(x, x), x)``."""
    p = producer(t)
    if p is None or only_consumer(t, graph) is None:
        return None
    if p.op == "Pow" and len(p.inputs) == 2 and const_is(p.inputs[1], 3.0):
        return p.inputs[0], [p]
    if p.op == "Mul" and len(p.inputs) == 2:
        for i in (0, 1):
            sq = producer(p.inputs[1 - i])
            if sq is not None and sq.op == "Mul" and len(sq.inputs) == 2 and sq.inputs[0] is sq.inputs[1] \
                    and sq.inputs[0] is p.inputs[i] and only_consumer(p.inputs[1 - i], graph) is not None:
                return p.inputs[i], [p, sq]
    return None


def _tanh_input(tanh, graph):
    """x for ``Tanh(√(2/π) * (x + 0.044715 * x³))``; with the nodes between (each used once)."""
    u = tanh.inputs[0]
    scale = producer(u)
    if scale is None or scale.op != "Mul" or only_consumer(u, graph) is None:
        return None
    inner = _const_operand(scale, _TANH_SCALE)
    add = producer(inner) if inner is not None else None
    if add is None or add.op != "Add" or len(add.inputs) != 2 or only_consumer(inner, graph) is None:
        return None
    for i in (0, 1):
        x, cubic_term = add.inputs[i], add.inputs[1 - i]
        m = producer(cubic_term)
        if m is None or m.op != "Mul" or only_consumer(cubic_term, graph) is None:
            continue
        cube = _const_operand(m, _TANH_CUBIC)
        found = _cube_of(cube, graph) if cube is not None else None
        if found is not None and found[0] is x:
            return x, [scale, add, m] + found[1]
    return None


def match_gelu(node, graph):
    """Match a decomposed GELU anchored at its Erf or Tanh node.

    Returns ``(x, y, approximate, nodes)`` or None; ``nodes`` are every node of the pattern.
    """
    if node.op == "Erf":
        found, approximate = _erf_input(node, graph), "none"
    elif node.op == "Tanh":
        found, approximate = _tanh_input(node, graph), "tanh"
    else:
        return None
    if found is None:
        return None
    x, nodes = found
    e = node.outputs[0]
    add = only_consumer(e, graph)
    one = other_input(add, e) if add is not None and add.op == "Add" else None
    if one is None or not const_is(one, 1.0):
        return None
    s = add.outputs[0]
    m1 = only_consumer(s, graph)
    if m1 is None or m1.op != "Mul":
        return None
    o = other_input(m1, s)
    nodes = nodes + [node, add, m1]
    if o is x:                                            # (x * s) * 0.5
        m2 = only_consumer(m1.outputs[0], graph)
        if m2 is None or m2.op != "Mul" or not const_is(other_input(m2, m1.outputs[0]), 0.5):
            return None
        return x, m2.outputs[0], approximate, nodes + [m2]
    if o is not None and const_is(o, 0.5):                # x * (s * 0.5)
        m2 = only_consumer(m1.outputs[0], graph)
        if m2 is None or m2.op != "Mul" or other_input(m2, m1.outputs[0]) is not x:
            return None
        return x, m2.outputs[0], approximate, nodes + [m2]
    h = producer(o) if o is not None else None              # (x * 0.5) * s
    if h is not None and h.op == "Mul" and only_consumer(o, graph) is m1 and _const_operand(h, 0.5) is x:
        return x, m1.outputs[0], approximate, nodes + [h]
    return None


def emit_gelu(graph, match, domain: str = "") -> bool:
    """Replace a ``match_gelu`` match by one Gelu node of ``domain``; False if the output cannot move."""
    import onnx_graphsurgeon as gs
    x, y, approximate, nodes = match
    out = gs.Variable(f"{y.name}_gelu", dtype=y.dtype, shape=y.shape)
    attrs = {} if domain else {"approximate": approximate}
    gelu = gs.Node("Gelu", f"{nodes[-1].name or y.name}_gelu", attrs=attrs, inputs=[x], outputs=[out],
                   domain=domain or None)
    graph.nodes.append(gelu)
    if not replace_tensor(graph, y, out):
        detach(gelu)
        return False
    for n in nodes:
        detach(n)
    return True


@register_rule
class FuseGelu(Rule):
    """Decomposed GELU (legacy exporter, opset < 20 exports, hand-written activations) -> one ``Gelu``.

    Matched subgraphs (every inner tensor used once; any association of the final products)::

        erf:   x --> Div(√2) | Mul(1/√2) --> Erf --> Add(1) --+
               |                                              +--> Mul --> Mul(0.5) --> y
               +----------------------------------------------+      (or x*(s*0.5), (x*0.5)*s)

        tanh:  x --> Pow(3) | Mul(x, Mul(x, x)) --> Mul(0.044715) --> Add(x) --> Mul(√(2/π))
                 --> Tanh --> Add(1) --> [same products with x and 0.5] --> y

                  =>   x --> Gelu(approximate="none" | "tanh") --> y

    Emits the native op, which needs opset >= 20: on older graphs the rule does nothing (ONNX Runtime
    and TensorRT fuse the decomposed form themselves at build time; ``fuse_gelu_contrib`` writes
    ``com.microsoft.Gelu`` for them). Fires once per MLP on an opset-20 graph holding the decomposed form.
    """

    name = "fuse_gelu"
    min_opset = 20

    def match(self, node, graph):
        return match_gelu(node, graph)

    def rewrite(self, graph, match) -> None:
        emit_gelu(graph, match)

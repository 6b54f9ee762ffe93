"""Recognise LayerNormalization from its decomposed form and emit the native op (opset >= 17)."""
from __future__ import annotations

import numpy as np

from .base import (Rule, const_is, const_value, detach, only_consumer, other_input, producer, register_rule,
                   replace_tensor, scalar_value)


def _reduce_axes(node):
    """Axes of a ReduceMean (attribute before opset 18, second input from 18); None if not constant."""
    if len(node.inputs) > 1:
        v = const_value(node.inputs[1])
        return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _last_axis_mean(node, x) -> bool:
    """``node`` is ReduceMean(x) over the last axis only, keeping dims."""
    if node is None or node.op != "ReduceMean" or node.attrs.get("keepdims", 1) != 1:
        return False
    axes = _reduce_axes(node)
    rank = len(x.shape) if x.shape is not None else None
    return axes is not None and len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _affine(t, graph):
    """Optional ``Mul(gamma)`` then ``Add(beta)`` after the normalisation: (gamma, beta, out, nodes)."""
    gamma = beta = None
    nodes = []
    c = only_consumer(t, graph)
    if c is not None and c.op == "Mul":
        g = other_input(c, t)
        if g is not None and const_value(g) is not None:
            gamma, t, nodes = g, c.outputs[0], [c]
            c = only_consumer(t, graph)
    if c is not None and c.op == "Add":
        b = other_input(c, t)
        if b is not None and const_value(b) is not None:
            beta, t, nodes = b, c.outputs[0], nodes + [c]
    return gamma, beta, t, nodes


@register_rule
class FuseLayerNorm(Rule):
    """Decomposed LayerNorm over the last axis (legacy exporter below opset 17, hand-written norms)
    -> one ``LayerNormalization``.

    Matched subgraph (eps, gamma, beta constants; gamma/beta optional; d used by Pow/Mul and Div only)::

        x --> ReduceMean(-1) --> m
        x, m --> Sub --> d --> Pow(2) | Mul(d, d) --> ReduceMean(-1) --> Add(eps) --> Sqrt --+
                         d ------------------------------------------------------------------+--> Div
          --> Mul(gamma) --> Add(beta) --> y

                  =>   x --> LayerNormalization(axis=-1, epsilon=eps; gamma, beta) --> y

    Needs opset >= 17; on older graphs the rule does nothing. Fires once per norm (2 per block + the
    final norm) on a ViT exported by the legacy exporter at opset 16 and converted to 17.
    """

    name = "fuse_layer_norm"
    min_opset = 17

    def match(self, node, graph):
        if node.op != "ReduceMean" or not node.inputs:
            return None
        x = node.inputs[0]
        if not _last_axis_mean(node, x) or x.shape is None:
            return None
        m = node.outputs[0]
        sub = only_consumer(m, graph)
        if sub is None or sub.op != "Sub" or len(sub.inputs) != 2 or sub.inputs[0] is not x or sub.inputs[1] is not m:
            return None
        d = sub.outputs[0]
        if d in graph.outputs:
            return None
        users = list(d.outputs)
        sq = next((u for u in users if (u.op == "Pow" and u.inputs[0] is d and const_is(u.inputs[1], 2.0))
                   or (u.op == "Mul" and len(u.inputs) == 2 and u.inputs[0] is d and u.inputs[1] is d)), None)
        div = next((u for u in users if u.op == "Div" and u.inputs[0] is d), None)
        if sq is None or div is None or any(u is not sq and u is not div for u in users):
            return None
        var_mean = only_consumer(sq.outputs[0], graph)
        if not _last_axis_mean(var_mean, sq.outputs[0]):
            return None
        add_eps = only_consumer(var_mean.outputs[0], graph)
        eps_t = other_input(add_eps, var_mean.outputs[0]) if add_eps is not None and add_eps.op == "Add" else None
        eps = scalar_value(eps_t) if eps_t is not None else None
        if eps is None or not eps >= 0:
            return None
        sqrt = only_consumer(add_eps.outputs[0], graph)
        if sqrt is None or sqrt.op != "Sqrt" or only_consumer(sqrt.outputs[0], graph) is not div \
                or div.inputs[1] is not sqrt.outputs[0]:
            return None
        gamma, beta, y, affine = _affine(div.outputs[0], graph)
        c = x.shape[-1]
        if not isinstance(c, (int, np.integer)) or c <= 0:
            return None  # the scale/bias vectors need the static channel count
        for p in (gamma, beta):  # per-channel parameters only (what LayerNormalization's scale/bias mean)
            v = const_value(p) if p is not None else None
            if v is not None and (v.size not in (1, c) or v.ndim > 1 and any(s != 1 for s in v.shape[:-1])):
                return None
        return x, y, eps, gamma, beta, [node, sub, sq, var_mean, add_eps, sqrt, div] + affine

    def rewrite(self, graph, match) -> None:
        import onnx_graphsurgeon as gs
        x, y, eps, gamma, beta, nodes = match
        c = int(x.shape[-1])
        dtype = const_value(gamma).dtype if gamma is not None else np.float32
        base = nodes[0].name or y.name
        scale = np.broadcast_to(np.asarray(const_value(gamma)).reshape(-1), (c,)).astype(dtype) \
            if gamma is not None else np.ones((c,), dtype)
        inputs = [x, gs.Constant(f"{base}_ln_scale", np.ascontiguousarray(scale))]
        if beta is not None:
            bias = np.broadcast_to(np.asarray(const_value(beta)).reshape(-1), (c,)).astype(dtype)
            inputs.append(gs.Constant(f"{base}_ln_bias", np.ascontiguousarray(bias)))
        out = gs.Variable(f"{y.name}_ln", dtype=y.dtype, shape=y.shape)
        ln = gs.Node("LayerNormalization", f"{base}_layernorm", attrs={"axis": -1, "epsilon": float(eps)},
                     inputs=inputs, outputs=[out])
        graph.nodes.append(ln)
        if not replace_tensor(graph, y, out):
            detach(ln)
            return
        for n in nodes:
            detach(n)

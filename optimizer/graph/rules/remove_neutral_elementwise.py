"""Drop element-wise ops with a neutral constant: x + 0, x - 0, x * 1, x / 1."""
from __future__ import annotations

import numpy as np

from .base import Rule, const_value, detach, register_rule, replace_tensor

# op -> (neutral value, positions the constant may take)
_NEUTRAL = {"Add": (0.0, (0, 1)), "Sub": (0.0, (1,)), "Mul": (1.0, (0, 1)), "Div": (1.0, (1,))}


def _keeps_shape(x, c) -> bool:
    """Broadcasting ``c`` against ``x`` leaves x's shape (and so the op is the identity on x)."""
    if x.shape is None or c.ndim > len(x.shape):
        return False
    dims = list(x.shape)[len(x.shape) - c.ndim:]
    return all(s == 1 or (isinstance(d, (int, np.integer)) and d == s) for d, s in zip(dims, c.shape))


@register_rule
class RemoveNeutralElementwise(Rule):
    """Add/Sub of an all-zero constant and Mul/Div by an all-ones constant are the identity.

    Matched subgraph (c constant, every element neutral, broadcasting it does not grow x)::

        x --> Add(c = 0) | Sub(c = 0) | Mul(c = 1) | Div(c = 1) --> y     =>     x --> y

    Common in graphs of randomly initialised timm models (zero biases) and after other folds;
    fires 0 times on DeiT with trained weights.
    """

    name = "remove_neutral_elementwise"

    def match(self, node, graph):
        spec = _NEUTRAL.get(node.op)
        if spec is None or len(node.inputs) != 2 or len(node.outputs) != 1:
            return None
        value, positions = spec
        for i in positions:
            c = const_value(node.inputs[i])
            x = node.inputs[1 - i]
            if c is None or const_value(x) is not None or c.dtype.kind not in "fiu":
                continue
            if x.dtype is not None and np.dtype(x.dtype) != c.dtype:
                continue
            if c.size and np.all(c == value) and _keeps_shape(x, c):
                return node, x
        return None

    def rewrite(self, graph, match) -> None:
        node, x = match
        if replace_tensor(graph, node.outputs[0], x):
            detach(node)

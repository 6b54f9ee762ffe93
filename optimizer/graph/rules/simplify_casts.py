"""Remove Casts that change nothing and collapse Cast chains whose first step is exact."""
from __future__ import annotations

import numpy as np

from .base import Rule, bypass, only_consumer, producer, register_rule

# source dtype -> dtypes that hold every one of its values exactly (a cast there and back is the identity)
_EXACT_WIDENING = {
    np.dtype(np.bool_): {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                                np.int64, np.uint64, np.float16, np.float32, np.float64)},
    np.dtype(np.int8): {np.dtype(t) for t in (np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)},
    np.dtype(np.uint8): {np.dtype(t) for t in (np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                                                np.float16, np.float32, np.float64)},
    np.dtype(np.int16): {np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64)},
    np.dtype(np.int32): {np.dtype(t) for t in (np.int64, np.float64)},
    np.dtype(np.float16): {np.dtype(t) for t in (np.float32, np.float64)},
    np.dtype(np.float32): {np.dtype(np.float64)},
}


def _np_dtype(t):
    try:
        return np.dtype(t) if t is not None else None
    except TypeError:  # bfloat16 / float8 have no numpy dtype: never treated as exact
        return None


def _cast_to(node):
    import onnx.helper
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    except (KeyError, TypeError, ValueError):
        return None


@register_rule
class SimplifyCasts(Rule):
    """Casts that change nothing go; a Cast whose input is an exact widening Cast reads the original.

    Matched subgraphs (T(x) = x's element type)::

        x --> Cast(to=T(x)) --> y                        =>   x --> y
        x --> Cast(to=A) --> Cast(to=B) --> y            =>   x --> Cast(to=B) --> y   (T(x) -> A exact)
        x --> Cast(to=A) --> Cast(to=T(x)) --> y         =>   x --> y                  (T(x) -> A exact)

    "Exact" means A holds every value of T(x) (f16 -> f32, f32 -> f64, i32 -> i64, bool -> any, ...):
    f32 -> f16 -> f32 is NOT collapsed (it rounds). Fires 0 times on DeiT exports (their only Casts
    sit in shape arithmetic that constant folding removes).
    """

    name = "simplify_casts"

    def match(self, node, graph):
        if node.op != "Cast" or len(node.inputs) != 1:
            return None
        x, to = node.inputs[0], _cast_to(node)
        if to is None:
            return None
        src = _np_dtype(x.dtype)
        if src is not None and src == to:
            return ("bypass", node)
        first = producer(x)
        if first is None or first.op != "Cast" or only_consumer(x, graph) is not node:
            return None
        orig = first.inputs[0]
        o = _np_dtype(orig.dtype)
        if o is None or _cast_to(first) not in _EXACT_WIDENING.get(o, ()):
            return None
        return ("skip_first", node, first, orig)

    def rewrite(self, graph, match) -> None:
        if match[0] == "bypass":
            bypass(graph, match[1])
            return
        _, node, first, orig = match
        node.inputs[0] = orig
        first.outputs.clear()  # its only consumer now reads orig; cleanup removes it
        if _cast_to(node) == _np_dtype(orig.dtype):
            bypass(graph, node)

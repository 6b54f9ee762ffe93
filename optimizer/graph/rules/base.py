"""Rule framework: a graph pass = one ``Rule`` subclass that matches a subgraph and rewrites it.

Write a rule like this (onnxscript-rewriter / ORT-fusion style)::

    @register_rule
    class MyRule(Rule):
        '''One line of what it does.

        Matched subgraph (ASCII diagram, required)::

            x --> Foo --> Bar --> y      =>      x --> Baz --> y
        '''
        name = "my_rule"

        def match(self, node, graph):       # return None or anything rewrite() needs
            ...
        def rewrite(self, graph, match):    # edit the gs.Graph in place
            ...

``Rule.apply(graph)`` visits every node once (in topological order), calls ``match`` and, on a
hit, ``rewrite``; then it runs ``graph.cleanup().toposort()`` and returns the number of
rewrites. ``apply_rules(graph, rules)`` runs several rules (names, classes or instances) in order
and returns ``{rule name: rewrites}``. Rules edit an ``onnx_graphsurgeon.Graph``; the helpers below
(``producer``, ``only_consumer``, ``const_value``, ``replace_tensor``...) cover what most matchers need.

Each rule is tested three ways (tests/graph/): ONNX Runtime outputs before/after agree, the op
histogram changes as expected, and the rule fires the expected number of times on a real ViT.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Union

from ...errors import VitoptError

_REGISTRY: Dict[str, type] = {}


class Rule:
    """Base class of graph rewrite rules; subclasses set ``name`` and implement match/rewrite."""

    name: str = ""

    def match(self, node, graph) -> Optional[Any]:
        """Return None when ``node`` does not start (or anchor) the pattern, else the match."""
        raise NotImplementedError

    def rewrite(self, graph, match) -> None:
        """Rewrite one match in place (leave dead nodes: ``apply`` cleans up)."""
        raise NotImplementedError

    def apply(self, graph) -> int:
        graph.toposort()
        count = 0
        for node in list(graph.nodes):
            if not node.outputs:  # removed by an earlier rewrite in this pass
                continue
            m = self.match(node, graph)
            if m is not None:
                self.rewrite(graph, m)
                count += 1
        if count:
            graph.cleanup().toposort()
        return count

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register_rule(cls: type) -> type:
    """Class decorator: make a rule available by ``cls.name`` to ``apply_rules`` and the CLI."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)) or not cls.name:
        raise TypeError("register_rule expects a Rule subclass with a non-empty name")
    if not (cls.__doc__ or "").strip():
        raise TypeError(f"rule {cls.name} needs a docstring with an ASCII diagram of the matched subgraph")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"rule name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def list_rules() -> list:
    """Names of the registered rules."""
    from . import _load_builtin_rules
    _load_builtin_rules()
    return sorted(_REGISTRY)


def get_rule(name: str) -> Rule:
    from . import _load_builtin_rules
    _load_builtin_rules()
    if name not in _REGISTRY:
        raise VitoptError(f"unknown graph rule {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def _as_rule(r: Union[str, type, Rule]) -> Rule:
    if isinstance(r, Rule):
        return r
    if isinstance(r, type) and issubclass(r, Rule):
        return r()
    if isinstance(r, str):
        return get_rule(r)
    raise TypeError(f"not a rule: {r!r}")


def apply_rules(graph, rules: Iterable[Union[str, type, Rule]]) -> Dict[str, int]:
    """Apply ``rules`` in order to the ``onnx_graphsurgeon.Graph`` (in place); return rewrites per rule.

    Example: ``apply_rules(gs.import_onnx(proto), ["remove_identity", "merge_attention_scales"])``
    """
    counts: Dict[str, int] = {}
    for r in rules:
        rule = _as_rule(r)
        counts[rule.name] = counts.get(rule.name, 0) + rule.apply(graph)
    return counts


# ---- helpers for matchers -----------------------------------------------------------------------

def producer(tensor):
    """The node producing ``tensor``, or None for graph inputs and constants."""
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def only_consumer(tensor, graph=None):
    """The single node consuming ``tensor``; None if it has several consumers or is a graph output."""
    if len(tensor.outputs) != 1:
        return None
    if graph is not None and tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def const_value(tensor):
    """numpy value of a ``gs.Constant`` (or of a ``Constant`` node's output); None otherwise."""
    import onnx_graphsurgeon as gs
    if isinstance(tensor, gs.Constant):
        return tensor.values
    p = producer(tensor)
    if p is not None and p.op == "Constant" and "value" in p.attrs:
        v = p.attrs["value"]
        return v.values if isinstance(v, gs.Constant) else None
    return None


def scalar_value(tensor) -> Optional[float]:
    """The float of a one-element constant, else None."""
    v = const_value(tensor)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(-1)[0])


def replace_tensor(graph, old, new) -> bool:
    """Make every consumer of ``old`` read ``new`` instead; keeps graph-output names stable.

    Returns False (and changes nothing) when ``old`` is a graph output that ``new`` cannot stand in
    for (``new`` is a graph input, a constant, or already an output).
    """
    import onnx_graphsurgeon as gs
    if old in graph.outputs:
        if isinstance(new, gs.Constant) or new in graph.inputs or new in graph.outputs or producer(new) is None:
            return False
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
    if old in graph.outputs:
        idx = graph.outputs.index(old)
        name = old.name
        old.name = name + "__replaced"
        new.name = name
        new.dtype = old.dtype if old.dtype is not None else new.dtype
        new.shape = old.shape if old.shape is not None else new.shape
        graph.outputs[idx] = new
    return True


def detach(node) -> None:
    """Disconnect ``node`` so the next ``graph.cleanup()`` removes it."""
    node.inputs.clear()
    node.outputs.clear()

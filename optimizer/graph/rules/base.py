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

Two kinds besides match/rewrite rules: a *graph pass* overrides ``apply`` itself (constant
folding), and a ``CheckRule`` never edits the graph; it returns the violations it finds
(``check``), which ``cleanup_graph`` reports as named failures. A rule whose replacement ops need
a newer opset sets ``min_opset``; ``run_rule`` skips it (0 rewrites) on older graphs.
"""
from __future__ import annotations

import inspect
import textwrap
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from ...errors import VitoptError

_REGISTRY: Dict[str, type] = {}


class Rule:
    """Base class of graph rewrite rules; subclasses set ``name`` and implement match/rewrite."""

    name: str = ""
    kind: str = "rewrite"     # "check" rules never edit the graph (see CheckRule)
    min_opset: int = 1        # the default-domain opset the replacement ops need; below it the rule skips

    @classmethod
    def summary(cls) -> str:
        """The docstring's first paragraph, on one line."""
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split())

    @classmethod
    def sketch(cls) -> str:
        """The ASCII diagram of the matched subgraph: the docstring's indented block(s), blank lines kept."""
        lines = (cls.__doc__ or "").expandtabs().splitlines()[1:]
        if not lines:
            return ""
        # prose sits at the class body's indentation (that of the closing quotes); diagrams deeper
        body = [ln for ln in lines if ln.strip()]
        last = lines[-1]
        base = len(last) if not last.strip() else min((len(ln) - len(ln.lstrip()) for ln in body), default=0)
        out, block = [], False
        for ln in lines:
            if ln.strip() and len(ln) - len(ln.lstrip()) > base:
                block = True
                out.append(ln)
            elif not ln.strip():
                if block:
                    out.append("")
            else:
                if block and out and out[-1]:
                    out.append("")
                block = False
        return textwrap.dedent("\n".join(out)).strip("\n")

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


class CheckRule(Rule):
    """Base class of rules that only inspect the graph; ``check`` says what it looked at and what is wrong."""

    kind = "check"

    def check(self, graph) -> Tuple[int, List[str]]:
        """``(nodes checked, violations)``; each violation is one line naming the node and the problem."""
        raise NotImplementedError

    def apply(self, graph) -> int:
        return self.check(graph)[0]


def graph_opset(graph) -> int:
    """The default-domain opset of a gs.Graph (what decides which native ops a rule may emit)."""
    return int(getattr(graph, "opset", 0) or 0)


def register_rule(cls: type) -> type:
    """Class decorator: make a rule available by ``cls.name`` to ``apply_rules`` and the CLI."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)) or not cls.name:
        raise TypeError("register_rule expects a Rule subclass with a non-empty name")
    if not (cls.__doc__ or "").strip() or not cls.sketch():
        raise TypeError(f"rule {cls.name} needs a docstring with an ASCII diagram of the matched subgraph "
                        "(an indented block after the summary)")
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
    """A new instance of the registered rule ``name``; VitoptError naming the known rules otherwise."""
    from . import _load_builtin_rules
    _load_builtin_rules()
    if name not in _REGISTRY:
        raise VitoptError(f"unknown graph rule {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def as_rule(r: Union[str, type, Rule]) -> Rule:
    """A rule instance from a name, a Rule class or an instance."""
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
        rule = as_rule(r)
        counts[rule.name] = counts.get(rule.name, 0) + run_rule(rule, graph)
    return counts


def run_rule(rule: Rule, graph) -> int:
    """``rule.apply(graph)``, or 0 without touching the graph when its opset is below ``rule.min_opset``."""
    if rule.min_opset > 1 and graph_opset(graph) < rule.min_opset:
        return 0
    return rule.apply(graph)


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


def const_is(tensor, value: float, rtol: float = 1e-6) -> bool:
    """True when ``tensor`` is a one-element constant equal to ``value`` (exporters round to float32)."""
    v = scalar_value(tensor) if tensor is not None else None
    return v is not None and abs(v - value) <= rtol * max(abs(value), 1e-30)


def other_input(node, tensor):
    """The other input of a two-input node given one of them (None if ``tensor`` is not an input)."""
    ins = list(node.inputs)
    if len(ins) != 2:
        return None
    if ins[0] is tensor:
        return ins[1]
    if ins[1] is tensor:
        return ins[0]
    return None


def bypass(graph, node) -> bool:
    """Make the consumers of ``node``'s single output read its first input; detach it if that worked."""
    if replace_tensor(graph, node.outputs[0], node.inputs[0]):
        detach(node)
        return True
    return False


def detach(node) -> None:
    """Disconnect ``node`` so the next ``graph.cleanup()`` removes it."""
    node.inputs.clear()
    node.outputs.clear()

"""Check (no rewrite): token gathers and gate TopK/Gather paths keep the graph's dynamic batch."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .base import CheckRule, const_value, register_rule

# ops that only move data around between a gate's TopK and the MatMul that uses the gathered weights
_PASS_THROUGH = {"Gather", "Reshape", "Transpose", "Concat", "Cast", "Unsqueeze", "Squeeze", "Flatten", "Add",
                 "Slice", "Identity"}
_CONSUMERS = {"MatMul", "Gemm", "Conv", "Einsum"}


def _fixed(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


def _dynamic_batch(graph) -> bool:
    return any(t.shape is not None and len(t.shape) > 0 and not _fixed(t.shape[0]) for t in graph.inputs)


def _activation(t) -> bool:
    """A computed tensor of rank >= 2 (not a weight: constants are folded before the check)."""
    return const_value(t) is None and t.shape is not None and len(t.shape) >= 2


def _token_gathers(graph):
    for n in graph.nodes:
        if n.op in ("Gather", "GatherElements", "GatherND") and n.inputs and _activation(n.inputs[0]) \
                and (n.op != "Gather" or n.attrs.get("axis", 0) not in (0, -len(n.inputs[0].shape))):
            yield n


def _gate_users(graph, topk):
    """The MatMul/Gemm/Conv nodes that consume what a TopK's indices select (through data movement)."""
    seen, out, todo = set(), [], list(topk.outputs)
    while todo:
        t = todo.pop()
        for c in t.outputs:
            if id(c) in seen:
                continue
            seen.add(id(c))
            if c.op in _CONSUMERS:
                out.append(c)
            elif c.op in _PASS_THROUGH:
                todo.extend(c.outputs)
    return out


@register_rule
class CheckDynamicBatch(CheckRule):
    """Token gathers and gate TopK/Gather paths keep the graph input's dynamic batch (a check: it
    never edits the graph; a violation is reported as a named failure).

    Checked nodes (after shape inference; the graph input has a symbolic batch dim)::

        x[B, N, C] --> Gather(axis=1, kept tokens) --> [B, N', C]       dim 0 must stay symbolic
        scores --> TopK --> indices --> Gather(W) --> ... --> MatMul(x[B, ...], W') --> [B, ...]
                                                                        dim 0 must stay symbolic

    A fixed dim 0 there means the exporter baked the example batch into the graph (e.g. a traced
    ``x.shape[0]`` turned into a constant Reshape): the model would run at that batch only. Counts
    the nodes checked: 2 token gathers in a slim model whose first two blocks drop tokens, one
    MatMul per gated weight in a gates model.
    """

    name = "check_dynamic_batch"

    def check(self, graph) -> Tuple[int, List[str]]:
        if not _dynamic_batch(graph):
            return 0, []
        nodes = list(_token_gathers(graph))
        for topk in (n for n in graph.nodes if n.op == "TopK"):
            nodes += [u for u in _gate_users(graph, topk) if u not in nodes]
        problems = []
        for n in nodes:
            for out in n.outputs[:1]:
                if out.shape is not None and len(out.shape) >= 2 and _fixed(out.shape[0]):
                    problems.append(f"{n.op} {n.name or '?'} -> {out.name}: batch dim fixed at {out.shape[0]} "
                                    f"(shape {list(out.shape)}) while the graph input's batch is dynamic")
        return len(nodes), problems

"""Graph clean-up with onnx-graphsurgeon: shape inference, constant folding, rules, cleanup, toposort."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Optional

from ..errors import VitoptError


def op_histogram(model_proto) -> Dict[str, int]:
    """``{op_type: count}`` over the main graph (most frequent first; custom domains as ``domain::Op``)."""
    c = Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
                for n in model_proto.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def format_histograms(before: Dict[str, int], after: Dict[str, int]) -> str:
    """Side-by-side table of two op histograms with the change per op."""
    ops = sorted(set(before) | set(after), key=lambda o: (-max(before.get(o, 0), after.get(o, 0)), o))
    w = max([len(o) for o in ops] + [7])
    lines = [f"{'op':<{w}}  {'before':>6}  {'after':>6}  {'change':>6}"]
    for o in ops:
        b, a = before.get(o, 0), after.get(o, 0)
        lines.append(f"{o:<{w}}  {b:>6}  {a:>6}  {a - b:>+6}" if a != b else f"{o:<{w}}  {b:>6}  {a:>6}")
    lines.append(f"{'total':<{w}}  {sum(before.values()):>6}  {sum(after.values()):>6}  "
                 f"{sum(after.values()) - sum(before.values()):>+6}")
    return "\n".join(lines)


@dataclass
class CleanupReport:
    ops_before: Dict[str, int]
    ops_after: Dict[str, int]
    rules: Dict[str, int] = field(default_factory=dict)   # rewrites per rule
    seconds: float = 0.0

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(nodes_before=self.nodes_before, nodes_after=self.nodes_after)
        return d

    def __str__(self) -> str:
        rules = ", ".join(f"{k} x{v}" for k, v in self.rules.items()) or "none"
        return (f"graph cleanup: {self.nodes_before} -> {self.nodes_after} nodes in {self.seconds:.2f} s; "
                f"rules: {rules}\n" + format_histograms(self.ops_before, self.ops_after))


def infer_shapes(model_proto):
    """ONNX shape inference with data propagation (shape arithmetic on static dims becomes known)."""
    import onnx
    try:
        return onnx.shape_inference.infer_shapes(model_proto, data_prop=True)
    except Exception as e:  # inference errors come as several onnx exception types
        raise VitoptError(f"ONNX shape inference failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


def _copy_model_fields(src, dst) -> None:
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    dst.producer_name, dst.producer_version = src.producer_name, src.producer_version
    dst.doc_string = src.doc_string


def graph_from_proto(model_proto):
    import onnx_graphsurgeon as gs
    return gs.import_onnx(model_proto)


def proto_from_graph(graph, template=None):
    """gs.Graph -> ModelProto, keeping the template's metadata_props/producer."""
    import onnx_graphsurgeon as gs
    out = gs.export_onnx(graph)
    if template is not None:
        _copy_model_fields(template, out)
        out.ir_version = template.ir_version
    return out


def fold_constants(graph) -> None:
    """Constant folding incl. shape folding (ONNX Runtime evaluates the constant subgraphs)."""
    import contextlib
    import io
    import onnxruntime as ort
    ort.set_default_logger_severity(3)  # ORT's optimizer warnings about the folded subgraphs are noise
    # gs logs per-node folding failures at WARNING; they are harmless here (the node just stays)
    with contextlib.redirect_stdout(io.StringIO()):
        graph.fold_constants(fold_shapes=True, partitioning="basic", error_ok=True)
    graph.cleanup().toposort()


def cleanup_graph(model_proto, rules: Optional[Iterable] = None, fold: bool = True):
    """Clean an exported graph: shape inference, constant folding, rules, cleanup, toposort.

    Args:
        model_proto: an ``onnx.ModelProto`` (not modified).
        rules: rule names/classes/instances to apply (default ``rules.default_rules()``); ``()`` for none.
        fold: fold constants (incl. static shape arithmetic) before and after the rules.

    Returns:
        ``(new_model_proto, CleanupReport)``; the report has op histograms before/after and
        rewrites per rule; ``print(report)`` shows them as a table.

    Example: ``proto, rep = cleanup_graph(onnx.load("m.onnx")); print(rep)``
    """
    from .rules import apply_rules, default_rules
    t0 = time.perf_counter()
    before = op_histogram(model_proto)
    inferred = infer_shapes(model_proto)
    graph = graph_from_proto(inferred)
    counts = apply_rules(graph, ["remove_identity"])
    if fold:
        fold_constants(graph)
    counts_more = apply_rules(graph, default_rules() if rules is None else rules)
    for k, v in counts_more.items():
        counts[k] = counts.get(k, 0) + v
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    if fold:
        fold_constants(graph)
    out = proto_from_graph(graph, model_proto)
    out = infer_shapes(out)
    _copy_model_fields(model_proto, out)
    report = CleanupReport(before, op_histogram(out), {k: v for k, v in counts.items()},
                           round(time.perf_counter() - t0, 3))
    return out, report

"""Graph clean-up with onnx-graphsurgeon: shape inference, constant folding, rules, cleanup, toposort."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional

from ..fileio import temp_dir
from ..errors import VitoptError
from ..tolerances import tolerance_for


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


# The rule safety net: ONNX Runtime outputs before vs after each rule that fired, on seeded random
# inputs, must satisfy |a - b| <= atol + rtol * |b| everywhere: the shared table's fp32 row, the one
# for lossless steps (a rule may reassociate arithmetic, so the tighter same-kernel row is too strict)
RULE_PARITY_ATOL = tolerance_for("fp32").atol
RULE_PARITY_RTOL = tolerance_for("fp32").rtol
# batch of the random inputs: not the exporter's example batch (2), so a rule that bakes the traced
# batch into the graph fails the check instead of passing by coincidence
RULE_PARITY_BATCH = 3


@dataclass
class CleanupReport:
    ops_before: Dict[str, int]
    ops_after: Dict[str, int]
    rules: Dict[str, int] = field(default_factory=dict)   # rewrites per rule (check rules: nodes checked)
    seconds: float = 0.0
    rolled_back: Dict[str, str] = field(default_factory=dict)     # rule -> why its result was discarded
    failures: Dict[str, List[str]] = field(default_factory=dict)  # check rule -> violations

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    @property
    def ok(self) -> bool:
        """No check rule found a violation."""
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(nodes_before=self.nodes_before, nodes_after=self.nodes_after)
        return d

    def __str__(self) -> str:
        rules = ", ".join(f"{k} x{v}" for k, v in self.rules.items() if v) or "none"
        lines = [f"graph cleanup: {self.nodes_before} -> {self.nodes_after} nodes in {self.seconds:.2f} s; "
                 f"rules: {rules}"]
        lines += [f"rolled back {k}: {why}" for k, why in self.rolled_back.items()]
        lines += [f"check {k} FAILED: {msg}" for k, msgs in self.failures.items() for msg in msgs]
        return "\n".join(lines) + "\n" + format_histograms(self.ops_before, self.ops_after)


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


class RuleParity:
    """ONNX Runtime outputs of a graph on seeded random inputs, to compare each rule's result against.

    Raises VitoptError when ONNX Runtime cannot run the reference graph (then no rule can be checked).
    """

    def __init__(self, model_proto, seed: int = 0):
        import numpy as np
        from onnx import helper
        init = {i.name for i in model_proto.graph.initializer}
        rng = np.random.default_rng(seed)
        self.feeds = {}
        for vi in model_proto.graph.input:
            if vi.name in init:
                continue
            tt = vi.type.tensor_type
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            shape = [d.dim_value if d.dim_value > 0 else RULE_PARITY_BATCH for d in tt.shape.dim]
            self.feeds[vi.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                                   else np.zeros(shape, dtype))
        try:
            self.reference = self.run(model_proto)
        except VitoptError as e:
            raise VitoptError(f"the rule safety net cannot run the input graph on random inputs of batch "
                              f"{RULE_PARITY_BATCH}: {e} (turn the net off with parity=False / --no-parity-check; "
                              "a graph that only runs at its export batch fails check_dynamic_batch)") from None

    def run(self, model_proto) -> dict:
        import onnx
        from ..export import ort_session
        with temp_dir("vitopt-rule-parity-") as tmp:
            path = f"{tmp}/m.onnx"
            onnx.save_model(model_proto, path)
            sess = ort_session(path, threads=1)
            names = [o.name for o in sess.get_outputs()]
            try:
                return dict(zip(names, sess.run(None, self.feeds)))
            except Exception as e:  # ORT raises its own exception types for kernels that fail
                msg = str(e).strip().splitlines()
                raise VitoptError(f"ONNX Runtime failed to run it: {msg[0][-300:] if msg else type(e).__name__}") \
                    from None

    def failure(self, model_proto) -> Optional[str]:
        """None when ``model_proto`` reproduces the reference outputs, else one line saying how it differs."""
        from ..runners.compare import compare_outputs
        try:
            out = self.run(model_proto)
        except VitoptError as e:
            return str(e)
        if sorted(out) != sorted(self.reference):
            return f"outputs {sorted(out)} instead of {sorted(self.reference)}"
        try:
            cmp = compare_outputs(self.reference, out, atol=RULE_PARITY_ATOL, rtol=RULE_PARITY_RTOL)
        except VitoptError as e:  # shapes differ
            return str(e)
        bad = {k: v for k, v in cmp.items() if not v["passed"]}
        if not bad:
            return None
        k, v = next(iter(bad.items()))
        return (f"ONNX Runtime output {k} moved by max |diff| {v['max_abs']:.3g} "
                f"(atol {RULE_PARITY_ATOL:g}, rtol {RULE_PARITY_RTOL:g})")


def cleanup_graph(model_proto, rules: Optional[Iterable] = None, fold: bool = True, parity: bool = True):
    """Clean an exported graph: shape inference, constant folding, rules, cleanup, toposort, checks.

    Args:
        model_proto: an ``onnx.ModelProto`` (not modified).
        rules: rule names/classes/instances to apply (default ``rules.default_rules()``); ``()`` for none.
            Check rules (e.g. ``check_dynamic_batch``) run on the final, shape-inferred graph.
        fold: run ``remove_identity`` and ``fold_constants`` before the rules and fold again after them.
        parity: the safety net: after each rule that fired, ONNX Runtime outputs on seeded random
            inputs must match the input graph's within ``RULE_PARITY_ATOL``/``RULE_PARITY_RTOL``;
            a rule that fails (or raises) is rolled back and named in ``report.rolled_back``.

    Returns:
        ``(new_model_proto, CleanupReport)``; the report has op histograms before/after,
        rewrites per rule, rolled-back rules and check failures; ``print(report)`` shows them.
        Raises VitoptError for an unknown rule name, a graph shape inference rejects, or (with
        ``parity``) a graph ONNX Runtime cannot run.

    Example: ``proto, rep = cleanup_graph(onnx.load("m.onnx")); print(rep)``
    """
    from .rules import as_rule, default_rules, run_rule
    t0 = time.perf_counter()
    requested = [as_rule(r) for r in (default_rules() if rules is None else rules)]  # unknown names fail first
    before = op_histogram(model_proto)
    inferred = infer_shapes(model_proto)
    steps = [r for r in requested if r.kind != "check"]
    if fold:
        steps = [as_rule("remove_identity"), as_rule("fold_constants")] + steps + [as_rule("fold_constants")]
    net = RuleParity(inferred) if parity else None
    graph, good = graph_from_proto(inferred), inferred
    counts: Dict[str, int] = {}
    rolled_back: Dict[str, str] = {}
    for rule in steps:
        counts.setdefault(rule.name, 0)
        if rule.name in rolled_back:
            continue
        try:
            n = run_rule(rule, graph)
            why = None
        except Exception as e:  # a rule bug: the safety net restores the last good graph
            n, why = 1, f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if n and net is not None and why is None:
            candidate = proto_from_graph(graph, model_proto)
            why = net.failure(candidate)
            if why is None:
                good = candidate
        if why is not None:
            if net is None:
                raise VitoptError(f"graph rule {rule.name} failed: {why}")
            rolled_back[rule.name] = why
            graph = graph_from_proto(good)
            continue
        counts[rule.name] += n
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = proto_from_graph(graph, model_proto)
    out = infer_shapes(out)
    _copy_model_fields(model_proto, out)
    failures: Dict[str, List[str]] = {}
    checks = [r for r in requested if r.kind == "check"]
    if checks:
        final = graph_from_proto(out)
        for rule in checks:
            counts[rule.name], problems = rule.check(final)
            if problems:
                failures[rule.name] = problems
    report = CleanupReport(before, op_histogram(out), counts, round(time.perf_counter() - t0, 3),
                           rolled_back, failures)
    return out, report

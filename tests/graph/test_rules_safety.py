"""The rule safety net (rollback on an ORT mismatch), check_dynamic_batch, and the default rules' coverage
on real exported ViTs from both exporters."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from optimizer.errors import VitoptError
from optimizer.graph import cleanup_graph, default_rules, get_rule, list_rules, op_histogram
from optimizer.graph.cleanup import RULE_PARITY_ATOL
from optimizer.graph.rules import Rule
from tests.export.models import TOLERANCES, run_ort
from tests.graph.graphs import const, exported_tiny, f32, make_model


class ReluToAbs(Rule):
    """Deliberately wrong: Relu -> Abs (test rule, never registered).

        x --> Relu --> y   =>   x --> Abs --> y
    """
    name = "test_broken_relu_to_abs"

    def match(self, node, graph):
        return node if node.op == "Relu" else None

    def rewrite(self, graph, node):
        node.op = "Abs"


class Raises(ReluToAbs):
    """A rule with a bug: raises in the middle of a rewrite.

        x --> Relu --> y   =>   (exception)
    """
    name = "test_raising_rule"

    def rewrite(self, graph, node):
        node.op = "Abs"
        raise RuntimeError("bug in the rule")


def _relu_model():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    return make_model(nodes, [f32("x", ["batch", 8])], [f32("y", ["batch", 8])])


def test_a_rule_that_changes_outputs_is_rolled_back_and_named():
    m = _relu_model()
    new, rep = cleanup_graph(m, rules=["remove_identity", ReluToAbs(), "simplify_casts"])
    assert list(rep.rolled_back) == ["test_broken_relu_to_abs"]
    assert "max |diff|" in rep.rolled_back["test_broken_relu_to_abs"]
    assert rep.rules["test_broken_relu_to_abs"] == 0 and rep.rules["remove_identity"] == 1
    assert op_histogram(new) == {"Relu": 1}   # the good rule's work stays, the broken one's is undone
    assert "rolled back test_broken_relu_to_abs" in str(rep)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(new, x), run_ort(m, x))
    # without the net the broken rewrite ships: the net is what caught it
    unchecked, rep2 = cleanup_graph(m, rules=[ReluToAbs()], parity=False)
    assert op_histogram(unchecked) == {"Abs": 1} and not rep2.rolled_back


def test_a_rule_that_raises_is_rolled_back_or_reported():
    m = _relu_model()
    new, rep = cleanup_graph(m, rules=[Raises()], fold=False)
    assert rep.rolled_back == {"test_raising_rule": "raised RuntimeError: bug in the rule"}
    assert op_histogram(new) == {"Identity": 1, "Relu": 1}
    with pytest.raises(VitoptError, match="graph rule test_raising_rule failed: raised RuntimeError"):
        cleanup_graph(m, rules=[Raises()], fold=False, parity=False)


def test_safety_net_tolerance_is_defined_once_and_is_the_briefed_value():
    assert RULE_PARITY_ATOL == 1e-4


def test_every_rule_lists_a_summary_and_a_sketch():
    for name in list_rules():
        rule = get_rule(name)
        assert rule.summary() and "\n" not in rule.summary()
        assert "-->" in rule.sketch() or "->" in rule.sketch(), name


def test_fold_constants_is_a_selectable_rule():
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    m = make_model(nodes, [f32("x", [2, 4])], [f32("y", [2, 3])], [const("w", w)])
    new, rep = cleanup_graph(m, rules=["fold_constants"], fold=False)
    assert rep.rules == {"fold_constants": 1} and op_histogram(new) == {"MatMul": 1}
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(m, x), atol=1e-6)


# ---- check_dynamic_batch ----------------------------------------------------------------------

def _token_gather_model(first_dim):
    """x[B, 6, 4] -> Reshape([first_dim, 6, 4]) -> Gather(axis=1, 3 kept tokens)."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Gather", ["r", "idx"], ["y"], axis=1)]
    return make_model(nodes, [f32("x", ["batch", 6, 4])], [f32("y", ["batch", 3, 4])],
                      [const("s", np.array([first_dim, 6, 4], np.int64)), const("idx", np.array([0, 2, 5], np.int64))])


def _gate_model(first_dim):
    """scores = mean(x over batch, tokens) -> TopK(3) -> Gather(W, axis=1) -> MatMul(Reshape(x), W')."""
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["p"], keepdims=0),
             helper.make_node("TopK", ["p", "k"], ["v", "i"]),
             helper.make_node("Gather", ["w", "i"], ["wk"], axis=1),
             helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("MatMul", ["r", "wk"], ["y"])]
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    return make_model(nodes, [f32("x", ["batch", 6, 4])], [f32("y", ["batch", 6, 3])],
                      [const("axes", np.array([0, 1], np.int64)), const("k", np.array([3], np.int64)), const("w", w),
                       const("s", np.array([first_dim, 6, 4], np.int64))])


@pytest.mark.parametrize("build", [_token_gather_model, _gate_model], ids=["token-gather", "gate-topk"])
def test_check_dynamic_batch_names_a_baked_batch(build):
    new, rep = cleanup_graph(build(-1), rules=["check_dynamic_batch"], fold=False)
    assert rep.rules["check_dynamic_batch"] == 1 and rep.ok
    with pytest.raises(VitoptError, match="cannot run the input graph on random inputs of batch 3"):
        cleanup_graph(build(2), rules=["check_dynamic_batch"], fold=False)  # the net needs another batch
    _, rep = cleanup_graph(build(2), rules=["check_dynamic_batch"], fold=False, parity=False)
    assert rep.rules["check_dynamic_batch"] == 1 and not rep.ok
    (msg,) = rep.failures["check_dynamic_batch"]
    assert "batch dim fixed at 2" in msg and "dynamic" in msg
    assert "check check_dynamic_batch FAILED" in str(rep)


def test_check_dynamic_batch_on_a_gated_export(tmp_path):
    import onnx
    from optimizer.methods.gates.export import onnx_from_gated
    from optimizer.methods.gates.modules import gated_modules
    from tests.gates.test_gates import _gated
    _, model = _gated(group_size=16)
    for m in gated_modules(model):
        m.mean_active = m.dynamic_units / 2
    onnx_from_gated(model, tmp_path / "g.onnx")
    proto = onnx.load(str(tmp_path / "g.onnx"))
    n_topk = op_histogram(proto)["TopK"]
    _, rep = cleanup_graph(proto, rules=["check_dynamic_batch"])
    assert rep.ok, rep.failures
    assert rep.rules["check_dynamic_batch"] >= n_topk + 1  # every gate's MatMul(s) plus the class-token gather


# ---- coverage of the default rules on real exports -----------------------------------------------

# every default rule's count (absent = 0) on the 3-block tiny ViT with per-block widths and token gathers (tests.export.models.pruned_tiny_vit)
EXPECTED = {
    "dynamo": {"reshape_transpose_to_transpose": 3, "merge_attention_scales": 3, "check_dynamic_batch": 3},
    "torchscript": {"static_reshape_shapes": 7, "simplify_reshapes": 1, "merge_attention_scales": 3,
                    "check_dynamic_batch": 3},
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_default_rules_coverage_on_pruned_vit(tmp_path, dynamo):
    from tests.export.models import pruned_tiny_vit
    _, proto = exported_tiny(tmp_path, dynamo=dynamo, model=pruned_tiny_vit())
    new, rep = cleanup_graph(proto)
    fired = {k: v for k, v in rep.rules.items() if v and k != "fold_constants"}
    assert fired == EXPECTED["dynamo" if dynamo else "torchscript"]  # every other default rule: 0
    assert set(rep.rules) == set(default_rules()) | {"fold_constants"}
    assert rep.rules["fold_constants"] > 0 and not rep.rolled_back and rep.ok
    x = np.random.default_rng(5).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=TOLERANCES["lossless_pass_atol"])

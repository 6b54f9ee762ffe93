"""Each rule three ways: ORT outputs before/after agree, op counts change as expected, coverage on a ViT."""
from __future__ import annotations

import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.graph import apply_rules, cleanup_graph, get_rule, list_rules, op_histogram, register_rule
from optimizer.graph.cleanup import graph_from_proto, infer_shapes, proto_from_graph
from optimizer.graph.rules import Rule
from tests.export.models import TOLERANCES, run_ort
from tests.graph.graphs import const, exported_tiny, f32, make_model

ATOL = TOLERANCES["lossless_pass_atol"]


def _apply(proto, *rules):
    g = graph_from_proto(infer_shapes(proto))
    counts = apply_rules(g, rules)
    return proto_from_graph(g, proto), counts


# ---- remove_identity ------------------------------------------------------------------------

def test_remove_identity_rewires_consumers_and_keeps_output_name():
    from onnx import helper
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Identity", ["b"], ["y"]), helper.make_node("Identity", ["x"], ["z"])]
    m = make_model(nodes, [f32("x", [2, 3])], [f32("y", [2, 3]), f32("z", [2, 3])])
    new, counts = _apply(m, "remove_identity")
    hist = op_histogram(new)
    # x->z stays: a graph input feeding a graph output directly needs its Identity
    assert counts == {"remove_identity": 2}
    assert hist == {"Relu": 1, "Identity": 1}
    assert [o.name for o in new.graph.output] == ["y", "z"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(m, x), atol=0)


def test_remove_identity_coverage_on_torchscript_export(tmp_path):
    model, proto = exported_tiny(tmp_path, dynamo=False, depth=2)
    n_identity = op_histogram(proto).get("Identity", 0)
    assert n_identity > 0  # the legacy exporter aliases shared weights through Identity
    new, counts = _apply(proto, "remove_identity")
    assert counts["remove_identity"] == n_identity
    assert "Identity" not in op_histogram(new)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=ATOL)


# ---- reshape_transpose_to_transpose ---------------------------------------------------------

def _rtr_model(final_shape):
    from onnx import helper
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["b", "s2"], ["y"])]
    return make_model(nodes, [f32("x", [2, 4, 17, 16])], [f32("y", list(final_shape))],
                      [const("s1", np.array([-1, 17, 16], np.int64)), const("s2", np.array(final_shape, np.int64))])


def test_reshape_transpose_matches_last_two_swap():
    m = _rtr_model([2, 4, 16, 17])
    new, counts = _apply(m, "reshape_transpose_to_transpose")
    assert counts["reshape_transpose_to_transpose"] == 1
    assert op_histogram(new) == {"Transpose": 1}
    perm = [a for a in new.graph.node[0].attribute if a.name == "perm"][0].ints
    assert list(perm) == [0, 1, 3, 2]
    x = np.random.default_rng(0).standard_normal((2, 4, 17, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(new, x), run_ort(m, x))


def test_reshape_transpose_ignores_non_equivalent_unflatten():
    m = _rtr_model([2, 4, 17, 16])  # transposed data viewed as the original shape: not a transpose
    new, counts = _apply(m, "reshape_transpose_to_transpose")
    assert counts["reshape_transpose_to_transpose"] == 0
    assert op_histogram(new) == {"Reshape": 2, "Transpose": 1}


@pytest.mark.parametrize("pruned", [False, True], ids=["vit", "pruned"])
def test_reshape_transpose_coverage_on_dynamo_vit(tmp_path, pruned):
    from tests.export.models import pruned_tiny_vit
    model, proto = exported_tiny(tmp_path, dynamo=True, depth=3, model=pruned_tiny_vit() if pruned else None)
    base, _ = cleanup_graph(proto, rules=())
    new, rep = cleanup_graph(proto, rules=["reshape_transpose_to_transpose"])
    assert rep.rules["reshape_transpose_to_transpose"] == 3  # one per attention block
    hb, ha = op_histogram(base), op_histogram(new)
    assert ha["Reshape"] == hb["Reshape"] - 2 * 3
    assert ha["Transpose"] == hb["Transpose"]
    assert ha.get("Shape", 0) < hb.get("Shape", 0)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=ATOL)


def test_reshape_transpose_never_fires_on_torchscript_export(tmp_path):
    _, proto = exported_tiny(tmp_path, dynamo=False, depth=2)
    _, rep = cleanup_graph(proto, rules=["reshape_transpose_to_transpose"])
    assert rep.rules["reshape_transpose_to_transpose"] == 0


# ---- merge_attention_scales -----------------------------------------------------------------

def _scales_model(c2, share=False):
    from onnx import helper
    nodes = [helper.make_node("Mul", ["q", "c1"], ["qs"]), helper.make_node("Mul", ["kt", "c2"], ["ks"]),
             helper.make_node("MatMul", ["qs", "ks"], ["y"])]
    outputs = [f32("y", [2, 5, 5])]
    if share:
        nodes.append(helper.make_node("Relu", ["ks"], ["r"]))
        outputs.append(f32("r", [2, 3, 5]))
    return make_model(nodes, [f32("q", [2, 5, 3]), f32("kt", [2, 3, 5])], outputs,
                      [const("c1", np.array([0.5], np.float32)), const("c2", np.asarray(c2, np.float32))])


def test_merge_attention_scales_folds_into_one_mul():
    m = _scales_model([0.25])
    new, counts = _apply(m, "merge_attention_scales")
    assert counts["merge_attention_scales"] == 1
    assert op_histogram(new) == {"Mul": 1, "MatMul": 1}
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((2, 5, 3)).astype(np.float32),
             "kt": rng.standard_normal((2, 3, 5)).astype(np.float32)}
    import onnxruntime as ort
    a = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c2, share", [([0.25, 0.5, 1.0, 2.0, 4.0], False), ([0.25], True)],
                         ids=["per-channel-scale", "scaled-k-used-twice"])
def test_merge_attention_scales_leaves_non_matching_graphs(c2, share):
    m = _scales_model(c2, share)
    new, counts = _apply(m, "merge_attention_scales")
    assert counts["merge_attention_scales"] == 0
    assert op_histogram(new)["Mul"] == 2


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_merge_attention_scales_coverage_on_vit(tmp_path, dynamo):
    _, proto = exported_tiny(tmp_path, dynamo=dynamo, depth=3)
    base, _ = cleanup_graph(proto, rules=())
    new, rep = cleanup_graph(proto, rules=["merge_attention_scales"])
    assert rep.rules["merge_attention_scales"] == 3
    assert op_histogram(new)["Mul"] == op_histogram(base)["Mul"] - 3
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=ATOL)


# ---- framework ------------------------------------------------------------------------------

def test_rule_framework_registry_and_custom_rule():
    from optimizer.graph import DEFAULT_RULES, default_rules
    assert {"remove_identity", "reshape_transpose_to_transpose", "merge_attention_scales"} <= set(list_rules())
    assert default_rules()[:len(DEFAULT_RULES)] == DEFAULT_RULES
    with pytest.raises(VitoptError, match="unknown graph rule 'nope'"):
        get_rule("nope")
    with pytest.raises(TypeError, match="docstring"):
        @register_rule
        class NoDoc(Rule):
            name = "test_no_doc"

    @register_rule
    class ReluToAbs(Rule):
        """Replace Relu by Abs (test rule).

            x --> Relu --> y    =>    x --> Abs --> y
        """
        name = "test_relu_to_abs"  # registered, but not a default rule: cleanup_graph never runs it

        def match(self, node, graph):
            return node if node.op == "Relu" else None

        def rewrite(self, graph, node):
            node.op = "Abs"

    from onnx import helper
    m = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                   [f32("x", [3])], [f32("y", [3])])
    new, counts = _apply(m, "test_relu_to_abs", "remove_identity")
    assert counts == {"test_relu_to_abs": 2, "remove_identity": 0}
    assert op_histogram(new) == {"Abs": 2}
    assert "test_relu_to_abs" not in default_rules()

"""Redundant Cast / Reshape / Transpose / Expand / neutral element-wise ops and run-time Reshape targets:
ORT outputs equal before/after, op counts change exactly as expected, non-redundant cases are left alone."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from optimizer.graph import op_histogram
from tests.export.models import run_ort
from tests.graph.graphs import const, f32, make_model
from tests.graph.test_rules import _apply

X = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32) * 100


def _casts(*types, out_type=TensorProto.FLOAT):
    nodes, prev = [], "x"
    for i, t in enumerate(types):
        nodes.append(helper.make_node("Cast", [prev], [f"c{i}"], to=t))
        prev = f"c{i}"
    nodes.append(helper.make_node("Relu", [prev], ["y"]))
    return make_model(nodes, [f32("x", [2, 3, 4])], [helper.make_tensor_value_info("y", out_type, [2, 3, 4])])


@pytest.mark.parametrize("types, out_type, after", [
    ((TensorProto.FLOAT,), TensorProto.FLOAT, {"Relu": 1}),                                  # to its own type
    ((TensorProto.DOUBLE, TensorProto.FLOAT), TensorProto.FLOAT, {"Relu": 1}),               # exact round trip
    ((TensorProto.DOUBLE, TensorProto.FLOAT16), TensorProto.FLOAT16, {"Cast": 1, "Relu": 1}),  # one Cast left
    ((TensorProto.FLOAT16, TensorProto.FLOAT), TensorProto.FLOAT, {"Cast": 2, "Relu": 1}),   # rounds: kept
], ids=["same-type", "f64-round-trip", "f64-then-f16", "f16-round-trip-kept"])
def test_simplify_casts(types, out_type, after):
    m = _casts(*types, out_type=out_type)
    new, counts = _apply(m, "simplify_casts")
    assert op_histogram(new) == after
    assert counts["simplify_casts"] == (0 if "Cast" in after and after["Cast"] == len(types) else 1)
    np.testing.assert_array_equal(run_ort(new, X), run_ort(m, X))


def _reshapes(s1, s2, x_shape=(2, 3, 4)):
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"])]
    inits = [const("s1", np.array(s1, np.int64))]
    if s2 is not None:
        nodes.append(helper.make_node("Reshape", ["a", "s2"], ["b"]))
        inits.append(const("s2", np.array(s2, np.int64)))
    nodes.append(helper.make_node("Relu", ["b" if s2 is not None else "a"], ["y"]))
    a = np.zeros(x_shape).reshape(s1)
    out = list(a.reshape([a.shape[i] if v == 0 else v for i, v in enumerate(s2)]).shape) if s2 is not None \
        else list(a.shape)
    return make_model(nodes, [f32("x", list(x_shape))], [f32("y", out)], inits)


@pytest.mark.parametrize("s1, s2, after", [
    ([6, 4], [4, 6], {"Reshape": 1, "Relu": 1}),          # chain -> one Reshape
    ([2, 3, 4], None, {"Relu": 1}),                        # to its own shape
    ([2, -1, 4], None, {"Relu": 1}),                       # -1 in the only free place
    ([6, 4], [0, 2, 2], {"Reshape": 2, "Relu": 1}),        # 0 = copy from the intermediate: kept
], ids=["chain", "own-shape", "own-shape-minus-one", "copy-dim-kept"])
def test_simplify_reshapes(s1, s2, after):
    m = _reshapes(s1, s2)
    new, counts = _apply(m, "simplify_reshapes")
    assert op_histogram(new) == after
    np.testing.assert_array_equal(run_ort(new, X), run_ort(m, X))


@pytest.mark.parametrize("p1, p2, after", [
    ([0, 2, 1], [0, 2, 1], {"Relu": 1}),                        # cancel
    ([1, 0, 2], [0, 2, 1], {"Transpose": 1, "Relu": 1}),        # compose
    ([0, 1, 2], None, {"Relu": 1}),                             # identity perm
], ids=["cancel", "compose", "identity"])
def test_simplify_transposes(p1, p2, after):
    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=p1)]
    if p2 is not None:
        nodes.append(helper.make_node("Transpose", ["a"], ["b"], perm=p2))
    nodes.append(helper.make_node("Relu", ["b" if p2 else "a"], ["y"]))
    out = np.zeros((2, 3, 4)).transpose(p1)
    out = out.transpose(p2) if p2 is not None else out
    m = make_model(nodes, [f32("x", [2, 3, 4])], [f32("y", list(out.shape))])
    new, counts = _apply(m, "simplify_transposes")
    assert op_histogram(new) == after and counts["simplify_transposes"] == 1
    np.testing.assert_array_equal(run_ort(new, X), run_ort(m, X))


@pytest.mark.parametrize("shape, removed", [([3, 1], True), ([1, 1, 1], True), ([2, 2, 3, 4], False),
                                            ([3, 5], False)], ids=["ones-and-own", "all-ones", "grows-rank",
                                                                   "grows-dim"])
def test_remove_noop_expand(shape, removed):
    x = np.random.default_rng(1).standard_normal((2, 3, 1)).astype(np.float32)
    nodes = [helper.make_node("Expand", ["x", "s"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    out = list(np.broadcast_shapes((2, 3, 1), tuple(shape)))
    m = make_model(nodes, [f32("x", [2, 3, 1])], [f32("y", out)], [const("s", np.array(shape, np.int64))])
    new, counts = _apply(m, "remove_noop_expand")
    assert counts["remove_noop_expand"] == int(removed)
    assert op_histogram(new) == ({"Relu": 1} if removed else {"Expand": 1, "Relu": 1})
    np.testing.assert_array_equal(run_ort(new, x), run_ort(m, x))


@pytest.mark.parametrize("op, value, const_first, removed", [
    ("Add", 0.0, True, True), ("Sub", 0.0, False, True), ("Mul", 1.0, False, True), ("Div", 1.0, False, True),
    ("Sub", 0.0, True, False), ("Add", 0.5, False, False), ("Mul", 1.0, False, False)],
    ids=["0+x", "x-0", "x*1", "x/1", "0-x-kept", "x+0.5-kept", "x*ones-that-broadcast-kept"])
def test_remove_neutral_elementwise(op, value, const_first, removed):
    c = np.full((4,) if removed or value != 1.0 or op != "Mul" else (2, 2, 3, 4), value, np.float32)
    ins = ["c", "x"] if const_first else ["x", "c"]
    out = list(np.broadcast_shapes((2, 3, 4), c.shape))
    m = make_model([helper.make_node(op, ins, ["y"])], [f32("x", [2, 3, 4])], [f32("y", out)], [const("c", c)])
    new, counts = _apply(m, "remove_neutral_elementwise")
    assert counts["remove_neutral_elementwise"] == int(removed)
    np.testing.assert_array_equal(run_ort(new, X), run_ort(m, X))


def test_static_reshape_shapes_replaces_shape_arithmetic_by_minus_one():
    # y = x.reshape(t.shape[0], 12) with t another tensor carrying the dynamic batch
    nodes = [helper.make_node("Shape", ["t"], ["st"]), helper.make_node("Gather", ["st", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]), helper.make_node("Concat", ["b1", "rest"], ["s"], axis=0),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    m = make_model(nodes, [f32("x", ["n", 3, 4]), f32("t", ["n", 5])], [f32("y", ["n", 12])],
                   [const("i0", np.array(0, np.int64)), const("ax", np.array([0], np.int64)),
                    const("rest", np.array([12], np.int64))])
    new, counts = _apply(m, "static_reshape_shapes")
    assert counts["static_reshape_shapes"] == 1
    assert op_histogram(new) == {"Reshape": 1}
    shape = [i for i in new.graph.initializer if i.name.endswith("_static_shape")][0]
    from onnx import numpy_helper
    assert numpy_helper.to_array(shape).tolist() == [-1, 12]
    import onnxruntime as ort
    for b in (1, 5):
        feeds = {"x": np.random.default_rng(b).standard_normal((b, 3, 4)).astype(np.float32),
                 "t": np.zeros((b, 5), np.float32)}
        new_sess = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
        old = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_array_equal(new_sess.run(None, feeds)[0], old)  # t stays an (unused) input

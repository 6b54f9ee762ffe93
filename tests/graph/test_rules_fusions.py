"""fuse_gelu / fuse_gelu_contrib / fuse_layer_norm: ORT outputs equal, op counts, coverage on exported ViTs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.graph import cleanup_graph, op_histogram
from tests.export.models import TOLERANCES, run_ort
from tests.graph.graphs import const, exported_tiny, f32, make_model
from tests.graph.test_rules import _apply

ATOL = TOLERANCES["lossless_pass_atol"]
X = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32) * 3


def _c(v):
    return np.array(v, np.float32)


def _gelu_erf(order: str, opset: int, div: bool = True):
    """x*0.5*(1+erf(x/√2)) with the products associated as ``order``."""
    from onnx import helper
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["u"]) if div else helper.make_node("Mul", ["x", "isqrt2"], ["u"]),
             helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["e", "one"], ["s"])]
    if order == "(x*s)*h":
        nodes += [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    elif order == "x*(s*h)":
        nodes += [helper.make_node("Mul", ["s", "half"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y"])]
    else:  # (x*h)*s
        nodes += [helper.make_node("Mul", ["half", "x"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])]
    return make_model(nodes, [f32("x", [2, 5, 8])], [f32("y", [2, 5, 8])],
                      [const("sqrt2", _c(math.sqrt(2))), const("isqrt2", _c(1 / math.sqrt(2))), const("one", _c(1.0)),
                       const("half", _c(0.5))], opset=opset)


def _gelu_tanh(cube: str, opset: int):
    from onnx import helper
    nodes = ([helper.make_node("Pow", ["x", "three"], ["x3"])] if cube == "pow" else
             [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x", "x2"], ["x3"])])
    nodes += [helper.make_node("Mul", ["cubic", "x3"], ["c"]), helper.make_node("Add", ["x", "c"], ["i"]),
              helper.make_node("Mul", ["scale", "i"], ["u"]), helper.make_node("Tanh", ["u"], ["t"]),
              helper.make_node("Add", ["one", "t"], ["s"]), helper.make_node("Mul", ["x", "s"], ["m"]),
              helper.make_node("Mul", ["half", "m"], ["y"])]
    return make_model(nodes, [f32("x", [2, 5, 8])], [f32("y", [2, 5, 8])],
                      [const("three", _c(3.0)), const("cubic", _c(0.044715)), const("scale", _c(math.sqrt(2 / math.pi))),
                       const("one", _c(1.0)), const("half", _c(0.5))], opset=opset)


@pytest.mark.parametrize("order", ["(x*s)*h", "x*(s*h)", "(x*h)*s"])
@pytest.mark.parametrize("div", [True, False], ids=["div-sqrt2", "mul-inv-sqrt2"])
def test_fuse_gelu_erf_forms(order, div):
    m = _gelu_erf(order, 20, div)
    new, counts = _apply(m, "fuse_gelu")
    assert counts == {"fuse_gelu": 1}
    assert op_histogram(new) == {"Gelu": 1}
    assert [a.s for a in new.graph.node[0].attribute if a.name == "approximate"] == [b"none"]
    np.testing.assert_allclose(run_ort(new, X), run_ort(m, X), atol=ATOL)


@pytest.mark.parametrize("cube", ["pow", "mul"], ids=["dynamo-pow", "legacy-mul"])
def test_fuse_gelu_tanh_forms(cube):
    m = _gelu_tanh(cube, 20)
    new, counts = _apply(m, "fuse_gelu")
    assert counts == {"fuse_gelu": 1} and op_histogram(new) == {"Gelu": 1}
    assert [a.s for a in new.graph.node[0].attribute if a.name == "approximate"] == [b"tanh"]
    np.testing.assert_allclose(run_ort(new, X), run_ort(m, X), atol=ATOL)


def test_fuse_gelu_leaves_older_opsets_and_wrong_constants_alone():
    m = _gelu_erf("(x*s)*h", 18)
    new, counts = _apply(m, "fuse_gelu")
    assert counts == {"fuse_gelu": 0} and op_histogram(new) == op_histogram(m)
    wrong = _gelu_erf("(x*s)*h", 20)
    wrong.graph.initializer[3].CopyFrom(const("half", _c(0.6)))  # not GELU any more
    new, counts = _apply(wrong, "fuse_gelu")
    assert counts == {"fuse_gelu": 0} and "Gelu" not in op_histogram(new)


def test_fuse_gelu_contrib_on_opset_18():
    m = _gelu_erf("x*(s*h)", 18)
    new, counts = _apply(m, "fuse_gelu_contrib")
    assert counts == {"fuse_gelu_contrib": 1} and op_histogram(new) == {"com.microsoft::Gelu": 1}
    np.testing.assert_allclose(run_ort(new, X), run_ort(m, X), atol=ATOL)
    _, counts = _apply(_gelu_tanh("pow", 18), "fuse_gelu_contrib")
    assert counts == {"fuse_gelu_contrib": 0}  # the contrib Gelu has no tanh mode


def _layer_norm(square: str, affine: bool, opset: int, eps: float = 1e-6):
    from onnx import helper
    axes = ["axes"] if opset >= 18 else []
    kw = {} if opset >= 18 else {"axes": [-1]}
    nodes = [helper.make_node("ReduceMean", ["x"] + axes, ["m"], **kw), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "pow" else helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"] + axes, ["v"], **kw), helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]), helper.make_node("Div", ["d", "sd"], ["n" if affine else "y"])]
    if affine:
        nodes += [helper.make_node("Mul", ["n", "gamma"], ["g"]), helper.make_node("Add", ["g", "beta"], ["y"])]
    rng = np.random.default_rng(1)
    inits = [const("two", _c(2.0)), const("eps", _c(eps)), const("gamma", rng.standard_normal(8).astype(np.float32)),
             const("beta", rng.standard_normal(8).astype(np.float32))]
    if opset >= 18:
        inits.append(const("axes", np.array([-1], np.int64)))
    used = {i for n in nodes for i in n.input}
    return make_model(nodes, [f32("x", [2, 5, 8])], [f32("y", [2, 5, 8])], [i for i in inits if i.name in used],
                      opset=opset)


@pytest.mark.parametrize("square, affine, opset", [("pow", True, 17), ("mul", True, 18), ("pow", False, 18)],
                         ids=["pow-affine-opset17", "mul-affine-opset18", "pow-plain-opset18"])
def test_fuse_layer_norm(square, affine, opset):
    m = _layer_norm(square, affine, opset)
    new, counts = _apply(m, "fuse_layer_norm")
    assert counts == {"fuse_layer_norm": 1}
    assert op_histogram(new) == {"LayerNormalization": 1}
    ln = new.graph.node[0]
    assert [a.f for a in ln.attribute if a.name == "epsilon"] == [pytest.approx(1e-6)]
    assert len(ln.input) == (3 if affine else 2)
    np.testing.assert_allclose(run_ort(new, X), run_ort(m, X), atol=ATOL)


def test_fuse_layer_norm_needs_opset_17_and_the_last_axis():
    new, counts = _apply(_layer_norm("pow", True, 16), "fuse_layer_norm")
    assert counts == {"fuse_layer_norm": 0} and "LayerNormalization" not in op_histogram(new)
    m = _layer_norm("pow", True, 17)
    for n in m.graph.node:
        if n.op_type == "ReduceMean" and n.output[0] == "m":
            n.attribute[0].ints[:] = [1]  # the mean over another axis: not a LayerNorm
    _, counts = _apply(m, "fuse_layer_norm")
    assert counts == {"fuse_layer_norm": 0}


# ---- coverage on exported ViTs (depth 2: 2 MLPs, 2 norms per block + the final norm) -----------

def _converted(proto, opset):
    from onnx import version_converter
    return version_converter.convert_version(proto, opset)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_fuse_gelu_coverage_on_vit_upgraded_to_opset_20(tmp_path, dynamo):
    _, proto = exported_tiny(tmp_path, dynamo=dynamo, depth=2)  # opset 18: GELU exported decomposed
    assert op_histogram(proto)["Erf"] == 2
    _, rep18 = cleanup_graph(proto, rules=["fuse_gelu", "fuse_gelu_contrib"])
    assert rep18.rules == {"remove_identity": rep18.rules["remove_identity"], "fold_constants": rep18.rules["fold_constants"],
                           "fuse_gelu": 0, "fuse_gelu_contrib": 2}
    up = _converted(proto, 20)
    new, rep = cleanup_graph(up, rules=["fuse_gelu"])
    assert rep.rules["fuse_gelu"] == 2 and not rep.rolled_back
    hist = op_histogram(new)
    assert hist["Gelu"] == 2 and "Erf" not in hist
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=ATOL)


def test_fuse_layer_norm_coverage_on_legacy_opset16_vit(tmp_path):
    from optimizer.export import onnx_from_torch
    from tests.conftest import tiny_vit
    import onnx
    path = tmp_path / "ts16.onnx"
    onnx_from_torch(tiny_vit(depth=2), path, dynamo=False, opset=16)  # opset 16: LayerNorm decomposed
    proto = onnx.load(str(path))
    assert "LayerNormalization" not in op_histogram(proto) and op_histogram(proto)["ReduceMean"] == 10
    _, rep16 = cleanup_graph(proto, rules=["fuse_layer_norm"])
    assert rep16.rules["fuse_layer_norm"] == 0  # needs opset 17
    new, rep = cleanup_graph(_converted(proto, 17), rules=["fuse_layer_norm"])
    assert rep.rules["fuse_layer_norm"] == 5 and not rep.rolled_back
    hist = op_histogram(new)
    assert hist["LayerNormalization"] == 5 and "ReduceMean" not in hist and "Sqrt" not in hist
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=ATOL)

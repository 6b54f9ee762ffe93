"""convert_to_fp16: runs in ORT, close to fp32, fp32 I/O and fp32 LayerNorm/Softmax."""
from __future__ import annotations

import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.export import compare_outputs, get_metadata
from optimizer.graph import cleanup_graph, convert_to_fp16, op_histogram
from optimizer.graph.cleanup import infer_shapes
from optimizer.tolerances import tolerance_for
from tests.export.models import run_ort
from tests.graph.graphs import exported_tiny

FP16 = tolerance_for("fp16")  # the product's fp16 row: min cosine, min top-1 agreement


def _types(proto):
    """tensor name -> elem_type for every typed value in the (shape-inferred) graph."""
    p = infer_shapes(proto)
    out = {v.name: v.type.tensor_type.elem_type for v in list(p.graph.value_info) + list(p.graph.input)
           + list(p.graph.output)}
    out.update({i.name: i.data_type for i in p.graph.initializer})
    return out, p


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_fp16_close_to_fp32_with_fp32_io(tmp_path, dynamo):
    from onnx import TensorProto
    _, proto = exported_tiny(tmp_path, dynamo=dynamo, depth=2)
    proto, _ = cleanup_graph(proto)
    f16 = convert_to_fp16(proto)
    assert [i.type.tensor_type.elem_type for i in f16.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in f16.graph.output] == [TensorProto.FLOAT]
    assert [o.name for o in f16.graph.output] == [o.name for o in proto.graph.output]
    types, inferred = _types(f16)
    # normalisations and softmax compute in fp32: every float input and output of them is FLOAT
    for n in inferred.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert all(types[t] == TensorProto.FLOAT for t in list(n.input) + list(n.output) if t), n.name
        if n.op_type in ("MatMul", "Gemm", "Conv"):
            assert all(types[t] == TensorProto.FLOAT16 for t in n.input if t), n.name
    big = [i for i in f16.graph.initializer if len(i.dims) >= 2]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big)
    assert f16.ByteSize() < 0.65 * proto.ByteSize()
    assert get_metadata(f16)["vitopt.precision"] == "fp16"
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    ref, got = run_ort(proto, x), run_ort(f16, x)
    assert got.dtype == np.float32
    res = compare_outputs(ref, got, atol=float("inf"))
    assert res.cosine > FP16.min_cosine
    assert res.top1_agreement >= FP16.min_top1_agreement
    assert 0 < res.max_abs_diff < 0.05  # really fp16 (not a no-op), and not broken


def test_fp16_without_io_casts(tmp_path):
    from onnx import TensorProto
    _, proto = exported_tiny(tmp_path, depth=2)
    f16 = convert_to_fp16(proto, keep_io_types=False)
    assert f16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert f16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float16)
    out = run_ort(f16, x)
    assert out.dtype == np.float16
    ref = run_ort(proto, x.astype(np.float32))
    assert compare_outputs(ref, out, atol=float("inf")).cosine > FP16.min_cosine


def test_fp16_refuses_twice_and_integer_graphs(tmp_path):
    from onnx import TensorProto, helper
    _, proto = exported_tiny(tmp_path, depth=1)
    f16 = convert_to_fp16(proto)
    with pytest.raises(VitoptError, match="already converted"):
        convert_to_fp16(f16)
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT32, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(VitoptError, match="no float32 tensors"):
        convert_to_fp16(m)


def test_fp16_shared_initializer_gets_both_precisions():
    """One weight read by a LayerNorm (fp32) and a MatMul-side Add (fp16) must exist in both types."""
    from onnx import TensorProto, helper
    from tests.graph.graphs import const, f32, make_model
    w = np.linspace(0.5, 1.5, 4).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "w", "w"], ["a"], axis=-1),
             helper.make_node("Add", ["a", "w"], ["y"])]
    m = make_model(nodes, [f32("x", [2, 4])], [f32("y", [2, 4])], [const("w", w)])
    f16 = convert_to_fp16(m)
    types = {i.name: i.data_type for i in f16.graph.initializer}
    assert sorted(types.values()) == sorted([TensorProto.FLOAT, TensorProto.FLOAT16])
    assert op_histogram(f16) == {"Cast": 2, "LayerNormalization": 1, "Add": 1}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(f16, x), run_ort(m, x), atol=5e-3)


def test_fp16_keeps_a_decomposed_layernorm_in_fp32(tmp_path):
    """opset 16 has no LayerNormalization op: the exporter decomposes it; the whole chain stays fp32."""
    from onnx import TensorProto
    import onnx
    from optimizer.export import onnx_from_torch
    from tests.conftest import tiny_vit
    model = tiny_vit(depth=2)
    path = tmp_path / "op16.onnx"
    onnx_from_torch(model, path, dynamo=False, opset=16)
    proto, _ = cleanup_graph(onnx.load(str(path)))
    hist = op_histogram(proto)
    assert "LayerNormalization" not in hist and hist["ReduceMean"] == 2 * 5  # 5 norms, mean + variance
    f16 = convert_to_fp16(proto)
    types, inferred = _types(f16)
    for n in inferred.graph.node:
        if n.op_type in ("ReduceMean", "Sqrt", "Pow"):
            assert all(types[t] == TensorProto.FLOAT for t in list(n.input)[:1] + list(n.output)), n.name
    # the eps Add sits between the variance ReduceMean and Sqrt: fp32 as well
    producers = {o: n for n in inferred.graph.node for o in n.output}
    sqrt_inputs = [producers[n.input[0]] for n in inferred.graph.node if n.op_type == "Sqrt"]
    assert sqrt_inputs and all(p.op_type == "Add" and types[p.output[0]] == TensorProto.FLOAT for p in sqrt_inputs)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    res = compare_outputs(run_ort(proto, x), run_ort(f16, x), atol=float("inf"))
    assert res.cosine > FP16.min_cosine


# ---- fp32 islands found by probing on inputs ------------------------------------------------

def _scaled_graph():
    """y = ((x * 1000) / 1000) + ((x + 30000) - 30000) for x ~ 150: an fp16 overflow (1.5e5 > 65504)
    and an fp16 cancellation (fp16 spacing at 30000 is 16)."""
    from onnx import helper
    from tests.graph.graphs import const, f32, make_model
    k, s = np.array(1000.0, np.float32), np.array(30000.0, np.float32)
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"]), helper.make_node("Div", ["big", "k"], ["back"]),
             helper.make_node("Add", ["x", "s"], ["shifted"]), helper.make_node("Sub", ["shifted", "s"], ["small"]),
             helper.make_node("Add", ["back", "small"], ["y"])]
    return make_model(nodes, [f32("x", [None, 4])], [f32("y", [None, 4])], [const("k", k), const("s", s)])


def test_probe_finds_overflow_and_cancellation():
    from optimizer.graph.fp16_probe import probe_fp16
    m = _scaled_graph()
    rng = np.random.default_rng(0)
    x = rng.uniform(100, 200, (8, 4)).astype(np.float32)
    probe = probe_fp16(m, x)
    by_key = {n.key: n for n in probe.nodes}
    assert by_key["big"].overflow and by_key["big"].reason == "overflow"       # 1e5 > 65504
    assert by_key["back"].overflow                                             # reads the Inf
    assert by_key["small"].reason == "error" and by_key["small"].rel_error > 1e-2
    assert by_key["shifted"].keep_fp32 and by_key["shifted"].reason == "feeds small"
    assert not by_key["y"].keep_fp32 and by_key["y"].rel_error < 1e-2
    assert sorted(probe.kept) == ["back", "big", "shifted", "small"]
    from onnx import TensorProto
    # ONNX Runtime CPU runs these fp16 ops in fp32 internally, so the oracle is the tensor types that a
    # strongly typed builder (TensorRT) obeys: the probed nodes' outputs stay FLOAT, the rest FLOAT16
    blind, _ = _types(convert_to_fp16(m, fp32_ops=()))
    probed = convert_to_fp16(m, fp32_ops=(), probe_inputs=x)
    types, _ = _types(probed)
    for t in ("big", "back", "shifted", "small"):
        assert (blind[t], types[t]) == (TensorProto.FLOAT16, TensorProto.FLOAT), t
    assert types["y_fp16"] == TensorProto.FLOAT16 and types["y"] == TensorProto.FLOAT
    np.testing.assert_allclose(run_ort(probed, x), run_ort(m, x), rtol=2e-3)
    meta = get_metadata(probed)
    assert meta["vitopt.fp16_fp32_nodes"] == "back,big,shifted,small"
    assert '"Mul": 1' in meta["vitopt.fp16_probe"] and '"Sub": 1' in meta["vitopt.fp16_probe"]


def test_probe_on_a_vit_keeps_nothing_it_does_not_need(tmp_path):
    """Native LayerNorm/Softmax graph on typical inputs: nothing overflows and every node's own fp16
    error is at rounding level, so the probe-only conversion equals the all-fp16 one and stays
    within the fp16 tolerance row."""
    from optimizer.graph.fp16_probe import probe_fp16
    from optimizer.tolerances import tolerance_for
    from optimizer.runners.compare import compare_arrays
    _, proto = exported_tiny(tmp_path, depth=2)
    proto, _ = cleanup_graph(proto)
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    probe = probe_fp16(proto, x, chunk=4)
    assert probe.images == 6 and len(probe.nodes) > 20
    assert probe.kept == [] and all(n.rel_error < 5e-3 for n in probe.nodes)
    ops = {n.op for n in probe.nodes}
    assert {"MatMul", "LayerNormalization", "Softmax"} <= ops and "Reshape" not in ops
    f16 = convert_to_fp16(proto, fp32_ops=(), probe_inputs=x)
    r = compare_arrays(run_ort(proto, x), run_ort(f16, x), tolerance_for("fp16"))
    assert r["passed"], r["failures"]


def test_probe_rejects_bad_inputs(tmp_path):
    from optimizer.graph.fp16_probe import probe_fp16
    _, proto = exported_tiny(tmp_path, depth=1)
    with pytest.raises(VitoptError, match="float array"):
        probe_fp16(proto, np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(VitoptError, match="tolerance must be positive"):
        probe_fp16(proto, np.zeros((1, 3, 32, 32), np.float32), tolerance=0)

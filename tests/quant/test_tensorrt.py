"""TensorRT for RTX takes vitopt's Q/DQ graphs: its ONNX parser keeps every INT8 and FP8 Q/DQ node
as a quantize/dequantize layer (building the engines runs on a CPU too: see benchmarks/results/quant.md)."""
import numpy as np
import pytest

from optimizer.errors import MissingDependency
from optimizer.quant import QuantConfig, quantize_onnx
from tests.quant.graphs import mlp_graph


def _trt():
    from optimizer.engine.builders import import_builder
    try:
        return import_builder("tensorrt_rtx")[0]
    except MissingDependency as e:
        pytest.skip(f"tensorrt_rtx is not installed ({e}); pip install 'vitopt[trt-rtx]' runs this test")


@pytest.mark.parametrize("dtype, opset", [("int8", 18), ("fp8", 19)])
def test_tensorrt_rtx_parser_keeps_every_qdq_node(dtype, opset):
    trt = _trt()
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((32, 10)).astype(np.float32)]
    calib = rng.standard_normal((16, 1, 1, 16)).astype(np.float32)
    q, rep = quantize_onnx(mlp_graph(ws, opset=opset), calib, QuantConfig(calibrator="max", dtype=dtype))
    n_q = sum(n.op_type == "QuantizeLinear" for n in q.graph.node)
    n_dq = sum(n.op_type == "DequantizeLinear" for n in q.graph.node)
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(q.SerializeToString())
    assert ok, [parser.get_error(i).desc() for i in range(parser.num_errors)]
    types = [network.get_layer(i).type for i in range(network.num_layers)]
    assert types.count(trt.LayerType.QUANTIZE) == n_q and types.count(trt.LayerType.DEQUANTIZE) == n_dq
    assert (n_q, n_dq) == ((2, 4) if dtype == "int8" else (4, 4))  # fp8 weights: Q on the constant too

"""quantize_onnx on hand-built graphs: Q/DQ equals a numpy fake-quant reference, per-channel scales,
the sensitivity fallback, gathered weights, dynamic mode, and every bad-input error."""
import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.graph.cleanup import op_histogram
from optimizer.quant import QuantConfig, quantize_onnx
from tests.quant.graphs import fq_channels, fq_tensor, mlp_graph, run


def _weights(seed=0, dims=(16, 32, 24, 10)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((a, b)).astype(np.float32) / np.sqrt(a) for a, b in zip(dims[:-1], dims[1:])]


def _images(n, d=16, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 1, d)).astype(np.float32)


def _inits(proto):
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_qdq_graph_equals_numpy_fake_quant_reference():
    ws = _weights()
    proto = mlp_graph(ws, gemm_last=True)
    calib = _images(32)
    q, rep = quantize_onnx(proto, calib, QuantConfig(calibrator="max", calib_images=32))
    assert rep.quantized == ["mm0", "mm1", "mm2"]
    x = _images(8, seed=7)
    # numpy reference with the same calibration: amax of each layer's input over the calibration set
    h, hc = x[:, 0, 0], calib[:, 0, 0]
    for i, w in enumerate(ws):
        amax = float(np.max(np.abs(hc)))
        h = fq_tensor(h, amax) @ fq_channels(w, axis=1)
        hc = hc @ w
        if i < len(ws) - 1:
            h, hc = np.maximum(h, 0), np.maximum(hc, 0)
    out = run(q, x)
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)
    # and the quantized graph really differs from FP32 (the oracle is not vacuous)
    assert np.max(np.abs(run(proto, x) - h)) > 1e-3


def test_per_channel_weight_scales_are_max_abs_over_127():
    ws = _weights()
    q, _ = quantize_onnx(mlp_graph(ws, gemm_last=True), _images(16), QuantConfig(calibrator="max"))
    inits = _inits(q)
    for i, w in enumerate(ws):
        axis_w = w if i < 2 else w.T  # the Gemm stores (out, in): channels on axis 0
        axis = 1 if i < 2 else 0
        np.testing.assert_array_equal(inits[f"w{i}_scale"], np.max(np.abs(axis_w), axis=1 - axis) / np.float32(127))
        assert inits[f"w{i}_int8"].dtype == np.int8 and np.abs(inits[f"w{i}_int8"]).max() == 127
        assert f"w{i}" not in inits  # the FP32 weight is gone: the file shrinks to ~1/4
    hist = op_histogram(q)
    assert hist["QuantizeLinear"] == 3 and hist["DequantizeLinear"] == 6


def test_fallback_returns_the_sensitive_layer_to_fp32():
    ws = _weights(seed=3)
    # feature 0 of h0 is ~1000x the others and mm1 ignores it: a per-tensor int8 scale on mm1's input
    # is set by that feature, so every feature mm1 reads rounds to zero
    ws[0][:, 0] *= 1000.0
    ws[0][:, 1:] = np.abs(ws[0][:, 1:])
    ws[1][0, :] = 0.0
    proto = mlp_graph(ws)
    calib, held = _images(32), _images(64, seed=5)
    q0, rep0 = quantize_onnx(proto, calib, QuantConfig(calibrator="max"), eval_inputs=held)
    assert rep0.agreement < 0.6
    q, rep = quantize_onnx(proto, calib, QuantConfig(calibrator="max", min_agreement=0.95), eval_inputs=held)
    assert rep.fallback[0]["node"] == "mm1"
    by = {l.node: l for l in rep.layers}
    assert not by["mm1"].quantized and "sensitivity fallback" in by["mm1"].reason
    assert by["mm1"].alone_agreement == min(l.alone_agreement for l in rep.layers)
    assert rep.agreement >= 0.95 and rep.agreement_before_fallback == rep0.agreement
    # the returned graph is the one measured: mm1 has no Q/DQ on its input
    assert "h0_quantized" not in {n.output[0] for n in q.graph.node}
    np.testing.assert_array_equal(_inits(q)["w1"], ws[1])
    # ranking on 8 of the 64 held-out images finds the same layer; agreement is still judged on all 64
    q8, rep8 = quantize_onnx(proto, calib, QuantConfig(calibrator="max", min_agreement=0.95, rank_images=8),
                             eval_inputs=held)
    assert rep8.rank_images == 8 and rep8.eval_images == 64 and rep.rank_images == 64
    assert [f["node"] for f in rep8.fallback] == [f["node"] for f in rep.fallback]
    assert rep8.agreement == rep.agreement


def test_gathered_weight_is_quantized_per_channel_before_the_gather():
    ws = _weights(seed=4, dims=(16, 32, 10))
    idx = [0, 3, 5, 7, 8, 11, 12, 20, 21, 30]   # 10 of mm0's 32 output channels
    ws[1] = ws[1][: len(idx)]
    proto = mlp_graph(ws, gather=(0, idx))
    calib = _images(32)
    q, rep = quantize_onnx(proto, calib, QuantConfig(calibrator="max"))
    by = {l.node: l for l in rep.layers}
    assert by["mm0"].quantized and by["mm0"].gathered_by == "gather0" and by["mm0"].channels == 32
    x = _images(8, seed=9)[:, 0, 0]
    h = fq_tensor(x, float(np.max(np.abs(calib)))) @ fq_channels(ws[0], axis=1)[:, idx]
    hc = np.maximum(calib[:, 0, 0] @ ws[0][:, idx], 0)
    ref = fq_tensor(np.maximum(h, 0), float(np.max(hc))) @ fq_channels(ws[1], axis=1)
    np.testing.assert_allclose(run(q, x[:, None, None]).reshape(8, -1), ref, rtol=1e-4, atol=1e-4)


def test_reduce_range_keeps_ort_fused_int8_kernels_exact_on_any_cpu():
    """7-bit weights: ORT's fused u8 x s8 kernels cannot saturate their int16 pair sums (AVX2 without
    VNNI), so the fused graph equals the unfused one up to float rounding of the rescale."""
    ws = _weights(seed=4, dims=(16, 32, 10))
    proto = mlp_graph(ws)
    calib, x = _images(32), _images(64, seed=9)
    q, _ = quantize_onnx(proto, calib, QuantConfig(calibrator="max", reduce_range=True))
    assert np.abs(_inits(q)["w0_int8"]).max() == 63
    np.testing.assert_allclose(run(q, x, fused=True), run(q, x), rtol=1e-4, atol=1e-4)


def test_dynamic_mode_matches_fp32_closely_and_uses_integer_matmuls():
    ws = _weights(seed=6)
    proto = mlp_graph(ws, gemm_last=True)
    # reduce_range: ORT's MatMulInteger itself (u8 x s8, AVX2) saturates with full-range weights
    q, rep = quantize_onnx(proto, _images(4), QuantConfig(mode="dynamic", reduce_range=True),
                           eval_inputs=_images(64, seed=2))
    hist = op_histogram(q)
    assert hist["MatMulInteger"] == 3 and hist["DynamicQuantizeLinear"] == 3 and "MatMul" not in hist
    x = _images(16, seed=8)
    ref, out = run(proto, x), run(q, x)
    assert np.max(np.abs(out - ref)) < 0.05 * np.max(np.abs(ref))
    assert rep.agreement >= 0.9


def test_already_quantized_graph_is_refused():
    q, _ = quantize_onnx(mlp_graph(_weights()), _images(16), QuantConfig(calibrator="max"))
    with pytest.raises(VitoptError, match=r"already quantized \(DequantizeLinear, QuantizeLinear present\)"):
        quantize_onnx(q, _images(16), QuantConfig(calibrator="max"))
    d, _ = quantize_onnx(mlp_graph(_weights()), _images(16), QuantConfig(mode="dynamic"))
    with pytest.raises(VitoptError, match="already quantized"):
        quantize_onnx(d, _images(16), QuantConfig(mode="dynamic"))


def test_opset_too_old_for_per_channel_qdq_is_refused():
    with pytest.raises(VitoptError, match=r"opset 12 is too old for per-channel int8 Q/DQ \(needs >= 13\)"):
        quantize_onnx(mlp_graph(_weights(), opset=12), _images(16), QuantConfig(calibrator="max"))
    with pytest.raises(VitoptError, match=r"opset 18 is too old for per-channel fp8 Q/DQ \(needs >= 19\)"):
        quantize_onnx(mlp_graph(_weights()), _images(16), QuantConfig(calibrator="max", dtype="fp8"))


def test_too_few_calibration_images_and_fallback_without_held_out_images_are_refused():
    with pytest.raises(VitoptError, match="the entropy calibrator needs at least 16 calibration images, got 8"):
        quantize_onnx(mlp_graph(_weights()), _images(8), QuantConfig(calibrator="entropy"))
    with pytest.raises(VitoptError, match="needs held-out images"):
        quantize_onnx(mlp_graph(_weights()), _images(16), QuantConfig(calibrator="max", min_agreement=0.9))
    with pytest.raises(VitoptError, match=r"\(N, C, H, W\)"):
        quantize_onnx(mlp_graph(_weights()), np.zeros((16, 16), np.float32), QuantConfig(calibrator="max"))


@pytest.mark.parametrize("kw, msg", [
    (dict(calibrator="kl"), "calibrator must be one of max, percentile, entropy, mse"),
    (dict(percentile=100.0), "percentile must be in"),
    (dict(mode="weights"), "mode must be one of static, dynamic"),
    (dict(min_agreement=99.0), "min_agreement is a fraction"),
    (dict(op_types=("Attention",)), "op_types must be a non-empty subset"),
    (dict(calibrator="mse", calib_images=4), "the mse calibrator needs at least 16 calibration images"),
    (dict(mode="dynamic", dtype="fp8"), "dynamic mode quantizes activations to uint8"),
    (dict(rank_images=0), "rank_images must be a positive number of images"),
])
def test_config_validates(kw, msg):
    with pytest.raises(ValueError, match=msg):
        QuantConfig(**kw)

"""TrtRunner on a real engine: needs a TensorRT builder and an NVIDIA GPU (skipped elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest

from optimizer.runners import OrtRunner, TrtRunner, compare_outputs, gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.trt]


@pytest.fixture
def tiny_engine(tiny_onnx, tmp_path):
    if not gpu_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False); run on a GPU machine")
    from optimizer.engine import available_builder, engine_from_onnx, save_engine
    if available_builder() is None:
        pytest.skip("needs tensorrt or tensorrt_rtx: pip install tensorrt-rtx")
    _, path = tiny_onnx
    return path, save_engine(engine_from_onnx(path, batch_sizes=(1, 4)), tmp_path / "tiny.engine")


def test_trt_runner_matches_ort(tiny_engine):
    onnx_path, engine = tiny_engine
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with TrtRunner(engine) as t, OrtRunner(onnx_path) as o:
        assert t.input_name == "input" and t.output_names == ["logits"] and t.sample_shape == (3, 32, 32)
        a, b = t.infer({"input": x}), o.infer({"input": x})
        ms = [t.infer_timed(4) for _ in range(3)]
    cmp = compare_outputs(a, b, atol=1e-2, rtol=1e-2)["logits"]  # TF32 math may be on for fp32 engines
    assert cmp["passed"] and cmp["cosine"] > 0.9999
    assert all(v > 0 for v in ms)


def test_benchmark_reports_engine_memory(tiny_engine):
    from optimizer.bench import benchmark
    _, engine = tiny_engine
    rows = benchmark(TrtRunner(engine), batch_sizes=(1, 4), warmup=2, iters=5, min_time_s=0)
    assert [r.batch for r in rows] == [1, 4] and all(r.device == "cuda" for r in rows)
    assert rows[0].env["gpu"]

"""CUDA bindings behind TrtRunner (torch, cuda-python, pycuda): choice, errors, bfloat16 on the host,
and — on a GPU machine — a device round trip and an engine run through every binding present."""
from __future__ import annotations

import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.runners.device_buffers import (ENV, ORDER, available_bindings, device_buffers, from_bfloat16_bits,
                                              to_bfloat16_bits)


def test_bfloat16_bits_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 1e3,
                        np.array([0.0, -0.0, 1.0, -1.5, 3.0e38, -3.0e38, 1e-40, np.inf, -np.inf], np.float32),
                        # halfway cases: round to nearest even must match torch's conversion
                        np.array([1.00390625, 1.01171875, 1.0078125], np.float32)])
    ref = torch.from_numpy(x).to(torch.bfloat16)
    assert np.array_equal(to_bfloat16_bits(x), ref.view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(from_bfloat16_bits(to_bfloat16_bits(x)), ref.float().numpy())


def test_bfloat16_nan_stays_nan():
    bits = to_bfloat16_bits(np.array([np.nan, 1.0], np.float32))
    back = from_bfloat16_bits(bits)
    assert np.isnan(back[0]) and back[1] == 1.0


def test_unknown_binding_is_one_line_error(monkeypatch):
    with pytest.raises(VitoptError, match="not a CUDA binding vitopt knows; use one of torch, cuda-python, pycuda"):
        device_buffers("cupy")
    monkeypatch.setenv(ENV, "opencl")
    with pytest.raises(VitoptError, match=f"{ENV}='opencl'"):
        device_buffers()


def test_without_a_gpu_every_binding_is_refused_by_name():
    if available_bindings():
        pytest.skip("this machine has a GPU")
    with pytest.raises(VitoptError, match=r"no CUDA binding sees a GPU here \(tried torch, cuda-python, pycuda\)"):
        device_buffers()
    for name in ORDER:
        with pytest.raises(VitoptError, match=f"the {name} CUDA binding does not import or sees no GPU"):
            device_buffers(name)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ORDER)
def test_round_trip_and_events_on_gpu(name):
    if name not in available_bindings():
        pytest.skip(f"{name} does not import or sees no GPU here")
    cuda = device_buffers(name)
    s = cuda.stream()
    host = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    dev = cuda.upload(host, s)
    assert dev.shape == (4, 3, 5) and dev.nbytes == host.nbytes and dev.ptr != 0
    a, b = cuda.event(), cuda.event()
    cuda.record(a, s)
    cuda.record(b, s)
    assert cuda.elapsed_ms(a, b) >= 0.0
    assert np.array_equal(cuda.to_host(dev, s), host)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("name", ORDER)
def test_engine_runs_through_each_binding(name, tiny_onnx, tmp_path, monkeypatch):
    """The same engine, run with the binding forced by VITOPT_CUDA_BUFFERS, matches ONNX Runtime."""
    if name not in available_bindings():
        pytest.skip(f"{name} does not import or sees no GPU here")
    from optimizer.engine import available_builder, engine_from_onnx, save_engine
    from optimizer.runners import OrtRunner, TrtRunner, compare_outputs
    if available_builder() is None:
        pytest.skip("needs tensorrt or tensorrt_rtx")
    _, path = tiny_onnx
    engine = save_engine(engine_from_onnx(path, batch_sizes=(1, 4)), tmp_path / "tiny.engine")
    monkeypatch.setenv(ENV, name)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with TrtRunner(engine) as t, OrtRunner(path) as o:
        assert t.info()["cuda_binding"] == name
        cmp = compare_outputs(t.infer({"input": x}), o.infer({"input": x}), atol=1e-2, rtol=1e-2)["logits"]
        assert cmp["passed"] and t.infer_timed(4) > 0

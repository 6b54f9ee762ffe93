"""engine_from_onnx / save_engine over the installed TensorRT builder (skips without one)."""
from __future__ import annotations

import json

import pytest

from optimizer.engine import (INSTALL_HINT, available_builder, choose_opt, engine_from_onnx, parse_builder_log,
                              parse_layer_info,
                              read_sidecar, save_engine, validate_batches)
from optimizer.errors import MissingDependency, VitoptError
from tests.conftest import tiny_vit

BUILDER = available_builder()
needs_builder = pytest.mark.skipif(BUILDER is None, reason=f"no TensorRT builder importable ({INSTALL_HINT})")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import onnx
    from optimizer.export import onnx_from_torch, save_onnx
    from optimizer.graph import cleanup_graph
    d = tmp_path_factory.mktemp("eng")
    raw = d / "raw.onnx"
    onnx_from_torch(tiny_vit(depth=2), raw)
    clean, _ = cleanup_graph(onnx.load(str(raw)))
    path = d / "tiny.onnx"
    save_onnx(clean, path)
    return path


# ---- no builder needed ----------------------------------------------------------------------

def test_profile_batches_and_opt_rule():
    assert validate_batches([32, 1, 8, 8]) == [1, 8, 32]
    assert choose_opt([1, 8, 32]) == 8 and choose_opt([1, 8]) == 8 and choose_opt([4]) == 4
    assert choose_opt([1, 8, 32], 32) == 32
    for bad, msg in (([], "no batch sizes"), ([0, 8], "positive"), (["a"], "integers")):
        with pytest.raises(VitoptError, match=msg):
            validate_batches(bad)
    with pytest.raises(VitoptError, match="outside the profile range"):
        choose_opt([1, 8], 64)


def test_parse_builder_log_reads_memory_lines_and_reports_missing():
    lines = ["Total Host Persistent Memory: 80 bytes", "Total Activation Memory: 8947200 bytes",
             "Total Weights Memory: 416128 bytes",
             "[MemUsageStats] Peak memory usage of TRT CPU/GPU memory allocators: CPU 12 MiB, GPU 0 MiB",
             "Engine generation completed in 0.419399 seconds.", "Total Weights Memory: 416000 bytes"]
    r = parse_builder_log(lines)
    assert r["weights_bytes"] == 416000  # the last pass wins
    assert r["activation_bytes"] == 8947200 and r["host_persistent_bytes"] == 80
    assert r["builder_peak_cpu_mib"] == 12 and r["engine_generation_seconds"] == pytest.approx(0.419399)
    assert r["missing"] == []
    r = parse_builder_log(["nothing useful"])
    assert r["weights_bytes"] is None and r["activation_bytes"] is None
    assert r["missing"] == ["weights_bytes", "activation_bytes"]


def test_no_builder_installed_says_what_to_install(monkeypatch, tmp_path):
    import optimizer.engine.builders as b
    monkeypatch.setattr(b, "_importable", lambda name: False)
    assert b.available_builder() is None
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    with pytest.raises(MissingDependency, match=r"install vitopt\[trt-rtx\] or tensorrt"):
        engine_from_onnx(f, (1, 8))
    with pytest.raises(VitoptError, match="unknown builder"):
        engine_from_onnx(f, (1, 8), builder="onnxruntime")


# ---- with a builder -------------------------------------------------------------------------

@pytest.mark.trt
@needs_builder
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_and_sidecar(tiny_onnx, tmp_path, fp16):
    built = engine_from_onnx(tiny_onnx, (1, 3, 8), fp16=fp16)
    path = save_engine(built, tmp_path / "m.engine")
    assert path.stat().st_size == built.size_bytes > 0
    info = read_sidecar(path)
    assert info == json.loads((tmp_path / "m.engine.json").read_text())
    assert info["builder"]["package"] == BUILDER and info["builder"]["version"]
    assert info["precision"] == ("fp16" if fp16 else "fp32") and info["strongly_typed"] is True
    prof = info["profile"]
    assert (prof["min"], prof["opt"], prof["max"]) == ([1, 3, 32, 32], [3, 3, 32, 32], [8, 3, 32, 32])
    assert info["engine_size_bytes"] == built.size_bytes
    io = {t["name"]: t for t in info["io"]}
    assert io["input"]["mode"] == "input" and io["input"]["dtype"] == "float32"
    assert io["input"]["shape"] == [-1, 3, 32, 32]
    assert io["logits"]["mode"] == "output" and io["logits"]["dtype"] == "float32"  # fp32 I/O even for fp16
    mem = info["memory"]
    # every memory figure is either a number or null with a reason
    assert (mem["weights_bytes"] is not None and mem["activation_bytes"] is not None) or mem["missing_reason"]
    if mem["weights_bytes"] is not None:
        n_params = sum(p.numel() for p in tiny_vit(depth=2).parameters())
        bytes_per = 2 if fp16 else 4
        # weights ~ params x element size (layer norms stay fp32, some constants are added)
        assert 0.5 * n_params * bytes_per < mem["weights_bytes"] < 2.0 * n_params * 4
    assert info["build_seconds"] > 0 and info["engine_sha256"] and info["onnx_sha256"]


@pytest.mark.trt
@needs_builder
def test_build_errors_are_one_line(tmp_path, tiny_onnx):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 definitely not protobuf \xff\xff")
    with pytest.raises(VitoptError, match="not a readable ONNX model") as e:
        engine_from_onnx(corrupt, (1, 8))
    assert "\n" not in str(e.value)
    with pytest.raises(VitoptError, match="not found"):
        engine_from_onnx(tmp_path / "missing.onnx", (1, 8))
    with pytest.raises(VitoptError, match="positive"):
        engine_from_onnx(tiny_onnx, (0, 8))
    # an op no TensorRT parser knows: the parser's first error, on one line
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    bad = tmp_path / "unsupported.onnx"
    bad.write_bytes(m.SerializeToString())
    with pytest.raises(VitoptError, match="cannot parse") as e:
        engine_from_onnx(bad, (1, 8))
    assert "\n" not in str(e.value) and "FancyOp" in str(e.value)


def test_parse_layer_info_counts_layers_kernels_and_constants():
    # two layers share one kernel; the constant read by both counts once (4 x 8 floats + 16 halves)
    report = "\n".join([
        "Name: a, LayerType: gemm, Inputs: [], Constants: [ { Name: w, Dimensions: [4,8], Strides: [8,1], "
        "StrideOrder: [1,0], Datatype: Float, Format: (Linear) Row major linear format }], Outputs: [], "
        "TacticName: __k_0x1, StreamId: 0, Metadata: ",
        "Name: b, LayerType: gemm, Inputs: [], Constants: [ { Name: w, Dimensions: [4,8], Strides: [8,1], "
        "StrideOrder: [1,0], Datatype: Float, Format: x }, { Name: h, Dimensions: [16], Strides: [1], "
        "StrideOrder: [0], Datatype: Half, Format: x }], Outputs: [], TacticName: __k_0x1, StreamId: 0, Metadata: ",
        "Name: c, LayerType: shape_call, Inputs: [], Constants: [], Outputs: [], TacticName: , StreamId: 0, "
        "Metadata: "])
    r = parse_layer_info(["unrelated line", report])
    assert r == {"layers": 3, "layer_types": {"gemm": 2, "shape_call": 1}, "kernels": 1,
                 "constant_bytes": 4 * 8 * 4 + 16 * 2, "constants": 2}
    assert parse_layer_info(["Total Weights Memory: 1 bytes"]) is None


@pytest.mark.trt
@needs_builder
def test_layer_info_accounts_for_the_weights(tiny_onnx):
    """The per-layer report's constants are the weights the builder log counts, and asking for the
    report does not change the engine."""
    built = engine_from_onnx(tiny_onnx, (1, 4), layer_info=True)
    layers = built.info["layers"]
    assert layers is not None and layers["layers"] > 0 and 0 < layers["kernels"] <= layers["layers"]
    weights = built.info["memory"]["weights_bytes"]
    if weights is not None:  # the builder log printed it
        assert abs(layers["constant_bytes"] - weights) <= 0.03 * weights  # + per-layer scalars (alpha, beta)
    n_params = sum(p.numel() for p in tiny_vit(depth=2).parameters())
    assert 0.95 * 4 * n_params <= layers["constant_bytes"] <= 1.05 * 4 * n_params
    plain = engine_from_onnx(tiny_onnx, (1, 4))
    assert "layers" not in plain.info and plain.size_bytes == built.size_bytes


@pytest.mark.trt
@needs_builder
def test_one_compute_capability(tiny_onnx):
    """Kernels for one GPU architecture instead of the builder's default set: the weights are the
    same, the file is no larger; unknown names are one-line errors."""
    import importlib
    trt = importlib.import_module(BUILDER)
    if not hasattr(trt, "ComputeCapability"):
        with pytest.raises(VitoptError, match="cannot target a compute capability"):
            engine_from_onnx(tiny_onnx, (1, 4), compute_capability="SM89")
        return
    with pytest.raises(VitoptError, match="unknown compute capability 'SM1'"):
        engine_from_onnx(tiny_onnx, (1, 4), compute_capability="SM1")
    default = engine_from_onnx(tiny_onnx, (1, 4))
    one = engine_from_onnx(tiny_onnx, (1, 4), compute_capability="sm89")
    assert (default.info["compute_capability"], one.info["compute_capability"]) == ("builder default", "SM89")
    assert one.size_bytes <= default.size_bytes
    assert one.info["memory"]["weights_bytes"] == default.info["memory"]["weights_bytes"]

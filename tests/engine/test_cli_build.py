"""``vitopt build``: engine + sidecar, and one-line exit-2 errors."""
from __future__ import annotations

import json

import pytest

from optimizer.cli.main import main
from optimizer.engine import available_builder
from tests.export.test_cli_export import _one_error_line

BUILDER = available_builder()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from optimizer.export import onnx_from_torch
    from tests.conftest import tiny_vit
    path = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    onnx_from_torch(tiny_vit(depth=1), path)
    return path


def test_build_cli_error_paths(tmp_path, tiny_onnx, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not protobuf\xff")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = str(tmp_path / "m.engine")
    cases = [
        ([str(tmp_path / "missing.onnx"), "-o", out], "ONNX file not found"),
        ([str(tiny_onnx), "-o", out, "--batch", "0,8"], "batch size must be positive, got 0"),
        ([str(tiny_onnx), "-o", out, "--batch", "1,x"], "batch size 'x' is not an integer"),
        ([str(tiny_onnx), "-o", out, "--batch", ","], "no batch sizes given"),
        ([str(tiny_onnx), "-o", out, "--opt-batch", "-2"], "--opt-batch must be positive"),
        ([str(tiny_onnx), "-o", str(blocker / "sub" / "m.engine")], "cannot create output directory"),
    ]
    if BUILDER is not None:
        cases.append(([str(corrupt), "-o", out], "is not a readable ONNX model"))
        cases.append(([str(tiny_onnx), "-o", out, "--batch", "1,8", "--opt-batch", "16"], "outside the profile"))
    for args, msg in cases:
        rc = main(["build"] + args)
        line = _one_error_line(capsys.readouterr().err, "build")
        assert rc == 2 and msg in line, (args, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "corrupt.onnx"]


def test_build_cli_without_builder(tmp_path, tiny_onnx, capsys, monkeypatch):
    import optimizer.engine.builders as b
    monkeypatch.setattr(b, "_importable", lambda name: False)
    rc = main(["build", str(tiny_onnx), "-o", str(tmp_path / "m.engine")])
    line = _one_error_line(capsys.readouterr().err, "build")
    assert rc == 2 and "install vitopt[trt-rtx] or tensorrt" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(BUILDER == "tensorrt", reason="tensorrt is installed, so choosing it cannot fail")
def test_build_cli_named_builder_missing(tmp_path, tiny_onnx, capsys):
    rc = main(["build", str(tiny_onnx), "-o", str(tmp_path / "m.engine"), "--builder", "tensorrt"])
    line = _one_error_line(capsys.readouterr().err, "build")
    assert rc == 2 and "pip install tensorrt" in line


@pytest.mark.trt
@pytest.mark.skipif(BUILDER is None, reason="no TensorRT builder importable (install vitopt[trt-rtx] or tensorrt)")
def test_build_cli_writes_engine_and_sidecar(tmp_path, tiny_onnx, capsys):
    out, js = tmp_path / "m.engine", tmp_path / "r.json"
    rc = main(["build", str(tiny_onnx), "--batch", "1,4", "--fp16", "-o", str(out), "--json", str(js)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "r.json"]
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["precision"] == "fp16" and side["profile"]["max"][0] == 4
    assert side["engine_size_bytes"] == out.stat().st_size
    assert json.loads(js.read_text())["engine_sha256"] == side["engine_sha256"]
    assert "profile input: min [1, 3, 32, 32] opt [4, 3, 32, 32] max [4, 3, 32, 32]" in text

"""serve-prepare / serve-check / bench --backend triton: bad input is one line on stderr and exit 2."""
from __future__ import annotations

import json

import pytest

from optimizer.cli.main import main

from .conftest import needs_schema


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


@needs_schema
def test_prepare_writes_json_and_names_after_the_file(tiny_onnx, tmp_path, capsys):
    _, path = tiny_onnx
    out = tmp_path / "r.json"
    assert main(["serve-prepare", path, "-o", str(tmp_path / "repo"), "--max-batch", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["name"] == "tiny" and res["version"] == 1 and res["config"]["max_batch_size"] == 4
    assert "tiny/1/model.onnx" in res["files"] and "tiny/config.pbtxt" in res["files"]


@pytest.mark.parametrize("argv, message", [
    (["serve-prepare", "{onnx}", "-o", "{tmp}/r", "--name", "a/b"], "is not valid for Triton"),
    (["serve-prepare", "{tmp}/missing.onnx", "-o", "{tmp}/r"], "ONNX model not found"),
    (["serve-prepare", "{onnx}", "-o", "{tmp}/r", "--instances", "0"], "--instances must be positive"),
    (["serve-prepare", "{onnx}", "-o", "{tmp}/r", "--platform", "tensorrt"], "--platform tensorrt serves a TensorRT engine, got an ONNX file"),
    (["serve-prepare", "{onnx}", "-o", "{tmp}/r", "--bench", "{tmp}/none.json"], "--bench result not found"),
    (["serve-prepare", "{onnx}", "-o", "{tmp}/r", "--max-batch", "4", "--preferred", "8"],
     "preferred batch sizes [8] are not in 1..max_batch_size 4"),
    (["serve-check", "{tmp}/no-repo"], "model repository not found"),
    (["serve-check", "{tmp}", "--model", "nope"], "no model 'nope' in"),
    (["serve-check", "{tmp}", "--timeout", "-1"], "--timeout must be positive"),
    (["bench", "{tmp}/m.engine", "--backend", "triton"], "the bundled Triton server has no TensorRT backend"),
    (["bench", "{onnx}", "--concurrency", "2"], "--concurrency / --serve-model apply to --backend triton"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tiny_onnx, tmp_path, capsys):
    if "--bench" in argv or "--preferred" in argv or "--name" in argv:
        pytest.importorskip("tritonclient")
    _, path = tiny_onnx
    (tmp_path / "m.engine").write_bytes(b"x")
    argv = [a.format(onnx=path, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    line = _err(capsys)
    assert line.startswith(f"vitopt {argv[0]}: error:") and message in line, line


@needs_schema
def test_bench_on_a_repository_serves_only_with_triton(tiny_onnx, tmp_path, capsys):
    _, path = tiny_onnx
    assert main(["serve-prepare", path, "-o", str(tmp_path / "repo"), "--max-batch", "4"]) == 0
    assert main(["bench", str(tmp_path / "repo"), "--backend", "onnxruntime"]) == 2
    assert "only --backend triton serves it" in _err(capsys)


def test_serve_modules_import_no_backend():
    import subprocess
    import sys
    heavy = ["torch", "timm", "onnx", "onnxruntime", "tritonclient", "pytriton", "google.protobuf"]
    code = ("import sys, json, optimizer.serve, optimizer.serve.check, optimizer.cli.cmd_serve, "
            "optimizer.runners.triton_runner, optimizer.bench; "
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

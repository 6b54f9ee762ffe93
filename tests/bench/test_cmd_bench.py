"""`vitopt bench`: tables for every batch, TensorRT skip line without a GPU, one-line errors with exit 2."""
from __future__ import annotations

import json

import pytest

from optimizer.cli.main import main
from optimizer.runners import gpu_available
from tests.conftest import tiny_vit

FAST = ["--iters", "3", "--warmup", "1", "--min-time", "0"]
SKIP_LINE = "tensorrt: skipped, engine cannot run here (no NVIDIA GPU)"


def _table_batches(stdout, backend):
    """Batch column of the main table's rows for ``backend`` (runner name == backend in vitopt bench)."""
    return [ln.split("|")[4].strip() for ln in stdout.splitlines() if ln.startswith(f"| {backend} | {backend} |")]


def test_bench_onnx_with_trt_skip(tiny_onnx, tmp_path, capsys):
    if gpu_available():
        pytest.skip("a CUDA GPU is present: the tensorrt backend would run instead of being skipped")
    _, path = tiny_onnx
    js, md = tmp_path / "out" / "b.json", tmp_path / "out" / "b.md"
    rc = main(["bench", path, "--backend", "onnxruntime,tensorrt", "--batch", "1,2", "--threads", "1",
               "--json", str(js), "--markdown", str(md)] + FAST)
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines().count(SKIP_LINE) == 1
    assert _table_batches(out, "onnxruntime") == ["1", "2"]
    data = json.loads(js.read_text())
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    assert all(r["iters"] == 3 and r["env"]["threads"] == 1 for r in data["rows"])
    assert data["skipped"] == [{"backend": "tensorrt", "reason": "no NVIDIA GPU"}]
    assert data["settings"]["ort_allow_spinning"] is False
    assert _table_batches(md.read_text(), "onnxruntime") == ["1", "2"]


def test_bench_model_dir_torch_and_exported_ort(tmp_path, capsys):
    """A compressed-model directory (zero steps: a tiny ViT) runs in torch and, exported, in ORT."""
    from safetensors.torch import save_file
    from optimizer.compress.api import RECIPE_VERSION
    kw = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)
    d = tmp_path / "tinydir"
    d.mkdir()
    (d / "recipe.json").write_text(json.dumps({"format": "vitopt-recipe", "version": RECIPE_VERSION,
                                               "arch": "vit_tiny_patch16_224", "model_kwargs": kw,
                                               "base_weights": "random", "steps": [], "reports": []}))
    save_file({k: v.contiguous() for k, v in tiny_vit().state_dict().items()}, str(d / "model.safetensors"))
    js = tmp_path / "r.json"
    rc = main(["bench", str(d), "--backend", "torch,onnxruntime", "--batch", "2", "--interleaved",
               "--json", str(js)] + FAST)
    cap = capsys.readouterr()
    assert rc == 0
    assert _table_batches(cap.out, "torch") == ["2"] and _table_batches(cap.out, "onnxruntime") == ["2"]
    assert "exporting vit_tiny_patch16_224 to a temporary ONNX file" in cap.err
    inter = json.loads(js.read_text())["interleaved"]
    assert inter["reference"] == "torch" and [r["name"] for r in inter["rows"]] == ["torch", "onnxruntime"]
    assert inter["rows"][0]["speedup"] == 1.0 and all(r["iters"] == 10 for r in inter["rows"])
    assert "speedup vs torch" in cap.out


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "ONNX model not found"),
    (["{onnx}", "--batch", "0"], "batch size must be positive"),
    (["{onnx}", "--batch", "1,x"], "is not an integer"),
    (["{onnx}", "--backend", "foo"], "unknown backend 'foo'"),
    (["{onnx}", "--backend", "torch"], "backend torch needs a timm model name"),
    (["{onnx}", "--iters", "0"], "--iters must be positive"),
    (["{onnx}", "--warmup", "-1"], "--warmup must be a non-negative integer"),
    (["{onnx}", "--min-time", "inf"], "--min-time must be a finite number"),
    (["{onnx}", "--threads", "0"], "--threads must be positive"),
    (["{corrupt}"], "cannot load ONNX model"),
    (["{engine}", "--backend", "onnxruntime"], "cannot run the TensorRT engine"),
    (["{onnx}", "--images", "{missing}"], "--images directory not found"),
    (["no_such_model_xyz"], "unknown model 'no_such_model_xyz'"),
])
def test_bench_errors_are_one_line(tiny_onnx, tmp_path, capsys, argv, message):
    _, path = tiny_onnx
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"garbage, not a protobuf")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 8)
    names = {"missing": str(tmp_path / "missing.onnx"), "onnx": path, "corrupt": str(corrupt), "engine": str(engine)}
    js = tmp_path / "res.json"
    rc = main(["bench"] + FAST + [a.format(**names) for a in argv] + ["--json", str(js)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("vitopt bench: error:") and message in err[-1]
    assert not [ln for ln in err if "error" in ln][1:]  # exactly one error line
    assert not js.exists() and not list(tmp_path.glob(".res.json*"))  # nothing half-written


def test_bench_engine_without_gpu_is_skipped_not_crashed(tmp_path, capsys):
    if gpu_available():
        pytest.skip("a CUDA GPU is present: the engine would really be run")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 8)
    rc = main(["bench", str(engine)] + FAST)
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.out.strip() == SKIP_LINE
    assert cap.err.strip() == "vitopt bench: error: nothing was benchmarked: every requested backend was skipped"


def test_bench_times_real_images(tiny_onnx, image_folder, tmp_path, capsys):
    _, path = tiny_onnx
    js = tmp_path / "b.json"
    rc = main(["bench", path, "--batch", "1,4", "--threads", "1", "--images", str(image_folder),
               "--json", str(js)] + FAST)
    err = capsys.readouterr().err
    assert rc == 0
    res = json.loads(js.read_text())
    # 7 files, one corrupt: 4 evenly spaced picks, the corrupt one dropped by the collate at most
    assert res["settings"]["inputs"].endswith(f"images from {image_folder}")
    n = int(res["settings"]["inputs"].split()[0])
    assert 3 <= n <= 4 and "ImageNet mean/std at 32x32" in err
    assert sorted(r["batch"] for r in res["rows"]) == [1, 4]

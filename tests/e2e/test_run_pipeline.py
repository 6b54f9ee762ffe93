"""`vitopt run` end to end: tiny ViT (fast) and DeiT-Tiny with the real weights (slow)."""
import json

import pytest

from optimizer.cli.main import main
from optimizer.fileio import sha256_file

TINY = ("model: vit_tiny_patch16_224\n"
        "model_kwargs: {depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 10}\n")


def _has_builder():
    from optimizer.engine import available_builder
    return available_builder() is not None


def test_tiny_run_writes_manifest_with_hashes(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    build = "  - build: {batch: [1, 4], precision: [fp32, fp16]}\n" if _has_builder() else ""
    recipe.write_text(TINY + "steps:\n  - eval\n  - export: {opset: 18}\n" + build +
                      "  - bench: {backends: [onnxruntime, torch, tensorrt], batch: [1, 2], iters: 3, warmup: 1}\n")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    names = {a["path"] for a in m["artifacts"]}
    assert {"model.onnx", "model.fp16.onnx", "bench.md"} <= names
    for a in m["artifacts"]:
        assert sha256_file(out / a["path"]) == a["sha256"]
    export = next(s for s in m["steps"] if s["step"] == "export")["result"]
    assert export["parity"]["max_abs_diff"] <= 1e-4 and export["parity"]["inputs"].startswith("random inputs")
    assert m["model"]["random_weights"] is True
    bench = next(s for s in m["steps"] if s["step"] == "bench")["result"]
    assert {(r["backend"], r["batch"]) for r in bench["rows"]} >= {("onnxruntime", 1), ("onnxruntime", 2),
                                                                  ("torch", 1), ("torch", 2)}
    if build:
        assert {"model.fp32.engine", "model.fp32.engine.json", "model.fp16.engine"} <= names
        side = json.loads((out / "model.fp16.engine.json").read_text())
        assert side["precision"] == "fp16" and side["onnx"] == "model.fp16.onnx"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_run_leaves_nothing(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY + "steps:\n  - eval\n  - build: {batch: [1]}\n")  # build before export
    rc = main(["run", str(recipe), "-o", str(tmp_path / "out")])
    assert rc == 2 and "build step needs an export step" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.slow
def test_deit_tiny_demo_path(tmp_path, capsys, shared_weights, mini_val, monkeypatch):
    monkeypatch.setenv("VITOPT_CHECKPOINT", shared_weights)
    monkeypatch.setenv("VITOPT_DATA", mini_val)
    recipe = tmp_path / "r.yaml"
    build = "  - build: {batch: [1, 8, 32], precision: [fp32, fp16]}\n" if _has_builder() else ""
    recipe.write_text("model: deit_tiny_patch16_224\ncheckpoint: ${VITOPT_CHECKPOINT}\ndata: ${VITOPT_DATA}\n"
                      "steps:\n  - eval: {limit: 64}\n  - export: {opset: 18, parity_images: 16}\n" + build +
                      "  - bench: {backends: [onnxruntime], batch: [1, 8, 32], iters: 3, warmup: 1}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "out"), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    steps = {s["step"]: s["result"] for s in m["steps"]}
    assert steps["eval"]["gmacs"] == pytest.approx(1.258, abs=1e-3) and steps["eval"]["top1"] > 80
    par = steps["export"]["parity"]
    assert par["max_abs_diff"] <= 1e-4 and par["inputs"].startswith("real images")
    rows = steps["bench"]["rows"]
    assert {r["batch"] for r in rows} == {1, 8, 32}
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)
    if build:
        for prec in ("fp32", "fp16"):
            side = steps["build"][prec]
            assert side["profile"]["min"][0] == 1 and side["profile"]["max"][0] == 32
            assert side["memory"]["weights_bytes"] > 0 and side["memory"]["activation_bytes"] > 0

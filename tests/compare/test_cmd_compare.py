"""``vitopt compare``: a faithful export passes (exit 0), a perturbed one fails (exit 1) naming the
output, bad input is one line and exit 2, and the JSON result has a fixed schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

from optimizer.cli.main import main
from optimizer.tolerances import TOLERANCES
from tests.conftest import tiny_vit

ARGS = ["--model", "vit_tiny_patch16_224", "--images", "6", "--batch", "4"]


@pytest.fixture
def tiny_loader(monkeypatch):
    """--model loads the tiny ViT the artifact was exported from (the CLI path is otherwise unchanged)."""
    from optimizer.models.loading import LoadedModel
    import optimizer.cli.cmd_compare as cmd
    model = tiny_vit(depth=2)
    monkeypatch.setattr(cmd, "load_model_from_args", lambda args: LoadedModel(model, "vit_tiny_patch16_224", "random"))
    return model


@pytest.fixture
def exported(tmp_path, tiny_loader):
    from optimizer.export import onnx_from_torch
    path = tmp_path / "m.onnx"
    onnx_from_torch(tiny_loader, path, dynamo=False)
    return path


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("vitopt compare: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_faithful_export_passes_with_schema(exported, image_folder, tmp_path, capsys):
    js = tmp_path / "r.json"
    rc = main(["compare", str(exported), "--data", str(image_folder), "--json", str(js)] + ARGS)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "onnxruntime vs torch" in out and out.strip().endswith("PASS")
    r = json.loads(js.read_text())
    assert set(r) == {"format", "version", "artifact", "kind", "precision", "tolerance", "reference", "model",
                      "inputs", "comparisons", "failing", "passed", "environment"}
    assert (r["format"], r["kind"], r["precision"], r["reference"], r["passed"]) == \
        ("vitopt-compare", "onnx", "fp32", "torch", True)
    assert r["tolerance"] == TOLERANCES["fp32"].to_dict() and r["failing"] == []
    assert r["inputs"]["images"] == 5  # 6 files picked evenly, one of the fixture's images is corrupt
    [c] = r["comparisons"]
    assert (c["backend"], c["against"], list(c["outputs"])) == ("onnxruntime", "torch", ["logits"])
    fig = c["outputs"]["logits"]
    for key in ("max_abs", "mean_abs", "median_abs", "max_rel", "mean_rel", "median_rel", "cosine",
                "min_sample_cosine", "top1_agreement"):
        assert isinstance(fig[key], float), key
    assert fig["shape"] == [5, 10] and fig["max_abs"] < 1e-4 and fig["top1_agreement"] == 1.0


def test_perturbed_graph_fails_naming_the_output(exported, image_folder, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(str(exported))
    # scale the classifier weight by 1.01: every logit moves, the argmax mostly survives
    head = max((i for i in proto.graph.initializer if len(i.dims) == 2), key=lambda i: i.dims[0] == 10)
    w = numpy_helper.to_array(head) * np.float32(1.01)
    head.CopyFrom(numpy_helper.from_array(w, head.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(proto, str(bad))
    js = tmp_path / "r.json"
    rc = main(["compare", str(bad), "--data", str(image_folder), "--json", str(js)] + ARGS)
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL: onnxruntime:logits outside the fp32 tolerance" in out
    r = json.loads(js.read_text())
    assert not r["passed"] and r["failing"] == ["onnxruntime:logits"]
    assert r["comparisons"][0]["outputs"]["logits"]["failures"][0].startswith("max |diff|")


def test_precision_comes_from_the_artifact(exported, image_folder, tmp_path, capsys):
    """An fp16 graph is held to the fp16 row it records, --precision picks another row, --atol overrides."""
    import onnx
    from optimizer.graph import convert_to_fp16
    f16 = tmp_path / "m16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(exported))), str(f16))
    js = tmp_path / "r.json"
    assert main(["compare", str(f16), "--data", str(image_folder), "--json", str(js)] + ARGS) == 0
    r = json.loads(js.read_text())
    assert (r["precision"], r["tolerance"]) == ("fp16", TOLERANCES["fp16"].to_dict())
    assert 0 < r["comparisons"][0]["outputs"]["logits"]["max_abs"]  # really computed in fp16
    assert main(["compare", str(f16), "--data", str(image_folder), "--precision", "fp32", "--json", str(js)]
                + ARGS) in (0, 1)
    assert json.loads(js.read_text())["tolerance"] == TOLERANCES["fp32"].to_dict()
    # fp16 rounding is far above 1e-7: an explicit atol/rtol that tight fails the same file
    assert main(["compare", str(f16), "--data", str(image_folder), "--precision", "fp32", "--atol", "1e-7",
                 "--rtol", "0"] + ARGS) == 1
    capsys.readouterr()


def test_bad_input_is_one_line_exit_2(exported, image_folder, tmp_path, capsys, monkeypatch):
    from optimizer.export import onnx_from_torch
    wide = tmp_path / "wide.onnx"  # exported at 48 px; --model's transform makes 32 px images
    onnx_from_torch(tiny_vit(depth=1, img_size=48), wide, dynamo=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    monkeypatch.setattr("optimizer.runners.gpu_available", lambda: False)
    cases = [
        ([str(wide)] + ARGS, "expects inputs of shape 3x48x48"),
        ([str(garbage)] + ARGS, "is not a readable ONNX model"),
        ([str(tmp_path / "missing.onnx")] + ARGS, "artifact not found"),
        ([str(engine)] + ARGS, "NVIDIA GPU"),
        ([str(exported), "--backends", "onnxruntime"], "nothing to compare"),
        ([str(exported), "--backends", "tvm"] + ARGS, "unknown backend 'tvm'"),
    ]
    for argv, expected in cases:
        js = tmp_path / "never.json"
        rc = main(["compare"] + argv + ["--data", str(image_folder), "--json", str(js)])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and expected in line, (argv, line)
        assert not js.exists()

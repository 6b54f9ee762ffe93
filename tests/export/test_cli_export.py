"""``vitopt export``: success paths on a tiny ViT, error paths exit 2 with one line and no file."""
from __future__ import annotations

import json

import pytest

from optimizer.cli.main import main
from tests.conftest import tiny_vit


@pytest.fixture
def tiny_loader(monkeypatch):
    """Make --model load a tiny ViT (the CLI path is otherwise unchanged)."""
    from optimizer.models.loading import LoadedModel
    import optimizer.cli.cmd_export as cmd
    monkeypatch.setattr(cmd, "load_model_from_args",
                        lambda args: LoadedModel(tiny_vit(depth=2), "vit_tiny_patch16_224", "random"))


def _one_error_line(err: str, cmd: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"vitopt {cmd}: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("extra", [[], ["--legacy"], ["--fp16"], ["--no-cleanup"]],
                         ids=["default", "legacy", "fp16", "no-cleanup"])
def test_export_cli_writes_checked_onnx(tmp_path, tiny_loader, capsys, monkeypatch, extra):
    import onnx
    from optimizer.export import get_metadata
    monkeypatch.delenv("VITOPT_DATA", raising=False)
    out, js = tmp_path / "m.onnx", tmp_path / "r.json"
    rc = main(["export", "--model", "vit_tiny_patch16_224", "-o", str(out), "--json", str(js),
               "--parity-data", ""] + extra)
    text = capsys.readouterr().out
    assert rc == 0
    assert "random inputs" in text  # says so when no real images are used
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]
    r = json.loads(js.read_text())
    assert r["parity_export"]["passed"] and r["parity_export"]["max_abs_diff"] <= 1e-4
    assert r["export"]["exporter"] == ("torchscript" if "--legacy" in extra else "dynamo")
    meta = get_metadata(onnx.load(str(out)))
    assert meta["vitopt.precision"] == ("fp16" if "--fp16" in extra else "fp32")
    if "--no-cleanup" in extra:
        assert "cleanup" not in r and "before" not in text
    else:
        assert r["parity_cleaned"]["passed"] and r["cleanup"]["nodes_after"] < r["cleanup"]["nodes_before"]
        assert "before   after" in text and "total" in text  # the op histogram table
    if "--fp16" in extra:
        assert r["parity_fp16"]["cosine"] > 0.999


def test_export_cli_error_paths(tmp_path, tiny_loader, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (["-o", str(blocker / "sub" / "m.onnx")], "cannot create output directory"),
        (["-o", str(tmp_path)], "is a directory"),
        (["-o", str(tmp_path / "m.onnx"), "--opset", "0"], "--opset must be positive"),
        (["-o", str(tmp_path / "m.onnx"), "--opset", "7"], "opset must be an integer in 13..23"),
        (["-o", str(tmp_path / "m.onnx"), "--parity-data", str(tmp_path / "nodata")], "parity data directory not found"),
        (["-o", str(tmp_path / "m.onnx"), "--atol", "-1"], "--atol must be positive"),
    ]
    for extra, msg in cases:
        rc = main(["export", "--model", "vit_tiny_patch16_224"] + extra)
        line = _one_error_line(capsys.readouterr().err, "export")
        assert rc == 2 and msg in line, (extra, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing partial left behind


def test_export_cli_missing_checkpoint(tmp_path, capsys):
    rc = main(["export", "--model", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "w.pth"),
               "-o", str(tmp_path / "m.onnx")])
    line = _one_error_line(capsys.readouterr().err, "export")
    assert rc == 2 and "checkpoint not found" in line
    assert list(tmp_path.iterdir()) == []


def test_export_cli_parity_on_image_folder(tmp_path, image_folder, capsys, monkeypatch):
    from optimizer.models.loading import LoadedModel
    import optimizer.cli.cmd_export as cmd
    model = tiny_vit(depth=1)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))  # timm keeps 224 otherwise
    monkeypatch.setattr(cmd, "load_model_from_args", lambda args: LoadedModel(model, "vit_tiny_patch16_224", "random"))
    monkeypatch.setenv("VITOPT_DATA", str(image_folder))  # the default of --parity-data
    js = tmp_path / "r.json"
    rc = main(["export", "--model", "vit_tiny_patch16_224", "-o", str(tmp_path / "m.onnx"), "--json", str(js),
               "--parity-images", "7"])
    out = capsys.readouterr().out
    assert rc == 0
    # 7 files, one of them not an image: the parity check runs on the 6 readable ones
    assert f"6 images from {image_folder}" in out
    r = json.loads(js.read_text())
    assert r["parity_export"]["batch"] == 6 and r["parity_export"]["passed"]

"""onnx_from_torch / check_parity on tiny ViTs and per-block pruned ViTs."""
from __future__ import annotations

import pytest
import torch

from optimizer.errors import VitoptError
from optimizer.export import check_parity, get_metadata, onnx_from_torch
from tests.conftest import tiny_vit
from tests.export.models import TOLERANCES, pruned_tiny_vit

ATOL = TOLERANCES["fp32_export_atol"]


def _load(path):
    import onnx
    return onnx.load(str(path))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_export_dynamic_batch_parity(tmp_path, dynamo):
    model = tiny_vit()
    path = tmp_path / "m.onnx"
    info = onnx_from_torch(model, path, dynamo=dynamo, opset=18, description="tiny test vit")
    assert info.exporter == ("dynamo" if dynamo else "torchscript") and info.fallback_reason is None
    # one self-contained file, nothing else beside it (no external data, no temporaries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert info.size_bytes == path.stat().st_size
    proto = _load(path)
    assert [i.name for i in proto.graph.input] == ["input"] and proto.graph.output[0].name == "logits"
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    meta = get_metadata(proto)
    assert meta["vitopt.exporter"] == info.exporter
    assert meta["vitopt.opset"] == "18"
    assert meta["vitopt.model"] == "tiny test vit"
    assert "vitopt.version" in meta and "vitopt.torch_version" in meta
    for b in (1, 3, 8):
        res = check_parity(model, path, torch.randn(b, 3, 32, 32), atol=ATOL)
        assert res.passed and res.batch == b and res.max_abs_diff <= ATOL and res.cosine > 0.99999


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_export_pruned_blocks(tmp_path, dynamo):
    """Blocks with different head counts / head dims / MLP widths / token selections export exactly."""
    model = pruned_tiny_vit()
    torch.manual_seed(1)
    path = tmp_path / "p.onnx"
    onnx_from_torch(model, path, dynamo=dynamo)
    proto = _load(path)
    # per-block widths survive as weight shapes: MLP hidden 100 / 64 / 256
    from onnx import numpy_helper
    shapes = {tuple(numpy_helper.to_array(i).shape) for i in proto.graph.initializer}
    assert any(100 in s for s in shapes) and any(64 in s and 3 * 2 * 16 in s for s in shapes)
    for b in (1, 3, 8):
        res = check_parity(model, path, torch.randn(b, 3, 32, 32), atol=ATOL)
        assert res.passed, res


def test_parity_detects_a_wrong_model(tmp_path):
    model = tiny_vit()
    path = tmp_path / "m.onnx"
    onnx_from_torch(model, path)
    with torch.no_grad():
        model.head.bias += 0.01
    x = torch.randn(2, 3, 32, 32)
    res = check_parity(model, path, x, raise_on_fail=False)
    assert not res.passed and res.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(VitoptError, match="differs from PyTorch"):
        check_parity(model, path, x)


class _DataDependent(torch.nn.Module):
    """Python branching on a tensor value: torch.export refuses it, the tracer bakes one branch in."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def test_dynamo_failure_falls_back_loudly(tmp_path):
    path = tmp_path / "f.onnx"
    with pytest.warns(UserWarning, match="falling back to the TorchScript exporter"):
        info = onnx_from_torch(_DataDependent(), path, example_shape=(4,))
    assert info.exporter == "torchscript" and info.fallback_reason.startswith("dynamo exporter failed")
    meta = get_metadata(_load(path))
    assert meta["vitopt.exporter"] == "torchscript"
    assert meta["vitopt.exporter_fallback_reason"] == info.fallback_reason
    with pytest.raises(VitoptError, match="dynamo ONNX export failed"):
        onnx_from_torch(_DataDependent(), tmp_path / "g.onnx", example_shape=(4,), fallback=False)
    assert not (tmp_path / "g.onnx").exists()


def test_bad_arguments_and_unwritable_output(tmp_path):
    model = tiny_vit()
    with pytest.raises(VitoptError, match="opset"):
        onnx_from_torch(model, tmp_path / "a.onnx", opset=7)
    with pytest.raises(VitoptError, match="example_batch"):
        onnx_from_torch(model, tmp_path / "a.onnx", example_batch=1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(VitoptError, match="cannot create output directory"):
        onnx_from_torch(model, blocker / "sub" / "a.onnx")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os
        if os.access(ro, os.W_OK):
            pytest.skip("running as root, who can write to read-only directories; run as a normal user to exercise it")
        with pytest.raises(VitoptError, match="not writable"):
            onnx_from_torch(model, ro / "a.onnx")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_parity_missing_or_corrupt_file(tmp_path):
    model = tiny_vit()
    with pytest.raises(VitoptError, match="not found"):
        check_parity(model, tmp_path / "nope.onnx", torch.randn(1, 3, 32, 32))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(VitoptError, match="cannot load"):
        check_parity(model, bad, torch.randn(1, 3, 32, 32))

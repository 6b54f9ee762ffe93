"""Sliced tiny ViTs with different shapes in every block export to ONNX, pass parity, build engines."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.methods.slim import slice_model
from optimizer.methods.slim.budget import Geometry, solve_budget
from tests.conftest import tiny_vit
from tests.slim.test_slim_core import ALL, random_ranking


@pytest.fixture(scope="module")
def sliced_tiny():
    model = tiny_vit(depth=4)
    geo = Geometry.of(copy.deepcopy(model))
    plan, _ = solve_budget(random_ranking(geo, 7), geo, "macs", 0.55, "per_type", 8, ALL)
    shapes = [(p.num_heads, p.head_dim, len(p.units), len(p.tokens)) for p in plan]
    assert len(set(shapes)) == len(shapes), shapes          # every block its own shape
    return slice_model(copy.deepcopy(model), plan, geo).eval()


@pytest.mark.parametrize("dynamo", [True, False])
def test_sliced_model_exports_with_parity(sliced_tiny, tmp_path, dynamo):
    from optimizer.export import check_parity, onnx_from_torch
    path = tmp_path / "m.onnx"
    info = onnx_from_torch(sliced_tiny, path, dynamo=dynamo, fallback=False)
    assert info.exporter == ("dynamo" if dynamo else "torchscript")
    res = check_parity(sliced_tiny, path, torch.randn(5, 3, 32, 32), atol=1e-4)
    assert res.passed and res.max_abs_diff <= 1e-4
    import onnx
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Gather" in ops          # the static token gathers


@pytest.mark.trt
def test_sliced_model_builds_engine(sliced_tiny, tmp_path):
    from optimizer.engine import available_builder, engine_from_onnx
    from optimizer.export import onnx_from_torch
    if available_builder() is None:
        pytest.skip("no TensorRT builder importable (pip install tensorrt-rtx to run this test)")
    path = tmp_path / "m.onnx"
    onnx_from_torch(sliced_tiny, path)
    built = engine_from_onnx(path, batch_sizes=(1, 4))
    assert built.size_bytes > 0

"""End to end on the real DeiT-Tiny: slim with per-block shapes (tokens too) -> ONNX parity -> TensorRT engine."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.counting import count_macs
from optimizer.methods.slim import slice_model
from optimizer.methods.slim.budget import Geometry, Ranking, solve_budget


@pytest.fixture(scope="module")
def sliced_deit(tmp_path_factory):
    from tests.conftest import DEIT_TINY_WEIGHTS, SKIP_SHARED
    if not DEIT_TINY_WEIGHTS.is_file():
        pytest.skip(SKIP_SHARED)
    from optimizer.models.loading import load_model
    from optimizer.methods.slim.baseline import magnitude_importance
    dense = load_model("deit_tiny_patch16_224", str(DEIT_TINY_WEIGHTS)).model
    geo = Geometry.of(copy.deepcopy(dense))
    mag = magnitude_importance(copy.deepcopy(dense))
    g = torch.Generator().manual_seed(0)
    # magnitude for widths; a synthetic monotone token ranking so that every block also gathers tokens
    tok = 1e7 * torch.rand(len(geo.blocks), geo.num_tokens, generator=g).sort(0, descending=True).values
    rank = Ranking(mag.attn_score, mag.mlp_score, tok)
    plan, counts = solve_budget(rank, geo, "macs", 0.6, "per_type", 8, {"attn": True, "mlp": True, "token": True})
    model = slice_model(copy.deepcopy(dense), plan, geo).eval()
    onnx_path = tmp_path_factory.mktemp("deit") / "slim.onnx"
    return dense, model, plan, counts, onnx_path


@pytest.mark.slow
def test_deit_tiny_slim_exports_with_parity(sliced_deit, mini_val):
    from optimizer.data import build_loader
    from optimizer.export import check_parity, onnx_from_torch
    dense, model, plan, counts, onnx_path = sliced_deit
    assert len({(p.num_heads, p.head_dim, len(p.units), len(p.tokens)) for p in plan}) >= 6
    assert count_macs(model).macs == pytest.approx(counts["macs"], abs=0.5)
    assert abs(counts["macs_ratio"] - 0.6) <= 0.012
    onnx_from_torch(model, onnx_path)
    x = next(iter(build_loader(mini_val, model, batch_size=4, workers=0, labeled=False))).images
    res = check_parity(model, onnx_path, x, atol=1e-4)
    assert res.passed


@pytest.mark.slow
@pytest.mark.trt
def test_deit_tiny_slim_builds_engine(sliced_deit):
    from optimizer.engine import available_builder, engine_from_onnx
    from optimizer.export import onnx_from_torch
    if available_builder() is None:
        pytest.skip("no TensorRT builder importable (pip install tensorrt-rtx to run this test)")
    _, model, _, _, onnx_path = sliced_deit
    if not onnx_path.is_file():
        onnx_from_torch(model, onnx_path)
    built = engine_from_onnx(onnx_path, batch_sizes=(1, 8))
    assert built.size_bytes > 0
    assert built.info["memory"]["activation_bytes"] is None or built.info["memory"]["activation_bytes"] > 0

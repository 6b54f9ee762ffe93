"""ViT-Slim core: sliced == hard-masked model, scale, budget, monotone tokens, counts, save/restore."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.counting import count_macs
from optimizer.errors import VitoptError
from optimizer.methods.slim import SearchModel, SlimConfig, rebuild, slice_model, structure_from_plan
from optimizer.methods.slim.budget import Geometry, Ranking, plan_counts, solve_budget
from tests.conftest import tiny_vit


def random_ranking(geo, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = len(geo.blocks)
    b = geo.blocks[0]
    return Ranking([torch.rand(b.num_heads, b.head_dim, generator=g) for _ in range(L)],
                   [torch.rand(b.hidden, generator=g) for _ in range(L)],
                   # token units cost ~ a whole block per token: scale their values alike
                   50 * torch.rand(L, geo.num_tokens, generator=g).sort(0, descending=True).values)


ALL = {"attn": True, "mlp": True, "token": True}


def masked_and_sliced(model, plan, geo, seed=1):
    """The hard-masked search model (random mask values on kept units) and the sliced model."""
    g = torch.Generator().manual_seed(seed)
    sm = SearchModel(copy.deepcopy(model)).eval()
    attn_vals, mlp_vals = [], []
    with torch.no_grad():
        for blk, p in zip(sm.sblocks, plan):
            keep = torch.zeros_like(blk.mask_attn, dtype=torch.bool)
            for h, dims in zip(p.heads, p.dims):
                keep[h, dims] = True
            vals = 0.5 + torch.rand(blk.mask_attn.shape, generator=g)
            blk.mask_attn.copy_(vals * keep)
            keep_m = torch.zeros_like(blk.mask_mlp, dtype=torch.bool)
            keep_m[p.units] = True
            mv = 0.5 + torch.rand(blk.mask_mlp.shape, generator=g)
            blk.mask_mlp.copy_(mv * keep_m)
            attn_vals.append(vals)
            mlp_vals.append(mv)
    sm.set_hard([p.tokens for p in plan])
    sliced = slice_model(copy.deepcopy(model), plan, geo, attn_vals, mlp_vals).eval()
    return sm, sliced


@pytest.mark.parametrize("mode", ["global", "per_type"])
def test_sliced_equals_masked_with_different_shapes_per_block(mode):
    model = tiny_vit(depth=4)
    geo = Geometry.of(copy.deepcopy(model))
    plan, counts = solve_budget(random_ranking(geo), geo, "macs", 0.55, mode, 8, ALL)
    shapes = {(p.num_heads, p.head_dim, len(p.units), len(p.tokens)) for p in plan}
    assert len(shapes) >= 3, shapes
    sm, sliced = masked_and_sliced(model, plan, geo)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (sm(x) - sliced(x)).abs().max().item()
    assert diff <= 1e-4
    # and the sliced model is really smaller, counted from what executes
    measured = count_macs(sliced)
    assert measured.macs == pytest.approx(counts["macs"], abs=0.5)
    assert measured.params == counts["params"]


def test_attention_scale_is_the_original_head_dims():
    model = tiny_vit(depth=3)
    geo = Geometry.of(copy.deepcopy(model))
    plan, _ = solve_budget(random_ranking(geo), geo, "macs", 0.5, "per_type", 8, ALL)
    sliced = slice_model(copy.deepcopy(model), plan, geo)
    assert any(b.attn.head_dim != 16 for b in sliced.blocks)
    for b in sliced.blocks:
        assert b.attn.scale == pytest.approx(16 ** -0.5)


@pytest.mark.parametrize("target", [0.5, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("mode", ["global", "per_type"])
def test_budget_met_within_two_percent_after_rounding(target, mode):
    model = tiny_vit(depth=4, embed_dim=96, num_heads=3, mlp_ratio=4.0)
    geo = Geometry.of(copy.deepcopy(model))
    plan, counts = solve_budget(random_ranking(geo, 3), geo, "macs", target, mode, 8, ALL)
    assert abs(counts["macs_ratio"] - target) <= 0.02 * target
    for p in plan:
        assert (p.num_heads * p.head_dim) % 8 == 0 and len(p.units) % 8 == 0
        assert all(len(d) == p.head_dim for d in p.dims)
    sliced = slice_model(copy.deepcopy(model), plan, geo)
    assert count_macs(sliced).macs / geo.dense_macs == pytest.approx(counts["macs_ratio"], rel=1e-9)


def test_params_budget_met():
    model = tiny_vit(depth=3)
    geo = Geometry.of(copy.deepcopy(model))
    plan, counts = solve_budget(random_ranking(geo), geo, "params", 0.7, "global", 8,
                                {"attn": True, "mlp": True, "token": False})
    sliced = slice_model(copy.deepcopy(model), plan, geo)
    ratio = sum(p.numel() for p in sliced.parameters()) / geo.dense_params
    assert abs(ratio - 0.7) <= 0.02 * 0.7 and ratio == pytest.approx(counts["params_ratio"])


def test_tokens_monotone_over_depth_and_class_token_kept():
    model = tiny_vit(depth=4)
    geo = Geometry.of(copy.deepcopy(model))
    rank = random_ranking(geo)
    rank.token = torch.rand(rank.token.shape, generator=torch.Generator().manual_seed(5))  # not monotone
    plan, _ = solve_budget(rank, geo, "macs", 0.5, "global", 8, ALL)
    for prev, cur in zip(plan, plan[1:]):
        assert set(cur.tokens) <= set(prev.tokens)
    assert all(0 in p.tokens for p in plan)
    assert len(plan[-1].tokens) < geo.num_tokens


def test_unmeetable_budget_is_a_clear_error():
    model = tiny_vit(depth=2)
    geo = Geometry.of(copy.deepcopy(model))
    with pytest.raises(VitoptError, match="cannot meet macs ratio 0.05"):
        solve_budget(random_ranking(geo), geo, "macs", 0.05, "global", 8, {"attn": False, "mlp": True, "token": False})


def test_structure_rebuild_round_trip_equal_outputs(tmp_path):
    from optimizer.compress import CompressedModel, load_compressed, save_compressed
    model = tiny_vit(depth=3)
    geo = Geometry.of(copy.deepcopy(model))
    plan, _ = solve_budget(random_ranking(geo), geo, "macs", 0.6, "global", 8, ALL)
    sliced = slice_model(copy.deepcopy(model), plan, geo).eval()
    structure = structure_from_plan(plan, geo)
    kwargs = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)
    cm = CompressedModel(sliced, "vit_tiny_patch16_224", kwargs,
                         [{"method": "slim", "config": SlimConfig(macs_ratio=0.6).to_dict(), "structure": structure}])
    save_compressed(tmp_path / "m", cm)
    loaded = load_compressed(tmp_path / "m").model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), sliced(x))
    for a, b in zip(loaded.blocks, sliced.blocks):
        assert (a.attn.num_heads, a.attn.head_dim, a.attn.scale) == (b.attn.num_heads, b.attn.head_dim, b.attn.scale)
        assert a.token_positions == b.token_positions


def test_rebuild_rejects_foreign_structure():
    with pytest.raises(VitoptError, match="not a slim structure"):
        rebuild(tiny_vit(), {"blocks": []})


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one budget"):
        SlimConfig()
    with pytest.raises(ValueError, match="exactly one budget"):
        SlimConfig(macs_ratio=0.5, params_ratio=0.5)
    with pytest.raises(ValueError, match="ranking must be one of"):
        SlimConfig(macs_ratio=0.5, ranking="best")
    with pytest.raises(VitoptError, match="unknown slim option"):
        SlimConfig.from_dict({"macs_ratio": 0.5, "macs": 0.5})
    with pytest.raises(VitoptError, match="macs_ratio must be in"):
        SlimConfig.from_dict({"macs_ratio": "1.5"})
    assert SlimConfig.from_dict({"macs_ratio": "0.7", "multiple": "16"}).multiple == 16

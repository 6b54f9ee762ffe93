"""LowRankLinear: merged form, MACs, rebuild/save/restore, and replay after a hand-sliced block."""
import copy

import pytest
import torch
import torch.nn as nn

from optimizer.counting import count_macs, count_params
from optimizer.errors import VitoptError
from optimizer.methods.lowrank import LowRankConfig, LowRankLinear, factorize_linears, merge_for_export, rebuild
from tests.conftest import tiny_vit

TINY_KW = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


def _random_lowrank(fin=48, fout=40, ranks=(8, 4), bias=True, seed=0):
    torch.manual_seed(seed)
    m = LowRankLinear(fin, fout, ranks, bias)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def _factorised_tiny(ratio=0.6, merge=False, seed=0):
    model = tiny_vit(seed=seed)
    torch.manual_seed(seed + 1)
    x = torch.randn(12, 3, 32, 32)
    cfg = LowRankConfig(params_ratio=ratio, calib_images=12, batch_size=4, heldout_every=0, merge=merge, comp_fraction=0.25,
                        comp_steps=20)
    model, structure, report = factorize_linears(model, cfg, [x[i:i + 4] for i in range(0, 12, 4)], log=lambda s: None)
    return model, structure, report, x


def test_forward_equals_dense_weight():
    m = _random_lowrank()
    x = torch.randn(5, 7, 48)
    ref = x @ m.dense_weight().T + m.bias
    torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-5)


def test_merged_equals_unmerged():
    m = _random_lowrank()
    x = torch.randn(3, 11, 48)
    mm = m.merged()
    assert mm.ranks == (12, 0) and mm.down2 is None
    torch.testing.assert_close(mm(x), m(x), atol=1e-5, rtol=1e-5)
    assert count_params(mm) == count_params(m)


def test_merge_for_export_on_model_is_exact():
    model, structure, _, x = _factorised_tiny(merge=False)
    assert any(s["ranks"][1] > 0 for s in structure.values())
    with torch.no_grad():
        ref = model(x)
        merge_for_export(model)
        out = model(x)
    assert all(m.ranks[1] == 0 for m in model.modules() if isinstance(m, LowRankLinear))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_macs_counter_sees_factorised_cost():
    model, structure, _, _ = _factorised_tiny()
    dense = tiny_vit()
    got, base = count_macs(model), count_macs(dense)
    tokens = (32 // 8) ** 2 + 1
    expect = base.macs
    for path, s in structure.items():
        r = sum(s["ranks"])
        expect += tokens * (r * (s["in"] + s["out"]) - s["in"] * s["out"])
        assert got.per_module[path] == tokens * r * (s["in"] + s["out"])
    assert got.macs == expect


def test_single_layer_macs():
    m = LowRankLinear(64, 256, (16, 8))
    c = count_macs(nn.Sequential(m), torch.zeros(2, 5, 64))
    assert c.macs == 5 * 24 * (64 + 256)


def test_bad_ranks_raise():
    with pytest.raises(VitoptError):
        LowRankLinear(16, 8, (8, 4))
    with pytest.raises(VitoptError):
        LowRankLinear(16, 8, (0, 0))


def test_rebuild_checks_shapes():
    model = tiny_vit()
    with pytest.raises(VitoptError, match="recipe says"):
        rebuild(model, {"blocks.0.mlp.fc1": {"in": 64, "out": 100, "ranks": [8, 0], "bias": True}})
    with pytest.raises(VitoptError, match="not a Linear"):
        rebuild(model, {"blocks.0.norm1": {"in": 64, "out": 64, "ranks": [8, 0], "bias": True}})
    with pytest.raises(VitoptError, match="no module"):
        rebuild(model, {"blocks.9.mlp.fc1": {"in": 64, "out": 256, "ranks": [8, 0], "bias": True}})


def test_compress_save_restore_round_trip(tmp_path, image_folder):
    from optimizer.compress import CompressContext, compress, load_compressed, save_compressed
    model = tiny_vit()
    cfg = LowRankConfig(params_ratio=0.6, calib_images=6, batch_size=3, heldout_every=0, comp_steps=10, merge=False,
                        comp_fraction=0.25)
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    cm = compress(model, [cfg], ctx, arch="vit_tiny_patch16_224", model_kwargs=TINY_KW, base_weights="random")
    assert cm.steps[0]["structure"], "nothing was factorised"
    save_compressed(tmp_path / "out", cm)
    loaded = load_compressed(tmp_path / "out")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), cm.model.eval()(x), atol=0, rtol=0)
    types = {n: type(m) for n, m in loaded.model.named_modules()}
    assert all(types[p] is LowRankLinear for p in cm.steps[0]["structure"])


def _slice_mlp(model, hidden):
    """Hand-made stand-in for slim's rebuild: keep the first ``hidden`` MLP channels of every block."""
    from optimizer.models.blocks import make_prunable
    make_prunable(model)
    for blk in model.blocks:
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
        n1 = nn.Linear(fc1.in_features, hidden)
        n2 = nn.Linear(hidden, fc2.out_features)
        with torch.no_grad():
            n1.weight.copy_(fc1.weight[:hidden]); n1.bias.copy_(fc1.bias[:hidden])
            n2.weight.copy_(fc2.weight[:, :hidden]); n2.bias.copy_(fc2.bias)
        blk.mlp.fc1, blk.mlp.fc2 = n1, n2
    return model


def test_lowrank_after_slicing_replays():
    model = _slice_mlp(tiny_vit(), hidden=96)
    x = torch.randn(8, 3, 32, 32)
    cfg = LowRankConfig(params_ratio=0.7, calib_images=8, batch_size=4, heldout_every=0, comp_steps=10)
    model, structure, _ = factorize_linears(model, cfg, [x[:4], x[4:]], log=lambda s: None)
    assert any(s["in"] == 96 or s["out"] == 96 for s in structure.values())
    fresh = _slice_mlp(tiny_vit(seed=3), hidden=96)   # "slim's rebuild" on a new base model
    rebuild(fresh, structure)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), atol=0, rtol=0)


def test_slim_then_lowrank_in_one_recipe(tmp_path, image_folder):
    from optimizer.compress import CompressContext, compress, load_compressed, save_compressed
    from optimizer.methods.slim import SlimConfig
    model = tiny_vit()
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    slim = SlimConfig.from_dict({"macs_ratio": 0.8, "importance": "magnitude", "prune_tokens": False, "recovery": "none"})
    low = LowRankConfig(params_ratio=0.8, calib_images=6, batch_size=3, heldout_every=0)
    cm = compress(model, [slim, low], ctx, arch="vit_tiny_patch16_224", model_kwargs=TINY_KW, base_weights="random")
    assert [s["method"] for s in cm.steps] == ["slim", "lowrank"] and cm.steps[1]["structure"]
    save_compressed(tmp_path / "both", cm)
    loaded = load_compressed(tmp_path / "both")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), cm.model.eval()(x), atol=0, rtol=0)

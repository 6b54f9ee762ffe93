"""USDC gates on tiny timm ViTs: equivalences, static pruning, groups, MACs, export, save/restore."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress.config import RecoveryConfig, coerce  # noqa: F401  (config module import check)
from optimizer.counting import count_macs, count_params
from optimizer.errors import VitoptError
from optimizer.methods.gates import (GatesConfig, gate_model, gated_modules, rebuild_gated, set_fixed_k,
                                     set_forced_gates, set_group_sizes, static_prune, structure_of,
                                     subgroup_sizes)
from optimizer.methods.gates.modules import GatedAttention, GatedMlp
from optimizer.models.blocks import PrunedAttention, make_prunable
from tests.conftest import tiny_vit

N_TOKENS = 17  # 32x32 image, 8x8 patches + cls


def _gated(group_size=16, gate_hidden=8, **kw):
    dense = tiny_vit(**kw)
    model = gate_model(copy.deepcopy(dense), group_size=group_size, gate_hidden=gate_hidden)
    return dense, model.eval()


def _randomise_gates(model, seed=0, scale=3.0):
    """Gate nets whose decisions depend strongly on the input (some units on, some off)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in gated_modules(model):
            if m.gate_net is None:
                continue
            for p in m.gate_net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _x(b, seed=0):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_all_gates_on_equals_dense():
    dense, model = _gated()
    x = _x(4)
    with torch.no_grad():
        ref = dense(x)
        set_forced_gates(model, "on")
        assert (model(x) - ref).abs().max() <= 1e-5
        set_forced_gates(model, None)  # initial gate bias 1.0 > threshold 0: every gate on
        assert (model(x) - ref).abs().max() <= 1e-5
        model.train()
        assert (model(x) - ref).abs().max() <= 1e-5


def test_static_prune_removes_never_on_and_keeps_always_on():
    dense, model = _gated(group_size=32)   # 4 heads of 16, 8 MLP groups of 32, per block
    D, hd = 64, 16
    never = {"attn": [1], "mlp": [0, 5]}
    always = {"attn": [2], "mlp": [3]}
    for blk in model.blocks:
        for name in ("attn", "mlp"):
            g = getattr(blk, name)
            g.on_freq_max = [0.0 if u in never[name] else 0.5 for u in range(g.dynamic_units)]
            g.on_freq_min = [1.0 if u in always[name] else (0.0 if u in never[name] else 0.5)
                              for u in range(g.dynamic_units)]
            g.on_freq_mean = g.on_freq_max
    x = _x(3)
    # reference: the unpruned model with the never-on units forced off, everything else on
    set_forced_gates(model, lambda m: [u not in never["attn" if isinstance(m, GatedAttention) else "mlp"]
                                       for u in range(m.dynamic_units)])
    with torch.no_grad():
        ref = model(x)
    before = count_params(model)
    report = static_prune(model, never_on=0.01, always_on=0.99)
    set_forced_gates(model, "on")
    with torch.no_grad():
        out = model(x)
    assert (out - ref).abs().max() <= 1e-5
    assert report["removed"] == {"heads": 2, "mlp_groups": 4}
    assert report["made_static"] == {"heads": 2, "mlp_groups": 2}
    gate_h = 8
    per_head = 3 * hd * D + 3 * hd + hd * D + (gate_h + 1)      # qkv rows+bias, proj cols, gate-net row
    per_group = 32 * D + 32 + 32 * D + (gate_h + 1)            # fc1 rows+bias, fc2 cols, gate-net row
    always_gate = 2 * (gate_h + 1) * 2                         # always-on units lose their gate-net rows
    assert before - count_params(model) == 2 * per_head + 4 * per_group + always_gate
    for blk in model.blocks:
        assert (blk.attn.static_units, blk.attn.dynamic_units) == (1, 2)
        assert (blk.mlp.static_channels, blk.mlp.dynamic_units) == (32, 5)
    assert model.blocks[0].attn.kept == [2, 0, 3]


def test_subgroup_sizes():
    assert subgroup_sizes(8) == [4, 2, 1, 1]
    assert subgroup_sizes(10) == [5, 2, 1, 1, 1]
    assert subgroup_sizes(1) == [1]
    assert subgroup_sizes(64) == [32, 16, 8, 4, 2, 1, 1]
    with pytest.raises(VitoptError, match="positive"):
        subgroup_sizes(0)


def test_one_decision_per_group_order_independent_composition_dependent():
    _, model = _gated()
    _randomise_gates(model)
    x = _x(8, seed=1)
    mods = [m for m in gated_modules(model) if m.dynamic_units]
    with torch.no_grad():
        for m in mods:
            m.record = []
        full = model(x)
        assert all(len(m.record) == 1 for m in mods)  # one decision for the whole batch
        for m in mods:
            m.record = None
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
        assert (model(x[perm]) - full[perm]).abs().max() <= 1e-5   # order within a group: irrelevant
        alone = model(x[:1])
        assert (alone - full[:1]).abs().max() > 1e-3                # composition of the group: matters
        # training forward with groups [4, 2, 1, 1] == eval forward of each group as its own batch
        model.train()
        set_group_sizes(model, subgroup_sizes(8))
        grouped = model(x)
        set_group_sizes(model, None)
        model.eval()
        start = 0
        for size in subgroup_sizes(8):
            ref = model(x[start:start + size])
            assert (grouped[start:start + size] - ref).abs().max() <= 1e-4
            start += size


def test_group_sizes_must_cover_batch():
    _, model = _gated()
    model.train()
    set_group_sizes(model, [2, 2])
    with pytest.raises(VitoptError, match="do not add up"):
        model(_x(3))


def test_executed_macs_match_analytic_count_for_forced_pattern():
    dense, model = _gated(group_size=16)   # 4 heads, 16 groups of 16 channels
    x = _x(2)
    dense_macs = count_macs(dense, x).macs
    N, D, hd = N_TOKENS, 64, 16
    per_head = 3 * N * D * hd + 2 * N * N * hd + N * hd * D
    per_group = 2 * N * D * 16
    set_forced_gates(model, lambda m: [u % 2 == 0 for u in range(m.dynamic_units)])   # half of each off
    got = count_macs(model, x).macs
    depth = len(model.blocks)
    assert got == dense_macs - depth * (2 * per_head + 8 * per_group)


def test_executed_macs_follow_data_dependent_k():
    _, model = _gated(group_size=16)
    _randomise_gates(model, seed=2)
    x = _x(4)
    counts = count_macs(model, x)
    N, D, hd = N_TOKENS, 64, 16
    expect = 0.0
    for blk in model.blocks:
        expect += (3 * N * D * hd + 2 * N * N * hd + N * hd * D) * blk.attn.last_active
        expect += 2 * N * D * 16 * blk.mlp.last_active
    gated = sum(v for k, v in counts.per_module.items() if k.endswith(".attn") or k.endswith(".mlp"))
    assert gated == pytest.approx(expect)
    assert any(m.last_active < m.dynamic_units for m in gated_modules(model))


def test_hand_sliced_model_after_slim_rebuild_round_trip():
    """Per-block widths as slim leaves them (3 heads / 200 hidden in block 0) gate and rebuild exactly."""
    def sliced(seed):
        m = make_prunable(tiny_vit(seed=seed))
        blk = m.blocks[0]
        a = blk.attn
        keep = torch.tensor([0, 1, 3])
        rows = torch.cat([keep_rows + part * 64 for part in range(3)
                          for keep_rows in [(keep[:, None] * 16 + torch.arange(16)).reshape(-1)]])
        na = PrunedAttention(64, 3, 16, a.scale)
        with torch.no_grad():
            na.qkv.weight.copy_(a.qkv.weight[rows]); na.qkv.bias.copy_(a.qkv.bias[rows])
            cols = (keep[:, None] * 16 + torch.arange(16)).reshape(-1)
            na.proj.weight.copy_(a.proj.weight[:, cols]); na.proj.bias.copy_(a.proj.bias)
        blk.attn = na
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
        nf1, nf2 = torch.nn.Linear(64, 200), torch.nn.Linear(200, 64)
        with torch.no_grad():
            nf1.weight.copy_(fc1.weight[:200]); nf1.bias.copy_(fc1.bias[:200])
            nf2.weight.copy_(fc2.weight[:, :200]); nf2.bias.copy_(fc2.bias)
        blk.mlp.fc1, blk.mlp.fc2 = nf1, nf2
        return m.eval()
    base = sliced(0)
    x = _x(2)
    with torch.no_grad():
        ref = base(x)
    model = gate_model(copy.deepcopy(base), group_size=32, gate_hidden=0)
    assert model.blocks[0].mlp.static_channels == 200 - 6 * 32
    assert model.blocks[0].attn.dynamic_units == 3
    with torch.no_grad():
        assert (model(x) - ref).abs().max() <= 1e-5
    _randomise_gates(model)
    structure = structure_of(model)
    rebuilt = rebuild_gated(sliced(1), structure)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        assert (rebuilt(x) - model(x)).abs().max() <= 1e-6


@pytest.mark.parametrize("fixed_k", [False, True])
def test_onnx_export_ort_parity(tmp_path, fixed_k):
    pytest.importorskip("onnxruntime")
    from optimizer.export import check_parity
    import onnx
    from optimizer.graph import op_histogram
    from optimizer.methods.gates.export import onnx_from_gated
    _, model = _gated(group_size=16)
    _randomise_gates(model, seed=4)
    for m in gated_modules(model):
        m.mean_active = m.dynamic_units / 2
    path = tmp_path / "gated.onnx"
    onnx_from_gated(model, path, fixed_k=fixed_k)
    ops = op_histogram(onnx.load(str(path)))
    assert ops.get("TopK", 0) == 4 and "NonZero" not in ops
    if not fixed_k:
        assert ops.get("ReduceSum", 0) >= 4            # K counted from the scores in the graph
    set_fixed_k(model, fixed_k)
    try:
        for b in (1, 2, 8):
            res = check_parity(model, path, _x(b, seed=b), atol=1e-4)
            assert res.passed
    finally:
        set_fixed_k(model, False)


def test_apply_save_restore_round_trip(tmp_path, image_folder):
    from optimizer.compress import CompressContext, compress, load_compressed, save_compressed
    model = tiny_vit(num_classes=5)
    ref_model = copy.deepcopy(model)
    cfg = GatesConfig(macs_ratio=0.5, steps=3, batch_size=2, group_size=16, gate_hidden=8, calib_groups=(1, 2),
                      augment=False)
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    cm = compress(model, [cfg], ctx, arch="vit_tiny_patch16_224",
                  model_kwargs=dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5))
    rep = cm.steps[0]["report"]
    assert rep["deployed_params"] <= rep["gated_params_before_static"]
    assert rep["dense_params"] == count_params(ref_model)
    save_compressed(tmp_path / "out", cm)
    loaded = load_compressed(tmp_path / "out").model
    x = _x(3)
    with torch.no_grad():
        assert (loaded(x) - cm.model.eval()(x)).abs().max() <= 1e-6
    assert structure_of(loaded) == cm.steps[0]["structure"]


def test_config_validation():
    with pytest.raises(ValueError, match="macs_ratio"):
        GatesConfig(macs_ratio=1.5)
    with pytest.raises(ValueError, match="estimator"):
        GatesConfig(estimator="reinforce")
    with pytest.raises(ValueError, match="never_on"):
        GatesConfig(never_on=0.5, always_on=0.4)
    with pytest.raises(VitoptError, match="unknown gates option"):
        GatesConfig.from_dict({"macs_ratio": 0.6, "group": 16})
    cfg = GatesConfig.from_dict({"macs_ratio": "0.6", "calib_groups": "1,8", "subgroup_aug": "off"})
    assert cfg.calib_groups == (1, 8) and cfg.subgroup_aug is False
    assert GatesConfig.from_dict(cfg.to_dict()) == cfg


def test_rebuild_rejects_bad_structure():
    model = tiny_vit()
    with pytest.raises(VitoptError, match="describes 1 blocks"):
        rebuild_gated(model, {"blocks": [structure_of(gate_model(tiny_vit()))["blocks"][0]]})
    with pytest.raises(VitoptError, match="incomplete"):
        rebuild_gated(tiny_vit(), {"blocks": [{"attn": {}, "mlp": {}}] * 2})


def test_gating_twice_is_an_error():
    model = gate_model(tiny_vit())
    with pytest.raises(VitoptError, match="already gated"):
        gate_model(model)


def test_importance_init_orders_biases_and_keeps_every_gate_on():
    from optimizer.methods.gates.train import init_gates_from_importance
    dense, model = _gated(group_size=16)
    x = _x(4)
    init_gates_from_importance(model, x, init_logit=1.0, spread=0.5)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a: inputs.__setitem__(mod, a[0])) for m in gated_modules(model)]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    assert (out - dense(x)).abs().max() <= 1e-5        # still the dense model: every bias in [0.5, 1.5]
    for m in gated_modules(model):
        bias = m.gate_net.last.bias.detach()
        assert bias.min() >= 0.5 and bias.max() <= 1.5
        imp = m.unit_importance(inputs[m])
        assert torch.equal(torch.argsort(bias), torch.argsort(imp))


def test_gates_after_slim_recipe_round_trip(tmp_path):
    """slim's own rebuild (per-block widths, a token gather) followed by gates: save -> load is exact."""
    from optimizer.compress import load_compressed, save_compressed
    from optimizer.compress.api import CompressedModel
    from optimizer.methods.slim.slicing import rebuild as slim_rebuild
    kwargs = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)
    slim_structure = {"format": "slim-structure", "version": 1, "blocks": [
        {"num_heads": 3, "head_dim": 16, "scale": 0.25, "mlp_hidden": 200, "token_index": None,
         "token_positions": None},
        {"num_heads": 2, "head_dim": 12, "scale": 0.25, "mlp_hidden": 96, "token_index": list(range(12)),
         "token_positions": list(range(12))}]}
    slim = slim_rebuild(tiny_vit(), slim_structure).eval()
    x = _x(2)
    with torch.no_grad():
        ref = slim(x)
    model = gate_model(slim, group_size=32, gate_hidden=8)
    with torch.no_grad():
        assert (model(x) - ref).abs().max() <= 1e-5
    assert [b.mlp.static_channels for b in model.blocks] == [200 - 6 * 32, 0]
    _randomise_gates(model, seed=5)
    for b in model.blocks:   # one never-on head and MLP group per block, removed statically
        for g in (b.attn, b.mlp):
            g.on_freq_max = [0.0] + [0.5] * (g.dynamic_units - 1)
            g.on_freq_min = [0.0] * g.dynamic_units
            g.on_freq_mean = g.on_freq_max
    static_prune(model, 0.01, 0.99)
    cm = CompressedModel(model, "vit_tiny_patch16_224", kwargs, [
        {"method": "slim", "config": {}, "structure": slim_structure},
        {"method": "gates", "config": GatesConfig().to_dict(), "structure": structure_of(model)}])
    save_compressed(tmp_path / "m", cm)
    loaded = load_compressed(tmp_path / "m").model
    with torch.no_grad():
        for b in (1, 2, 5):
            xb = _x(b, seed=b)
            assert (loaded(xb) - model(xb)).abs().max() <= 1e-6
    assert [b.attn.units for b in loaded.blocks] == [2, 1]


def _lowrank_tiny(seed=0):
    """Tiny ViT with low-rank layers (two factor pairs) where the lowrank step puts them."""
    from optimizer.methods.lowrank.module import LowRankLinear
    model = make_prunable(tiny_vit(seed=seed))
    g = torch.Generator().manual_seed(seed)
    for bi, name in ((0, "attn.qkv"), (0, "attn.proj"), (0, "mlp.fc1"), (0, "mlp.fc2"), (1, "mlp.fc1")):
        parent, attr = name.split(".")
        old = getattr(getattr(model.blocks[bi], parent), attr)
        lr = LowRankLinear(old.in_features, old.out_features, (8, 4), bias=True)
        with torch.no_grad():
            for p in lr.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        setattr(getattr(model.blocks[bi], parent), attr, lr)
    return model.eval()


def test_gates_after_lowrank_equivalences_static_prune_and_rebuild():
    base = _lowrank_tiny()
    x = _x(4)
    with torch.no_grad():
        ref = base(x)
    dense_macs = count_macs(base, x).macs
    model = gate_model(copy.deepcopy(base), group_size=16, gate_hidden=8)
    set_forced_gates(model, "on")
    with torch.no_grad():
        assert (model(x) - ref).abs().max() <= 1e-5
    assert count_macs(model, x).macs == dense_macs        # low-rank MACs counted through the rank
    set_forced_gates(model, None)
    _randomise_gates(model, seed=6)
    with torch.no_grad():   # gathered (eval) path == masked dense (training) path, per group
        model.train()
        set_group_sizes(model, [2, 1, 1])
        grouped = model(x)
        set_group_sizes(model, None)
        model.eval()
        for lo, hi in ((0, 2), (2, 3), (3, 4)):
            assert (grouped[lo:hi] - model(x[lo:hi])).abs().max() <= 1e-4
    for b in model.blocks:
        for g in (b.attn, b.mlp):
            g.on_freq_max = [0.0] + [0.5] * (g.dynamic_units - 1)
            g.on_freq_min = [0.0, 1.0] + [0.0] * (g.dynamic_units - 2)
            g.on_freq_mean = g.on_freq_max
    static_prune(model, 0.01, 0.99)
    assert type(model.blocks[0].mlp.fc1).__name__ == "LowRankLinear"
    structure = structure_of(model)
    assert structure["blocks"][0]["attn"]["qkv"] == {"ranks": [8, 4]}
    assert structure["blocks"][1]["mlp"]["fc2"] is None
    rebuilt = rebuild_gated(tiny_vit(seed=3), structure)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        for b in (1, 3):
            assert (rebuilt(x[:b]) - model(x[:b])).abs().max() <= 1e-6


def test_unsupported_layers_are_rejected_with_a_clear_message():
    model = make_prunable(tiny_vit())
    model.blocks[0].attn.qkv = torch.nn.Identity()
    with pytest.raises(VitoptError, match="nn.Linear or a low-rank LowRankLinear for attn.qkv"):
        gate_model(model)


@pytest.mark.trt
@pytest.mark.parametrize("fixed_k", [False, True])
def test_tensorrt_rtx_builds_the_gated_graph(tmp_path, fixed_k):
    """TopK with a data-dependent K (no NonZero) parses and builds in TensorRT for RTX through the
    product's engine build, which reports the engine's weight memory from the builder log."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt_rtx)")
    from optimizer.engine import engine_from_onnx
    from optimizer.methods.gates.export import onnx_from_gated
    _, model = _gated(group_size=16)
    _randomise_gates(model)
    for m in gated_modules(model):
        m.mean_active = m.dynamic_units / 2
    path = tmp_path / "gated.onnx"
    onnx_from_gated(model, path, fixed_k=fixed_k)
    built = engine_from_onnx(path, (1, 8, 32), builder="tensorrt_rtx")
    assert built.size_bytes > 0 and built.info["profile"]["max"][0] == 32
    fp32_weights = sum(p.numel() for p in model.parameters()) * 4
    assert 0.5 * fp32_weights <= built.info["memory"]["weights_bytes"] <= 4 * fp32_weights


def test_level_group_sizes_cycle_through_every_level():
    from optimizer.methods.gates.modules import level_group_sizes
    assert [level_group_sizes(8, t) for t in range(5)] == [[8], [4, 4], [2, 2, 2, 2], [1] * 8, [8]]
    assert level_group_sizes(6, 1) == [3, 3] and level_group_sizes(6, 2) == [1] * 6
    assert level_group_sizes(5, 1) == [2, 2, 1]


def test_gates_after_slim_export_parity(tmp_path):
    """slim (per-block widths + a token gather) then gates exports with the decision in the graph and
    matches PyTorch at several batch sizes (= gate group sizes)."""
    import numpy as np
    from optimizer.methods.gates.export import onnx_from_gated
    from optimizer.methods.slim.slicing import rebuild as slim_rebuild
    from optimizer.runners import OrtRunner
    structure = {"format": "slim-structure", "version": 1, "blocks": [
        {"num_heads": 3, "head_dim": 16, "scale": 0.25, "mlp_hidden": 200, "token_index": None,
         "token_positions": None},
        {"num_heads": 2, "head_dim": 12, "scale": 0.25, "mlp_hidden": 96, "token_index": list(range(12)),
         "token_positions": list(range(12))}]}
    model = gate_model(slim_rebuild(tiny_vit(), structure).eval(), group_size=32, gate_hidden=8)
    _randomise_gates(model, seed=5)
    model.eval()
    onnx_from_gated(model, tmp_path / "g.onnx")
    with OrtRunner(tmp_path / "g.onnx", threads=1) as r:
        for b in (1, 2, 5):
            x = _x(b, seed=b)
            with torch.no_grad():
                ref = model(x).numpy()
            np.testing.assert_allclose(r.infer({r.input_name: x.numpy()})["logits"], ref, atol=1e-5)


def test_group_schedule_follows_the_augmentation_mode():
    from optimizer.methods.gates.modules import group_schedule
    assert [group_schedule(8, t, False) for t in range(3)] == [[8], [8], [8]]
    assert [group_schedule(8, t, True, "tree") for t in range(3)] == [[4, 2, 1, 1], [8], [4, 2, 1, 1]]
    assert [group_schedule(8, t, True, "level") for t in range(5)] == [[8], [4, 4], [2, 2, 2, 2], [1] * 8, [8]]
    with pytest.raises(VitoptError, match="sub-group mode"):
        group_schedule(8, 0, True, "random")


@pytest.mark.parametrize("aug,mode", [(True, "tree"), (True, "level"), (False, "tree")])
def test_finetune_tunes_the_backbone_under_the_gate_training_groups(image_folder, aug, mode):
    """The recovery fine-tune splits every batch into gate groups by the gate-training schedule
    (sub-group augmentation must not be undone by tuning under whole-batch decisions only); with
    recovery_gates off the gate nets stay frozen, the backbone moves."""
    from optimizer.compress import CompressContext
    from optimizer.methods.gates.method import _finetune
    from optimizer.methods.gates.modules import group_schedule
    dense, model = _gated()
    _randomise_gates(model, scale=0.5)
    cfg = GatesConfig(macs_ratio=0.6, recovery=RecoveryConfig(loss="logit", steps=4, lr=1e-3), batch_size=4,
                      subgroup_aug=aug, subgroup_mode=mode, augment=False, recovery_gates=False)
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    mod = gated_modules(model)[0]
    seen = []
    hook = mod.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[0], m.group_sizes))
                                         if m.training else None)
    gates_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".gate_net." in n}
    backbone_before = model.blocks[0].mlp.fc1.weight.detach().clone()
    try:
        rep = _finetune(model, dense, ctx, cfg, count_macs(dense).macs)
    finally:
        hook.remove()
    assert rep["steps"] == 4 and len(seen) == 4
    assert [sizes for _, sizes in seen] == [group_schedule(b, t, aug, mode) for t, (b, _) in enumerate(seen)]
    expected = {}
    for t, (b, _) in enumerate(seen):
        for s in group_schedule(b, t, aug, mode):
            expected[str(s)] = expected.get(str(s), 0) + 1
    assert rep["gate_groups"] == expected
    assert all(m.group_sizes is None for m in gated_modules(model))       # reset afterwards
    for n, p in model.named_parameters():
        if n in gates_before:
            assert torch.equal(p, gates_before[n]), n
    assert not torch.equal(model.blocks[0].mlp.fc1.weight, backbone_before)


def test_finetune_with_gates_keeps_pulling_executed_macs_to_the_target(image_folder):
    """recovery_gates: the gate nets train at recovery_lr_gates beside the backbone under the MACs term, so the
    tuned model executes fewer MACs than the same fine-tune with frozen gates (target far below the
    start); the term is logged and the train-time MACs ratio reported."""
    from optimizer.compress import CompressContext
    from optimizer.methods.gates.method import _finetune
    dense, start = _gated()
    _randomise_gates(start, scale=0.5)
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    x = _x(4, seed=11)
    executed = {}
    for train in (False, True):
        model = copy.deepcopy(start)
        cfg = GatesConfig(macs_ratio=0.2, gamma=100.0, recovery=RecoveryConfig(loss="logit", steps=6, lr=1e-4),
                          batch_size=4, recovery_lr_gates=0.2, augment=False, recovery_gates=train, subgroup_aug=False)
        gates_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".gate_net." in n}
        rep = _finetune(model, dense, ctx, cfg, count_macs(dense).macs)
        moved = any(not torch.equal(p, gates_before[n]) for n, p in model.named_parameters() if n in gates_before)
        assert moved == train and rep["gates_trained"] == train
        assert ("macs" in rep["final_losses"]) == train and ("final_train_macs_ratio" in rep) == train
        executed[train] = count_macs(model.eval(), x).macs
    assert executed[True] < 0.9 * executed[False]


def test_apply_recalibrates_and_prunes_again_after_the_finetune(image_folder):
    """The on-frequencies that fixed K and static pruning use are measured on the tuned model: a fresh
    calibration of the returned model gives the same mean active counts."""
    from optimizer.compress import CompressContext
    from optimizer.methods.gates.method import apply_gates
    from optimizer.methods.gates.train import calibrate_gates
    model = tiny_vit(num_classes=5)
    cfg = GatesConfig(macs_ratio=0.5, steps=3, batch_size=2, group_size=16, gate_hidden=8, calib_groups=(1, 2),
                      augment=False, recovery=RecoveryConfig(loss="logit", steps=3, lr=1e-3), lr_gates=0.05, recovery_lr_gates=0.05,
                      init_logit=0.02, importance_init=0.0, never_on=0.0, always_on=1.0)
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    res = apply_gates(model, cfg, ctx)
    ft = res.report["finetune"]
    assert set(ft["calib_active_fraction"]) == {1, 2} and set(ft["static"]) == {"removed", "made_static"}
    tuned = res.model
    recorded = [m.mean_active for m in gated_modules(tuned) if m.dynamic_units]
    assert recorded
    again = copy.deepcopy(tuned)
    loaders = {g: ctx.calib_loader(again, g, shuffle=True) for g in cfg.calib_groups}
    calibrate_gates(again, loaders, "cpu")
    assert [m.mean_active for m in gated_modules(again) if m.dynamic_units] == pytest.approx(recorded)

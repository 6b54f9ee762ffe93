"""Gates on a token-merging model (slim's token_mode merge, or the merge method): the gated attention
keeps the merging block's contract (token sizes in, merge keys out), so slim(merge) -> gates
compresses, saves, rebuilds, exports and matches PyTorch in ONNX Runtime."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress import CompressContext, compress, load_compressed, save_compressed
from optimizer.compress.config import RecoveryConfig
from optimizer.methods.gates import GatesConfig, gate_model, gated_modules, set_forced_gates
from optimizer.methods.gates.convert import structure_of
from optimizer.methods.gates.modules import GatedMergeAttention
from optimizer.methods.merge import merge_schedule
from optimizer.methods.merge.block import merge_tokens
from optimizer.methods.slim import SlimConfig
from optimizer.reconstruct import ReconstructConfig
from tests.conftest import tiny_vit
from tests.gates.test_gates import _randomise_gates, _x

KW = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5)


def test_all_gates_on_equals_the_merging_model_and_decisions_change_the_merge():
    merged = merge_tokens(tiny_vit(**KW), [2, 3]).eval()
    x = _x(3)
    gated = gate_model(copy.deepcopy(merged), group_size=16, gate_hidden=8).eval()
    assert all(isinstance(b.attn, GatedMergeAttention) for b in gated.blocks)
    assert merge_schedule(gated) == [2, 3]
    with torch.no_grad():
        ref = merged(x)
        torch.testing.assert_close(gated(x), ref, rtol=1e-5, atol=1e-5)      # eval: gates on
        set_forced_gates(gated, "on")
        torch.testing.assert_close(gated.train()(x), ref, rtol=1e-5, atol=1e-5)   # training: masks all 1
        set_forced_gates(gated, None)
        _randomise_gates(gated.eval(), seed=3)
        assert (gated(x) - ref).abs().max() > 1e-3      # heads switched off: another output


def test_slim_merge_then_gates_end_to_end(tmp_path, image_folder):
    """compress [slim token_mode merge, gates] -> save -> load (same outputs) -> ONNX export with the
    decision in the graph; ONNX Runtime == PyTorch at several batch sizes (= gate groups)."""
    from optimizer.export import check_parity
    from optimizer.methods.gates.export import onnx_from_gated
    from optimizer.tolerances import tolerance_for
    slim = SlimConfig(macs_ratio=0.7, importance="magnitude", token_mode="merge", multiple=4, tolerance=0.05,
                      token_eval_images=4, batch_size=2, recovery=RecoveryConfig(loss="none"))
    gates = GatesConfig(macs_ratio=0.6, steps=3, batch_size=2, group_size=16, gate_hidden=8, calib_groups=(1, 2),
                        augment=False, recovery=RecoveryConfig(loss="none"),
                        reconstruct=ReconstructConfig(mode="auto"))
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    cm = compress(tiny_vit(**KW), [slim, gates], ctx, arch="vit_tiny_patch16_224", model_kwargs=KW)
    model = cm.model.eval()
    sched = merge_schedule(model)
    assert sched and sum(sched) > 0 and all(isinstance(b.attn, GatedMergeAttention) for b in model.blocks)
    # reconstruction does not run on merging blocks: "auto" resolves to none and the report says so
    assert cm.steps[1]["report"]["reconstruct"]["mode"] == "none"
    assert cm.steps[1]["report"]["reconstruct"]["asked"] == "auto"
    _randomise_gates(model, seed=7)       # decisions that differ between groups
    for m in gated_modules(model):
        m.mean_active = m.dynamic_units / 2
    cm.steps[1]["structure"] = structure_of(model)   # the randomised gates' mean K, as saved
    save_compressed(tmp_path / "m", cm)
    loaded = load_compressed(tmp_path / "m").model.eval()
    assert merge_schedule(loaded) == sched
    with torch.no_grad():
        for b in (1, 3):
            torch.testing.assert_close(loaded(_x(b, seed=b)), model(_x(b, seed=b)), rtol=0, atol=1e-6)
    onnx_from_gated(model, tmp_path / "g.onnx", atol=tolerance_for("fp32").atol)
    for b in (1, 2, 5):
        assert check_parity(model, tmp_path / "g.onnx", _x(b, seed=10 + b), atol=tolerance_for("fp32").atol).passed


@pytest.mark.parametrize("fixed_k", [False, True])
def test_merging_gated_model_exports_in_both_k_modes(tmp_path, fixed_k):
    from optimizer.export import check_parity
    from optimizer.methods.gates import set_fixed_k
    from optimizer.methods.gates.export import onnx_from_gated
    model = gate_model(merge_tokens(tiny_vit(**KW), [2, 2]), group_size=16, gate_hidden=8).eval()
    _randomise_gates(model, seed=2)
    for m in gated_modules(model):
        m.mean_active = m.dynamic_units / 2
    onnx_from_gated(model, tmp_path / "g.onnx", fixed_k=fixed_k)
    set_fixed_k(model, fixed_k)
    try:
        for b in (1, 4):
            assert check_parity(model, tmp_path / "g.onnx", _x(b, seed=b), atol=1e-4).passed
    finally:
        set_fixed_k(model, False)

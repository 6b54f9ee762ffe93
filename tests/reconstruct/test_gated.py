"""Reconstruction of gated models (the ``gates`` step): the zero-filled output-map input reproduces the
gated forward, the re-fit under the gates' group decisions lowers the error on images it never saw,
and the reconstructed model exports, rebuilds and keeps its gate nets."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress import CompressContext
from optimizer.methods.gates import gate_model, gated_modules
from optimizer.methods.gates.convert import static_prune, structure_of
from optimizer.reconstruct import ReconstructConfig, reconstruct_model
from tests.conftest import tiny_vit
from tests.gates.test_gates import _randomise_gates, _x

GROUPS = (1, 4)


def _gated_pruned(depth=3, seed=0):
    """A gated tiny ViT whose decisions depend on the input, with one removed and one static unit per
    module (static pruning from forced on-frequencies), and the dense model it came from."""
    dense = tiny_vit(depth=depth, seed=seed).eval()
    model = gate_model(copy.deepcopy(dense), group_size=32, gate_hidden=8)
    _randomise_gates(model, seed=seed + 5)
    for g in gated_modules(model):
        freq = [0.5] * g.dynamic_units
        freq[0], freq[1] = 0.0, 1.0
        g.on_freq_max, g.on_freq_min, g.on_freq_mean = freq, [0.0] + [1.0] + freq[2:], freq
    static_prune(model, 0.01, 0.99)
    for g in gated_modules(model):
        assert g.static_units + getattr(g, "static_channels", 0) > 0 and g.dynamic_units >= 2
    return model.eval(), dense


def _images(folder, model, n=64):
    from optimizer.data import build_loader
    return torch.cat([b.images for b in build_loader(folder, model, batch_size=n, labeled=False, workers=0)])


@torch.no_grad()
def _errors(model, dense, x, group):
    """Per block: relative squared error of the block outputs vs the dense ones, the gated model run in
    groups of ``group`` images (its deployed decisions), each model on its own propagated inputs."""
    from optimizer.methods.lowrank.calibrate import capture_input
    hc, hd = capture_input(model, "blocks.0", x), capture_input(dense, "blocks.0", x)
    errs = []
    for bc, bd in zip(model.blocks, dense.blocks):
        hc = torch.cat([bc(c) for c in hc.split(group)])
        hd = bd(hd)
        errs.append(float(((hc - hd) ** 2).sum() / (hd ** 2).sum()))
    return errs


@pytest.mark.parametrize("b", [1, 3, 8])
def test_output_map_input_reproduces_the_eval_forward(b):
    model, _ = _gated_pruned()
    seen_off = 0
    ins = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: ins.__setitem__(mod, args[0]))
             for m in gated_modules(model)]
    with torch.no_grad():
        model(_x(b, seed=b))
    for h in hooks:
        h.remove()
    for m, xin in ins.items():
        with torch.no_grad():
            ref = m(xin)
            z = m.output_map_input(xin)
            got = m.output_map()(z)
        assert z.shape[-1] == m.output_map().in_features
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        seen_off += int((1 - m.eval_unit_mask(xin)).sum())
    assert seen_off > 0        # some units were switched off: the zeros were exercised


@pytest.mark.parametrize("mode", ["closed_form", "blockwise"])
def test_gated_refit_lowers_held_out_error_and_keeps_the_gates(calib_folder, judge_folder, mode):
    model, dense = _gated_pruned()
    x = _images(judge_folder, dense)
    gates = {n: p.detach().clone() for n, p in model.named_parameters() if ".gate_net." in n}
    before = {g: _errors(model, dense, x, g) for g in GROUPS}
    rep = reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                            ReconstructConfig(mode=mode, holdout=0.25, steps=15, lr=1e-3, batch_size=8),
                            group_sizes=GROUPS)
    after = {g: _errors(model, dense, x, g) for g in GROUPS}
    assert rep["group_sizes"] == list(GROUPS)
    if mode == "closed_form":
        for row in rep["blocks"]:
            assert all("skipped" not in v for v in row["closed_form"]["layers"].values())
        assert after[1][0] < before[1][0] and after[4][0] < before[4][0]   # block 0: its own repair
    assert any(mode in row["kept"] for row in rep["blocks"])
    for g in GROUPS:
        assert after[g][-1] < before[g][-1], (g, before[g], after[g])
    for row in rep["blocks"]:
        assert row["error_after"] <= row["error_before"]
    for n, p in model.named_parameters():      # gate nets are structure: never re-fitted
        if n in gates:
            assert torch.equal(p, gates[n]), n


def test_the_intercept_takes_the_mean_of_switched_off_units(calib_folder):
    """One MLP group and one head forced off in every group, one of each removed statically: least squares
    with an intercept (ridge 0, every image fitted) leaves block-output residuals of zero mean over the
    fitting tokens, so the bias has absorbed the mean contribution of what no longer runs."""
    from optimizer.methods.gates import set_forced_gates
    from optimizer.methods.lowrank.calibrate import capture_input
    model, dense = _gated_pruned(depth=1)
    set_forced_gates(model, lambda m: [u != 1 for u in range(m.dynamic_units)])
    x = _images(calib_folder, dense)

    @torch.no_grad()
    def residual_mean():
        h = capture_input(model, "blocks.0", x)
        y = torch.cat([model.blocks[0](c) for c in h.split(4)])
        return (y - dense.blocks[0](h)).mean(dim=(0, 1)).abs().max()

    assert residual_mean() > 5e-3     # 0.009 here: 40x the tolerance below
    rep = reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                            ReconstructConfig(mode="closed_form", holdout=0.0, ridge=0.0), group_sizes=(4,))
    assert rep["blocks"][0]["kept"] == ["closed_form"]
    assert residual_mean() <= 2e-4


def test_reconstructed_gated_model_exports_with_parity(tmp_path, calib_folder):
    from optimizer.export import check_parity
    from optimizer.methods.gates.export import onnx_from_gated
    from optimizer.tolerances import tolerance_for
    model, dense = _gated_pruned()
    reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                      ReconstructConfig(mode="closed_form", holdout=0.25), group_sizes=GROUPS)
    onnx_from_gated(model, tmp_path / "g.onnx")
    for b in (1, 2, 5):       # batch = gate group: a decision per batch in both runtimes
        assert check_parity(model, tmp_path / "g.onnx", _x(b, seed=b), atol=tolerance_for("fp32").atol).passed


def test_gates_step_reconstructs_recalibrates_and_rebuilds(tmp_path, image_folder):
    """apply_gates with closed-form reconstruction: the report shows the re-fit and the recalibration,
    and the saved recipe + weights rebuild a model with the same outputs and structure."""
    from optimizer.compress import compress, load_compressed, save_compressed
    from optimizer.compress.config import RecoveryConfig
    from optimizer.methods.gates import GatesConfig
    model = tiny_vit(num_classes=5)
    cfg = GatesConfig(macs_ratio=0.5, steps=3, batch_size=2, group_size=16, gate_hidden=8, calib_groups=(1, 2),
                      augment=False, recovery=RecoveryConfig(loss="none"),
                      reconstruct=ReconstructConfig(mode="closed_form", holdout=0.0, batch_size=2))
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    cm = compress(model, [cfg], ctx, arch="vit_tiny_patch16_224",
                  model_kwargs=dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5))
    rep = cm.steps[0]["report"]["reconstruct"]
    assert rep["mode"] == "closed_form" and rep["group_sizes"] == [1, 2]
    assert all(r["kept"] == ["closed_form"] for r in rep["blocks"])
    assert set(rep["calib_active_fraction"]) == {1, 2} and set(rep["static"]) == {"removed", "made_static"}
    save_compressed(tmp_path / "out", cm)
    loaded = load_compressed(tmp_path / "out").model
    assert structure_of(loaded) == cm.steps[0]["structure"]
    with torch.no_grad():
        for b in (1, 3):
            x = _x(b, seed=b)
            assert (loaded(x) - cm.model.eval()(x)).abs().max() <= 1e-6


def test_group_sizes_change_nothing_on_an_ungated_model(calib_folder):
    """Streams per group size only differ under gates: an ungated model gets the same weights whatever
    group sizes are given (the pooled statistics scale, the ridge λ scales with them)."""
    dense = tiny_vit(depth=2).eval()
    start = copy.deepcopy(dense)
    with torch.no_grad():     # a damaged copy to repair: every output map's weights shrunk
        for b in start.blocks:
            b.attn.proj.weight.mul_(0.5)
            b.mlp.fc2.weight.mul_(0.5)
    out = []
    for sizes in (None, (1, 8)):
        model = copy.deepcopy(start)
        reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                          ReconstructConfig(mode="closed_form", holdout=0.25), group_sizes=sizes)
        out.append(model.state_dict())
    assert any(not torch.equal(out[0][k], start.state_dict()[k]) for k in out[0])
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=1e-4, atol=1e-5)

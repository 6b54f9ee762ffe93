"""The block-by-block reconstruction on tiny ViTs: errors fall on images it never saw, token-pruned
blocks are compared at their kept positions, low-rank layers keep their ranks, runs repeat exactly."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress.config import RecoveryConfig
from optimizer.compress.registry import CompressContext
from optimizer.errors import VitoptError
from optimizer.reconstruct import ReconstructConfig, reconstruct_model
from tests.conftest import tiny_vit

FAST = dict(steps=15, lr=1e-3, batch_size=8, holdout=0.25)


def _images(folder, model, n=64):
    from optimizer.data import build_loader
    return torch.cat([b.images for b in build_loader(folder, model, batch_size=n, labeled=False, workers=0)])


@torch.no_grad()
def _block_errors(model, dense, x):
    """Per block: relative squared error of the compressed block output vs the dense one (at the kept
    positions), each model running on its own propagated inputs; and the logits' error."""
    from optimizer.methods.lowrank.calibrate import capture_input
    hc, hd = capture_input(model, "blocks.0", x), capture_input(dense, "blocks.0", x)
    pos = list(range(hc.shape[1]))
    errs = []
    for bc, bd in zip(model.blocks, dense.blocks):
        hc, hd = bc(hc), bd(hd)
        pos = getattr(bc, "token_positions", None) or pos
        t = hd[:, pos]
        errs.append(float(((hc - t) ** 2).sum() / (t ** 2).sum()))
    return errs, float(((model(x) - dense(x)) ** 2).mean())


@pytest.fixture(scope="module")
def slim_tiny():
    """A structure-only slimmed tiny ViT (magnitude importance, 0.6 params) and its dense original."""
    from optimizer.methods.slim.config import SlimConfig
    from optimizer.methods.slim.method import apply
    dense = tiny_vit(depth=3)
    cfg = SlimConfig(params_ratio=0.6, importance="magnitude", prune_tokens=False, recovery=RecoveryConfig(loss="none"))
    model = apply(copy.deepcopy(dense), cfg, CompressContext(workers=0)).model
    return model, dense


@pytest.mark.parametrize("mode", ["closed_form", "blockwise", "both"])
def test_reconstruction_lowers_held_out_error(slim_tiny, calib_folder, judge_folder, mode):
    model, dense = copy.deepcopy(slim_tiny[0]), slim_tiny[1]
    x = _images(judge_folder, dense)
    before, logit_before = _block_errors(model, dense, x)
    rep = reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                            ReconstructConfig(mode=mode, **FAST))
    after, logit_after = _block_errors(model, dense, x)
    assert rep["mode"] == mode and len(rep["blocks"]) == 3
    assert after[0] < before[0]          # block 0 sees identical inputs: its own repair
    assert after[-1] < before[-1]
    assert logit_after < logit_before
    for row in rep["blocks"]:            # what was kept never raised the held-out error
        assert row["error_after"] <= row["error_before"]


def test_rolled_back_when_held_out_error_rises(slim_tiny, calib_folder):
    # a learning rate far too large: every block's tune is worse on the held-out images and is undone
    model = copy.deepcopy(slim_tiny[0])
    ref = copy.deepcopy(model.state_dict())
    rep = reconstruct_model(model, slim_tiny[1], CompressContext(calib_dir=calib_folder, workers=0),
                            ReconstructConfig(mode="blockwise", steps=5, lr=10.0, batch_size=8, holdout=0.25))
    assert all(r["kept"] == [] for r in rep["blocks"])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)


def test_token_pruned_blocks_compare_kept_positions(calib_folder, judge_folder):
    from optimizer.methods.slim import slice_model
    from optimizer.methods.slim.budget import Geometry, solve_budget
    from tests.slim.test_slim_core import ALL, random_ranking
    dense = tiny_vit(depth=3)
    geo = Geometry.of(copy.deepcopy(dense))
    plan, _ = solve_budget(random_ranking(geo, 7), geo, "macs", 0.55, "per_type", 8, ALL)
    model = slice_model(copy.deepcopy(dense), plan, geo).eval()
    assert any(b.token_positions is not None for b in model.blocks)
    x = _images(judge_folder, dense)
    before, _ = _block_errors(model, dense, x)
    reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                      ReconstructConfig(mode="closed_form", holdout=0.25))
    after, _ = _block_errors(model, dense, x)
    assert after[-1] < before[-1]


def test_lowrank_closed_form_keeps_ranks_and_lowers_error(calib_folder, judge_folder):
    from optimizer.methods.lowrank.apply import apply
    from optimizer.methods.lowrank.config import LowRankConfig
    from optimizer.methods.lowrank.module import lowrank_structure
    dense = tiny_vit(depth=2)
    ctx = CompressContext(calib_dir=calib_folder, workers=0)
    res = apply(copy.deepcopy(dense), LowRankConfig(params_ratio=0.6, multiple=4, calib_images=32,
                                                    allocation="error", reconstruct=ReconstructConfig(mode="none")),
                ctx)   # the unreconstructed factorisation (lowrank's default would already reconstruct it)
    model, structure = res.model, res.structure
    assert any(p.endswith(("proj", "fc2")) for p in structure)
    x = _images(judge_folder, dense)
    before, _ = _block_errors(model, dense, x)
    rep = reconstruct_model(model, dense, ctx, ReconstructConfig(mode="closed_form", holdout=0.25))
    after, _ = _block_errors(model, dense, x)
    assert lowrank_structure(model) == structure
    assert sum(after) < sum(before)
    assert any("closed_form" in r["kept"] for r in rep["blocks"])


def test_deterministic_under_a_seed(slim_tiny, calib_folder):
    outs = []
    for _ in range(2):
        model = copy.deepcopy(slim_tiny[0])
        reconstruct_model(model, slim_tiny[1], CompressContext(calib_dir=calib_folder, workers=0, seed=3),
                          ReconstructConfig(mode="both", **{**FAST, "steps": 4}))
        outs.append(model.state_dict())
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=0, atol=0)


def test_none_changes_nothing_and_needs_nothing(slim_tiny):
    model = copy.deepcopy(slim_tiny[0])
    assert reconstruct_model(model, None, CompressContext(), ReconstructConfig()) == {"mode": "none"}


def test_missing_images_or_teacher_are_one_line_errors(slim_tiny, calib_folder):
    model = copy.deepcopy(slim_tiny[0])
    with pytest.raises(VitoptError, match="calibration images"):
        reconstruct_model(model, slim_tiny[1], CompressContext(), ReconstructConfig(mode="closed_form"))
    with pytest.raises(VitoptError, match="dense teacher"):
        reconstruct_model(model, None, CompressContext(calib_dir=calib_folder), ReconstructConfig(mode="closed_form"))
    with pytest.raises(VitoptError, match="same blocks"):
        reconstruct_model(model, tiny_vit(depth=2), CompressContext(calib_dir=calib_folder),
                          ReconstructConfig(mode="closed_form"))


def test_gated_blocks_tune_under_their_gate_decisions(calib_folder, judge_folder):
    from optimizer.methods.gates.convert import gate_model, structure_of
    from optimizer.methods.gates.modules import gated_modules
    dense = tiny_vit(num_classes=2)
    model = gate_model(copy.deepcopy(dense), group_size=16, gate_hidden=8, threshold=0.0, init_logit=1.0)
    with torch.no_grad():     # half the units of every module off: decisions that change the output
        for m in gated_modules(model):
            b = m.gate_net.last.bias
            b.copy_(torch.tensor([1.0, -1.0]).repeat(b.numel())[: b.numel()])
    model.eval()
    structure = structure_of(model)
    gates = {n: p.detach().clone() for n, p in model.named_parameters() if ".gate_net." in n}
    assert gates
    x = _images(judge_folder, dense)
    before, _ = _block_errors(model, dense, x)
    rep = reconstruct_model(model, dense, CompressContext(calib_dir=calib_folder, workers=0),
                            ReconstructConfig(mode="blockwise", **FAST))
    after, _ = _block_errors(model, dense, x)
    assert structure_of(model) == structure
    for n, p in model.named_parameters():
        if n in gates:
            assert torch.equal(p, gates[n]), n
    assert any(r["kept"] for r in rep["blocks"])
    assert after[-1] < before[-1]


def test_auto_is_closed_form_unless_tokens_are_dropped_or_no_images(slim_tiny, calib_folder):
    from optimizer.methods.slim import slice_model
    from optimizer.methods.slim.budget import Geometry, solve_budget
    from tests.slim.test_slim_core import ALL, random_ranking
    auto = ReconstructConfig(mode="auto", holdout=0.25)
    rep = reconstruct_model(copy.deepcopy(slim_tiny[0]), slim_tiny[1],
                            CompressContext(calib_dir=calib_folder, workers=0), auto)
    assert (rep["mode"], rep["asked"]) == ("closed_form", "auto") and len(rep["blocks"]) == 3
    assert reconstruct_model(copy.deepcopy(slim_tiny[0]), slim_tiny[1], CompressContext(), auto) == \
        {"mode": "none", "asked": "auto"}
    dense = tiny_vit(depth=3)
    geo = Geometry.of(copy.deepcopy(dense))
    plan, _ = solve_budget(random_ranking(geo, 7), geo, "macs", 0.55, "per_type", 8, ALL)
    dropped = slice_model(copy.deepcopy(dense), plan, geo).eval()
    before = copy.deepcopy(dropped.state_dict())
    assert reconstruct_model(dropped, dense, CompressContext(calib_dir=calib_folder, workers=0), auto) == \
        {"mode": "none", "asked": "auto"}
    for k, v in dropped.state_dict().items():
        assert torch.equal(v, before[k])

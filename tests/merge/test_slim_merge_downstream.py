"""What follows a token-merging slim model (slim's default token mode): distillation (merged tokens compared
with their patches' teacher mean), lowrank, export parity, and the token sources the distillation uses."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress import CompressContext, compress
from optimizer.compress.config import RecoveryConfig
from optimizer.methods.merge import merge_schedule, merge_tokens
from optimizer.methods.merge.block import TokenMerge
from optimizer.methods.merge.sources import SourceTap
from optimizer.methods.slim import SlimConfig
from tests.conftest import tiny_vit

KW = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5)


def _slim(**kw):
    return SlimConfig(**{**dict(macs_ratio=0.7, importance="magnitude", multiple=4, tolerance=0.03,
                                token_eval_images=4, batch_size=2, recovery=RecoveryConfig(loss="none")), **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import image_folder
    return image_folder.__wrapped__(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def slim_merged(folder):
    """(default slim at 0.7 MACs on a tiny ViT, its context)."""
    ctx = CompressContext(calib_dir=str(folder), workers=0, log=lambda s: None)
    return compress(tiny_vit(**KW), [_slim()], ctx), ctx


def test_merge_is_slims_default_token_mode_for_a_macs_budget(slim_merged):
    cm, _ = slim_merged
    assert SlimConfig(macs_ratio=0.7).token_mode == "merge"
    assert cm.steps[0]["report"]["token_mode"] == "merge" and sum(merge_schedule(cm.model)) > 0


def test_source_shares_follow_the_merges():
    """Share rows sum to 1 and hold 1/size on each of the size original tokens a merged token stands for; at the
    first merge the merged tokens are exactly the share-weighted mean of the tokens going in."""
    model = merge_tokens(tiny_vit(**KW), [3, 2, 2]).eval()
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((i[0], o[0], o[1])))
             for m in model.modules() if isinstance(m, TokenMerge)]
    tap = SourceTap(model, [0, 1, 2])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model(x)
    tap.remove()
    for h in hooks:
        h.remove()
    first_in, first_out, _ = seen[0]
    torch.testing.assert_close(tap.sources[0] @ first_in, first_out, rtol=1e-5, atol=1e-5)
    for i, (_, _, size) in enumerate(seen):
        share = tap.sources[i]
        assert share.shape == (3, 17 - sum([3, 2, 2][: i + 1]), 17)
        torch.testing.assert_close(share.sum(-1), torch.ones(share.shape[:2]))
        torch.testing.assert_close((share > 1e-6).sum(-1).float(), size[..., 0])
        torch.testing.assert_close(share.amax(-1), 1.0 / size[..., 0])
        torch.testing.assert_close(share[:, 0], torch.eye(17)[0].expand(3, 17))      # the class token is never merged


def test_teacher_tokens_are_averaged_over_each_merged_tokens_patches():
    """matched_features on a merging student: the teacher side of each merged token is the mean of the teacher's
    tokens at the patches it holds (an explicit loop here), class token dropped from both."""
    from optimizer.distill.features import BlockTap, matched_features
    student, teacher = merge_tokens(tiny_vit(**KW), [3, 2, 2]).eval(), tiny_vit(**KW, seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    with BlockTap(student, [1]) as ts, BlockTap(teacher, [1]) as tt, torch.no_grad():
        student(x)
        teacher(x)
        fs, ft = matched_features(student, ts.outputs, teacher, tt.outputs, [(1, 1)], sources=ts.sources)
        share, b = ts.sources[1], tt.outputs[1]
    assert fs[0].shape == ft[0].shape == (2, 17 - 5 - 1, 64)
    for n in range(2):
        for j in range(1, share.shape[1]):
            held = (share[n, j] > 1e-6).nonzero()[:, 0]
            torch.testing.assert_close(ft[0][n, j - 1], b[n, held].mean(0), rtol=1e-5, atol=1e-5)


def test_slim_merge_then_distill_runs(folder):
    from optimizer.distill import DistillConfig
    dense = tiny_vit(**KW)
    ctx = CompressContext(calib_dir=str(folder), workers=0, log=lambda s: None, teacher=copy.deepcopy(dense))
    cm = compress(copy.deepcopy(dense), [_slim(), DistillConfig(steps=2, batch_size=2, augment=False,
                                                               eval_at_start=False)], ctx)
    report = cm.steps[1]["report"]
    assert report["steps"] == 2
    assert merge_schedule(cm.model) == cm.steps[0]["structure"]["merge"]["schedule"]
    assert torch.isfinite(cm.model(torch.randn(2, 3, 32, 32))).all()


def test_slim_merge_then_lowrank_runs(slim_merged):
    """lowrank factorises the merged model's Linear layers with its default reconstruction ("auto"), which
    resolves to none on a merging model (``reconstruct_model`` propagates token tensors alone, a merging
    block also carries token sizes); an explicit mode is refused in one line."""
    import pytest
    from optimizer.errors import VitoptError
    from optimizer.counting import count_macs
    from optimizer.methods.lowrank import LowRankConfig
    cm, ctx = slim_merged
    merged = cm.model
    lr = LowRankConfig.from_dict({"params_ratio": 0.9, "recovery": "none", "calib_images": 6, "probe_images": 2})
    cm = compress(tiny_vit(**KW), [_slim(), lr], ctx)
    assert merge_schedule(cm.model) == merge_schedule(merged)
    assert count_macs(cm.model).params < count_macs(merged).params
    assert cm.steps[1]["report"]["reconstruct"] == {"mode": "none", "asked": "auto"}
    explicit = LowRankConfig.from_dict({"params_ratio": 0.9, "recovery": "none", "calib_images": 6, "probe_images": 2,
                                        "reconstruct": "closed_form"})
    with pytest.raises(VitoptError, match="reconstruct mode closed_form cannot run on a token-merging model"):
        compress(tiny_vit(**KW), [_slim(), explicit], ctx)


def test_slim_merge_exports_with_parity(slim_merged, folder):
    from optimizer.deploy import DeployOptions, deploy_model, parity_inputs
    cm, _ = slim_merged
    opts = DeployOptions.from_dict({"parity_images": 2})
    result = deploy_model(cm.model, opts, parity_inputs(cm.model, str(folder), opts.parity_images))
    assert result.report["parity"]["passed"]

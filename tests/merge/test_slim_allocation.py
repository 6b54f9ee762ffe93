"""slim merge mode with ``allocate: reconstructed``: the chosen split is the argmin of the KL after
reconstruction, recomputed here on a tiny model; every candidate is reported before and after; budget met."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from optimizer.compress import CompressContext, compress
from optimizer.compress.config import RecoveryConfig
from optimizer.counting import count_macs
from optimizer.errors import VitoptError
from optimizer.methods.merge.allocation import split_images
from optimizer.methods.slim import SlimConfig
from tests.conftest import tiny_vit

KW = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5)
FIT, SCORE = 12, 8


def _folder(root, count=24):
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(1)
    for i in range(count):
        d = root / f"n0000000{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth images (a few random blobs) so that attention and merging see structure, not white noise
        img = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((10, 10, 1))).astype(np.uint8)
        Image.fromarray(img).save(d / f"img_{i}.png")
    return root


def _cfg(**kw):
    return SlimConfig(**{**dict(macs_ratio=0.6, importance="magnitude", token_mode="merge", multiple=4, tolerance=0.03,
                                allocate="reconstructed", allocate_images=FIT, token_eval_images=SCORE, batch_size=4,
                                recovery=RecoveryConfig(loss="none")), **kw})


@pytest.fixture(scope="module")
def allocated(tmp_path_factory):
    folder = _folder(tmp_path_factory.mktemp("alloc"))
    model = tiny_vit(**KW)
    ctx = CompressContext(calib_dir=str(folder), workers=0, log=lambda s: None)
    cm = compress(copy.deepcopy(model), [_cfg()], ctx)
    return cm, model, folder


def _kl_on(model, teacher, images) -> float:
    """Mean KL(teacher || model) in float64, straight from the logits (the oracle)."""
    with torch.no_grad():
        t = F.log_softmax(teacher(images).double(), 1)
        s = F.log_softmax(model(images).double(), 1)
    return float((t.exp() * (t - s)).sum(1).mean())


def test_chosen_split_is_the_argmin_after_reconstruction(allocated):
    """Rebuild every candidate the report lists, reconstruct it as the step does, score it on the held-out images
    here: the scores match the report's and the step kept the argmin."""
    from optimizer.data.folder import ImageFolderData, collate, eval_transform
    from optimizer.methods.merge.block import merge_tokens
    from optimizer.methods.merge.schedule import MacsModel
    from optimizer.methods.merge.slim_mode import candidates
    from optimizer.methods.slim.baseline import magnitude_importance
    from optimizer.methods.slim.budget import Geometry
    from optimizer.methods.slim.method import ranking_of
    from optimizer.methods.slim.slicing import slice_model
    from optimizer.reconstruct import ReconstructConfig, reconstruct_model
    cm, dense, folder = allocated
    report = cm.steps[0]["report"]
    cfg = _cfg()
    ds = ImageFolderData(str(folder), eval_transform(dense), labeled=False)
    fitted, scored_on = split_images(len(ds), FIT, SCORE)
    assert not set(fitted) & set(scored_on)
    images = collate([ds[i] for i in scored_on]).images
    geo, mm = Geometry.of(dense), MacsModel.of(dense)
    splits = candidates(ranking_of(magnitude_importance(dense), "global"), geo, mm, cfg)
    ctx = CompressContext(calib_dir=str(folder), workers=0, log=lambda s: None)
    rcfg = ReconstructConfig(mode="closed_form", images=FIT, batch_size=4)
    expected = []
    for plan, sched in splits:
        m = slice_model(copy.deepcopy(dense), plan, geo)
        before = _kl_on(merge_tokens(copy.deepcopy(m), sched).eval(), dense, images)
        reconstruct_model(m, dense, ctx, rcfg)
        expected.append((before, _kl_on(merge_tokens(m, sched).eval(), dense, images), sched))
    tried = report["merge_search"]
    assert len(tried) == len(expected) >= 2          # magnitude importance: the searched norms are the dense ones
    for row, (before, after, sched) in zip(tried, expected):
        assert row["schedule"] == sched
        assert row["kl"] == pytest.approx(before, rel=1e-3, abs=1e-5)
        assert row["kl_reconstructed"] == pytest.approx(after, rel=1e-3, abs=1e-5)
    best = min(range(len(expected)), key=lambda i: expected[i][1])
    assert report["allocate"]["chosen"] == best
    assert report["schedule"] == expected[best][2]
    # reconstruction changed the scores, so the ranking is not the one before it
    assert any(abs(b - a) > 1e-6 for b, a, _ in expected)


def test_budget_met_and_every_candidate_reported(allocated):
    cm, dense, _ = allocated
    report = cm.steps[0]["report"]
    assert abs(count_macs(cm.model).macs / count_macs(dense).macs - 0.6) <= 0.03 * 0.6
    assert report["allocate"] == {"by": "reconstructed", "chosen": report["allocate"]["chosen"],
                                  "fit_images": FIT, "score_images": SCORE}
    assert all(isinstance(r["kl"], float) and isinstance(r["kl_reconstructed"], float) for r in report["merge_search"])


def test_split_images_are_evenly_spaced_and_disjoint():
    fitted, scored = split_images(10, 4, 3)
    assert fitted == [0, 2, 5, 7]                   # reconstruct_model's spacing: int(i * 10 / 4)
    assert scored == [1, 4, 8]                      # evenly over [1, 3, 4, 6, 8, 9]
    with pytest.raises(VitoptError, match="needs 8 calibration images besides the 4 it fits on, the folder has 10"):
        split_images(10, 4, 8)


def test_allocate_is_validated():
    with pytest.raises(VitoptError, match="allocate must be one of kl, reconstructed, got 'best'"):
        SlimConfig.from_dict({"macs_ratio": 0.7, "allocate": "best"})
    with pytest.raises(VitoptError, match="allocate reconstructed ranks candidates after reconstruction"):
        SlimConfig.from_dict({"macs_ratio": 0.7, "allocate": "reconstructed", "reconstruct": "none"})
    with pytest.raises(VitoptError, match="allocate_images must be a positive integer, got 0"):
        SlimConfig.from_dict({"macs_ratio": 0.7, "allocate_images": 0})

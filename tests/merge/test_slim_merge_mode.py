"""slim with token_mode merge: widths and a merge schedule chosen together, met budget, exact rebuild."""
from __future__ import annotations

import pytest
import torch

from optimizer.compress import CompressContext, compress
from optimizer.compress.config import RecoveryConfig
from optimizer.counting import count_macs
from optimizer.errors import VitoptError
from optimizer.methods.merge import merge_schedule
from optimizer.methods.merge.schedule import MacsModel
from optimizer.methods.slim import SlimConfig, rebuild
from tests.conftest import tiny_vit

KW = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5)


@pytest.fixture(scope="module")
def slim_merged(tmp_path_factory):
    from tests.conftest import image_folder
    folder = image_folder.__wrapped__(tmp_path_factory.mktemp("imgs"))
    model = tiny_vit(**KW)
    dense = count_macs(model).macs
    cfg = SlimConfig(macs_ratio=0.6, importance="magnitude", token_mode="merge", multiple=4, tolerance=0.03,
                     token_eval_images=4, batch_size=2, recovery=RecoveryConfig(loss="none"))
    cm = compress(model, [cfg], CompressContext(calib_dir=str(folder), workers=0, log=lambda s: None))
    return cm, dense


def test_budget_met_with_widths_and_schedule(slim_merged):
    cm, dense = slim_merged
    step = cm.steps[0]
    report, structure = step["report"], step["structure"]
    sched = structure["merge"]["schedule"]
    assert merge_schedule(cm.model) == sched == report["schedule"]
    assert abs(count_macs(cm.model).macs / dense - 0.6) <= 0.03 * 0.6
    # the search tried more than one split between widths and merging, and kept the lowest KL
    tried = report["merge_search"]
    assert len(tried) >= 2
    assert min(t["kl"] for t in tried) == [t for t in tried if t["schedule"] == sched][0]["kl"]
    assert all(b["token_index"] is None for b in structure["blocks"])          # nothing dropped


def test_planned_macs_are_the_counted_macs(slim_merged):
    cm, _ = slim_merged
    from optimizer.methods.merge.schedule import block_shapes
    mm = MacsModel.of(tiny_vit(**KW))
    assert mm.macs(merge_schedule(cm.model), block_shapes(cm.model)) == count_macs(cm.model).macs


def test_rebuild_restores_widths_and_schedule(slim_merged):
    cm, _ = slim_merged
    again = rebuild(tiny_vit(**KW, seed=1), cm.steps[0]["structure"])
    again.load_state_dict(cm.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), cm.model(x), rtol=0, atol=0)


def test_bad_token_mode_is_refused():
    with pytest.raises(VitoptError, match="token_mode must be one of drop, merge, got 'mix'"):
        SlimConfig.from_dict({"macs_ratio": 0.7, "token_mode": "mix"})

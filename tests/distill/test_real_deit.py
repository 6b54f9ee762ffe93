"""DeiT-Tiny with the real weights: 197 tokens, class token removed, token-pruned student gathered."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress.registry import CompressContext
from optimizer.distill import DistillConfig, recover
from optimizer.models.blocks import make_prunable
from optimizer.models.loading import load_model

pytestmark = pytest.mark.slow

CFG = dict(steps=1, batch_size=4, limit=4, augment=False, log_every=1, eval_at_start=False, save_every=0)


def test_identical_copy_has_zero_loss_and_pruned_copy_does_not(shared_weights, mini_train):
    teacher = load_model("deit_tiny_patch16_224", shared_weights).model
    ctx = CompressContext(calib_dir=mini_train, workers=0, log=lambda s: None)
    before = copy.deepcopy(teacher.state_dict())

    same = copy.deepcopy(teacher)
    rep = recover(same, teacher, ctx, DistillConfig(**CFG))
    first = rep["first_losses"]
    assert first["kd"] == pytest.approx(0, abs=1e-5)
    for k in ("intra", "inter", "rand"):
        assert first[k] == pytest.approx(0, abs=1e-6)

    pruned = make_prunable(copy.deepcopy(teacher))
    keep = [0] + list(range(1, 197, 2))                     # class token + every other patch, from block 6 on
    pruned.blocks[6].token_index = torch.tensor(keep)
    for b in pruned.blocks[6:]:
        b.token_positions = keep
    rep = recover(pruned, teacher, ctx, DistillConfig(**CFG))
    first = rep["first_losses"]
    assert first["kd"] > 0 and first["intra"] > 0 and torch.isfinite(torch.tensor(first["loss"]))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())

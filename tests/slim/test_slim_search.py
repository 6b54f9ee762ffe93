"""The mask search on a tiny ViT: masks move, resume is exact, apply() meets the budget and round-trips."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress import CompressContext, compress, load_compressed, save_compressed
from optimizer.compress.config import RecoveryConfig
from optimizer.counting import count_macs
from optimizer.methods.slim import SearchModel, SlimConfig, search_masks
from optimizer.methods.slim import search as search_mod
from tests.conftest import tiny_vit

KW = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


def ctx_for(folder, **kw):
    return CompressContext(calib_dir=str(folder), workers=0, log=lambda s: None, **kw)


def test_search_model_with_unit_masks_equals_the_dense_model():
    model = tiny_vit(**KW)
    sm = SearchModel(copy.deepcopy(model), token_init=50.0).eval()   # gates = 1 exactly
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(sm(x), model(x), atol=1e-5)


def test_search_moves_masks_and_keeps_weights_frozen(image_folder):
    model = tiny_vit(**KW)
    teacher = copy.deepcopy(model)
    qkv_before = model.blocks[0].attn.qkv.weight.clone()
    cfg = SlimConfig(macs_ratio=0.6, steps=3, batch_size=2)
    res = search_masks(model, cfg, ctx_for(image_folder), teacher)
    assert torch.equal(model.blocks[0].attn.qkv.weight, qkv_before)          # frozen
    assert not torch.equal(res.attn_mask[0], torch.ones_like(res.attn_mask[0]))
    assert res.token_gate.shape == (3, 17) and torch.all(res.token_gate[:, 0] == 1)
    assert torch.all(res.token_gate[1:] <= res.token_gate[:-1] + 1e-7)        # monotone over depth
    assert res.report["steps"] == 3


def test_interrupted_search_resumes_exactly(image_folder, tmp_path, monkeypatch):
    cfg = SlimConfig(macs_ratio=0.6, steps=4, batch_size=2, checkpoint_every=1)
    base = tiny_vit(**KW)
    ref = search_masks(copy.deepcopy(base), cfg, ctx_for(image_folder), copy.deepcopy(base))

    calls = {"n": 0}
    real = search_mod.kd_loss

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    work = tmp_path / "work"
    monkeypatch.setattr(search_mod, "kd_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        search_masks(copy.deepcopy(base), cfg, ctx_for(image_folder, work_dir=str(work)), copy.deepcopy(base))
    monkeypatch.setattr(search_mod, "kd_loss", real)
    logs = []
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, work_dir=str(work), log=logs.append)
    res = search_masks(copy.deepcopy(base), cfg, ctx, copy.deepcopy(base))
    assert any("resuming the mask search at step 2/4" in line for line in logs)
    for a, b in zip(res.attn_mask + res.mlp_mask, ref.attn_mask + ref.mlp_mask):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(res.token_gate, ref.token_gate, atol=1e-6)


@pytest.mark.parametrize("importance", ["learned", "taylor", "magnitude"])
def test_apply_meets_budget_and_restores(image_folder, tmp_path, importance):
    model = tiny_vit(**KW)
    dense_macs = count_macs(model).macs
    cfg = SlimConfig(macs_ratio=0.6, steps=2, batch_size=2, importance=importance, baseline_batches=2,
                     recovery=RecoveryConfig(loss="logit", epochs=1, lr=1e-4, batch_size=2, holdout=0.1))
    cm = compress(model, [cfg], ctx_for(image_folder, teacher=copy.deepcopy(model)),
                  arch="vit_tiny_patch16_224", model_kwargs=KW)
    ratio = count_macs(cm.model).macs / dense_macs
    assert abs(ratio - 0.6) <= 0.02 * 0.6
    rec = cm.steps[0]["report"]["recovery"]
    assert rec["recovery"] == "logit" and rec["config"]["beta"] == 0.0
    # the held-out guard scored the slice before and after, and returned the better of the two
    hist = rec["holdout"]["history"]
    assert [h["step"] for h in hist] == [0, rec["steps"]]
    assert rec["holdout"]["returned_step"] == min(hist, key=lambda h: h["mean_kl"])["step"]
    save_compressed(tmp_path / "out", cm)
    loaded = load_compressed(tmp_path / "out").model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), cm.model(x))


def test_second_budget_reuses_the_finished_search(image_folder, tmp_path):
    base = tiny_vit(**KW)
    work = str(tmp_path / "work")
    kw = dict(steps=2, batch_size=2, recovery=RecoveryConfig(loss="none"))
    compress(copy.deepcopy(base), [SlimConfig(macs_ratio=0.6, **kw)],
             ctx_for(image_folder, work_dir=work, teacher=copy.deepcopy(base)))
    logs = []
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, work_dir=work, log=logs.append,
                          teacher=copy.deepcopy(base))
    cm = compress(copy.deepcopy(base), [SlimConfig(macs_ratio=0.8, **kw)], ctx)
    assert any("resuming the mask search at step 2/2" in line for line in logs)
    assert abs(cm.steps[0]["report"]["macs_ratio"] - 0.8) <= 0.016


def test_search_ends_when_batches_hold_only_unreadable_images(tmp_path):
    """Oracle: the search returns (it used to revisit an all-unreadable batch forever: the loader
    position is derived from the step count, which such a batch did not advance)."""
    import signal
    import numpy as np
    from PIL import Image
    d = tmp_path / "imgs" / "cls"
    d.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "a_good.jpg")
    for i in range(5):
        (d / f"b_broken{i}.jpg").write_bytes(b"not a jpeg")

    def too_long(*_):
        raise TimeoutError("the search did not end")
    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(120)
    try:
        model = tiny_vit(**KW)
        res = search_masks(model, SlimConfig(macs_ratio=0.6, steps=6, batch_size=1), ctx_for(tmp_path / "imgs"),
                           copy.deepcopy(model))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert res.token_gate.shape[0] == 3

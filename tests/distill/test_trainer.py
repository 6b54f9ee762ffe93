"""recover(): frozen teacher, determinism, exact resume, pruned/narrow students, errors."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizer.compress.registry import CompressContext
from optimizer.distill import DistillConfig, ManifoldDistillLoss, recover
from optimizer.distill.features import BlockTap, matched_features
from optimizer.distill.trainer import lr_at
from optimizer.errors import VitoptError
from optimizer.models.blocks import make_prunable
from tests.conftest import tiny_vit

FAST = dict(batch_size=2, augment=False, lr=2e-3, warmup_frac=0.0, log_every=1, eval_at_start=False)


def _ctx(folder, work=None, log=None, **kw):
    return CompressContext(calib_dir=str(folder), workers=0, seed=3, work_dir=work,
                           log=log or (lambda s: None), **kw)


def _pair(seed=1):
    teacher = tiny_vit(depth=2)
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return student, teacher


def _loss_on(student, teacher, x):
    with torch.no_grad(), BlockTap(student, [0, 1]) as ts, BlockTap(teacher, [0, 1]) as tt:
        zs, zt = student.eval()(x), teacher(x)
        fs, ft = matched_features(student, ts.outputs, teacher, tt.outputs, [(0, 0), (1, 1)])
        return float(ManifoldDistillLoss(K=8)(zs, zt, fs, ft, generator=torch.Generator().manual_seed(0)).total)


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_recover_lowers_loss_and_never_touches_teacher(image_folder):
    student, teacher = _pair()
    before_t = copy.deepcopy(teacher.state_dict())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    before = _loss_on(student, teacher, x)
    rep = recover(student, teacher, _ctx(image_folder, synsets=str(image_folder.parent / "synsets.tsv")),
                  DistillConfig(steps=12, val_dir=str(image_folder), **FAST))
    after = _loss_on(student, teacher, x)
    assert after < 0.7 * before
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert rep["steps"] == 12 and rep["unreadable_images"] >= 1   # broken.jpg is reported, not fatal
    assert rep["final_losses"]["loss"] < rep["first_losses"]["loss"]
    ev = rep["final_eval"]
    assert ev["images"] == 6 and ev["agreement"] is not None and ev["top1"] is not None
    assert not student.training and not any(b._forward_hooks for b in student.blocks)


def test_same_seed_same_weights_with_augmentation(image_folder):
    cfg = DistillConfig(steps=3, **{**FAST, "augment": True})
    outs = []
    for _ in range(2):
        student, teacher = _pair()
        recover(student, teacher, _ctx(image_folder), cfg)
        outs.append(_params(student))
    assert torch.equal(outs[0], outs[1])


def test_resume_continues_exactly(image_folder, tmp_path):
    cfg = DistillConfig(steps=6, save_every=3, ema_decay=0.5, **FAST)
    s_ref, teacher = _pair()
    recover(s_ref, teacher, _ctx(image_folder, work=str(tmp_path / "a")), cfg)

    def crash(msg):
        if "step 4/6" in msg:
            raise KeyboardInterrupt
    s_run, _ = _pair()
    with pytest.raises(KeyboardInterrupt):
        recover(s_run, teacher, _ctx(image_folder, work=str(tmp_path / "b"), log=crash), cfg)
    s_new, _ = _pair()
    rep = recover(s_new, teacher, _ctx(image_folder, work=str(tmp_path / "b")), cfg, resume=True)
    assert rep["start_step"] == 3 and rep["steps"] == 6
    assert torch.equal(_params(s_new), _params(s_ref))
    with pytest.raises(VitoptError, match="other settings"):
        recover(_pair()[0], teacher, _ctx(image_folder, work=str(tmp_path / "b")),
                DistillConfig(steps=6, save_every=3, **{**FAST, "lr": 1e-3}), resume=True)
    with pytest.raises(VitoptError, match="nothing to resume"):
        recover(_pair()[0], teacher, _ctx(image_folder, work=str(tmp_path / "c")), cfg, resume=True)


def test_narrow_student_with_pruned_tokens_trains(image_folder):
    teacher = tiny_vit(depth=2)
    student = make_prunable(tiny_vit(depth=2, embed_dim=32, num_heads=2, seed=4))
    keep = [0, 1, 4, 6, 9, 15]
    student.blocks[1].token_index = torch.tensor(keep)
    student.blocks[1].token_positions = keep
    rep = recover(student, teacher, _ctx(image_folder), DistillConfig(steps=2, **FAST))
    assert rep["steps"] == 2 and rep["final_losses"]["intra"] > 0


def test_plain_ce_needs_no_teacher_and_logit_kd_has_no_feature_terms(image_folder):
    student, teacher = _pair()
    rep = recover(student, None, _ctx(image_folder), DistillConfig(steps=2, alpha=0.0, beta=0.0, **FAST))
    assert rep["final_losses"]["ce"] > 0 and rep["final_losses"]["kd"] == 0
    rep = recover(student, teacher, _ctx(image_folder), DistillConfig(steps=2, beta=0.0, **FAST))
    assert rep["final_losses"]["kd"] > 0 and rep["final_losses"]["intra"] == 0
    with pytest.raises(VitoptError, match="needs a teacher"):
        recover(student, None, _ctx(image_folder), DistillConfig(steps=1, **FAST))
    with pytest.raises(VitoptError, match="training images"):
        recover(student, teacher, CompressContext(), DistillConfig(steps=1, **FAST))


def test_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(s, 100, 1.0, 10, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, 1.0, 10, 0.01) == pytest.approx(0.01)


def test_holdout_guard_returns_the_best_weights_seen(image_folder):
    """A destructive run (huge lr) comes back as the starting weights; a good one keeps its last step."""
    syn = str(image_folder.parent / "synsets.tsv")
    student, teacher = _pair()
    start = copy.deepcopy(student.state_dict())
    bad = dict(FAST, lr=0.5, clip_grad=None)
    rep = recover(student, teacher, _ctx(image_folder, synsets=syn), DistillConfig(steps=4, holdout=0.34, **bad))
    hist = rep["holdout"]["history"]
    assert [h["step"] for h in hist] == [0, 4] and hist[-1]["mean_kl"] > hist[0]["mean_kl"]
    assert rep["holdout"]["returned_step"] == 0
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())

    student2, _ = _pair()
    recover(student2, teacher, _ctx(image_folder, synsets=syn),
            DistillConfig(steps=4, holdout=0.34, keep_best=False, **bad))
    assert not torch.equal(_params(student2), _params(_pair()[0]))       # keep_best off: the last weights

    student3, _ = _pair()
    rep3 = recover(student3, teacher, _ctx(image_folder, synsets=syn),
                   DistillConfig(steps=12, holdout=0.34, eval_every=6, **FAST))
    h3 = rep3["holdout"]["history"]
    assert [h["step"] for h in h3] == [0, 6, 12]
    assert rep3["holdout"]["returned_step"] == min(h3, key=lambda h: h["mean_kl"])["step"]
    assert h3[-1]["mean_kl"] < h3[0]["mean_kl"]


def test_holdout_images_are_never_trained_on(image_folder):
    from optimizer.data.folder import ImageFolderData, eval_transform
    from optimizer.distill.trainer import HoldoutGuard
    model = tiny_vit(depth=1)
    ds = ImageFolderData(image_folder, eval_transform(model), synsets=str(image_folder.parent / "synsets.tsv"))
    every = [str(p) for p, _ in ds.samples]
    guard = HoldoutGuard.split(ds, 0.34, eval_transform(model), model, torch.device("cpu"), 2, 0)
    held = [str(p) for p, _ in guard.loader.dataset.samples]
    train = [str(p) for p, _ in ds.samples]
    assert held == every[::3] and not set(held) & set(train) and sorted(held + train) == sorted(every)


def test_holdout_config_errors():
    with pytest.raises(ValueError, match="holdout must be"):
        DistillConfig(holdout=0.8)
    with pytest.raises(ValueError, match="needs alpha > 0 or beta > 0"):
        DistillConfig(holdout=0.1, alpha=0.0, beta=0.0)


def test_lr_scale_freezes_or_scales_parameters_and_extra_loss_is_added_and_logged(image_folder):
    """A parameter scaled by 0 never moves; the extra term enters the loss (its gradient moves the
    head bias towards its target) and is logged under its name with the total."""
    student, teacher = _pair()
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if n.startswith("blocks.0.")}
    target = torch.full_like(student.head.bias, 1.0)
    terms = []

    def extra(step):
        t = 10.0 * ((student.head.bias - target) ** 2).mean()
        terms.append(float(t.detach()))
        return {"pull": t}

    rep = recover(student, teacher, _ctx(image_folder),
                  DistillConfig(steps=6, beta=0.0, **FAST), extra_loss=extra,
                  lr_scale=lambda n: 0.0 if n.startswith("blocks.0.") else (250.0 if n == "head.bias" else 1.0))
    for n, p in student.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert len(terms) == 6 and terms[-1] < 0.25 * terms[0]
    fl = rep["final_losses"]
    assert fl["pull"] == pytest.approx(terms[-1]) and fl["total"] == pytest.approx(fl["loss"] + fl["pull"])
    with pytest.raises(VitoptError, match="learning-rate scale of .* is -1.0"):
        recover(_pair()[0], teacher, _ctx(image_folder), DistillConfig(steps=1, **FAST), lr_scale=lambda n: -1.0)

"""The manifold loss against a slow, explicit-loop reference of the official formulation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from optimizer.distill import DistillConfig, ManifoldDistillLoss, relation_losses, sample_patches
from optimizer.distill.features import BlockTap, matched_features
from optimizer.errors import VitoptError
from tests.conftest import tiny_vit


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / max(n, 1e-12) for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def reference_relations(f_s, f_t, index):
    """Explicit loops over images, positions and pairs, in Python floats (float64)."""
    B, N = f_s.shape[:2]
    S = [[_unit(f_s[b, n].tolist()) for n in range(N)] for b in range(B)]
    T = [[_unit(f_t[b, n].tolist()) for n in range(N)] for b in range(B)]
    intra = sum((_dot(T[b][i], T[b][j]) - _dot(S[b][i], S[b][j])) ** 2
                for b in range(B) for i in range(N) for j in range(N)) / (B * N * N)
    inter = sum((_dot(T[a][n], T[b][n]) - _dot(S[a][n], S[b][n])) ** 2
                for n in range(N) for a in range(B) for b in range(B)) / (N * B * B)
    flat_s = [S[k // N][k % N] for k in index]
    flat_t = [T[k // N][k % N] for k in index]
    K = len(index)
    rand = sum((_dot(flat_t[i], flat_t[j]) - _dot(flat_s[i], flat_s[j])) ** 2
               for i in range(K) for j in range(K)) / (K * K)
    return intra, inter, rand


def reference_total(z_s, z_t, labels, feats_s, feats_t, idx, alpha, beta, tau, w):
    B, C = z_s.shape
    total = 0.0
    if alpha < 1:
        ce = 0.0
        for b in range(B):
            row = z_s[b].tolist()
            m = max(row)
            lse = m + math.log(sum(math.exp(x - m) for x in row))
            ce += lse - row[int(labels[b])]
        total += (1 - alpha) * ce / B
    if alpha > 0:
        kl = 0.0
        for b in range(B):
            ps = [x / tau for x in z_s[b].tolist()]
            pt = [x / tau for x in z_t[b].tolist()]
            ls = math.log(sum(math.exp(x) for x in ps))
            lt = math.log(sum(math.exp(x) for x in pt))
            kl += sum(math.exp(t - lt) * ((t - lt) - (s - ls)) for s, t in zip(ps, pt))
        total += alpha * tau * tau * kl / B
    if beta > 0:
        per_layer = []
        for f_s, f_t, ix in zip(feats_s, feats_t, idx):
            a, b, c = reference_relations(f_s, f_t, ix)
            per_layer.append(w[0] * a + w[1] * b + w[2] * c)
        total += beta * sum(per_layer) / len(per_layer)
    return total


def test_relations_match_loop_reference_with_different_widths():
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(3, 5, 8, generator=g)
    f_t = torch.randn(3, 5, 12, generator=g)       # teacher wider: relations are width-free
    idx = sample_patches(15, 7, torch.Generator().manual_seed(1))
    got = relation_losses(f_s.double(), f_t.double(), index=idx)
    want = reference_relations(f_s, f_t, idx.tolist())
    for x, y in zip(got, want):
        assert float(x) == pytest.approx(y, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("alpha,beta,tau", [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (1.0, 0.0, 1.0), (0.0, 0.0, 1.0)])
def test_full_loss_matches_reference(alpha, beta, tau):
    g = torch.Generator().manual_seed(2)
    B, N, C = 4, 6, 10
    z_s, z_t = torch.randn(B, C, generator=g), torch.randn(B, C, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    feats_s = [torch.randn(B, N, 8, generator=g) for _ in range(2)]
    feats_t = [torch.randn(B, N, 16, generator=g) for _ in range(2)]
    K = 9
    loss = ManifoldDistillLoss(alpha=alpha, beta=beta, tau=tau, K=K)
    got = loss(z_s, z_t, feats_s, feats_t, labels, generator=torch.Generator().manual_seed(5))
    # the loss draws one sample per layer pair from the generator, in order
    gen = torch.Generator().manual_seed(5)
    idx = [sample_patches(B * N, K, gen).tolist() for _ in range(2)] if beta > 0 else []
    want = reference_total(z_s, z_t, labels, feats_s, feats_t, idx, alpha, beta, tau, (4.0, 0.1, 0.2))
    assert float(got.total) == pytest.approx(want, rel=1e-5)
    parts = got.to_dict()
    assert parts["loss"] == pytest.approx(parts["ce"] + parts["kd"] + parts["intra"] + parts["inter"] + parts["rand"],
                                          rel=1e-5)
    assert (parts["intra"] > 0) == (beta > 0) and (parts["ce"] > 0) == (alpha < 1)


def test_identical_features_and_logits_give_zero():
    f = torch.randn(2, 5, 8)
    z = torch.randn(2, 3)
    out = ManifoldDistillLoss()(z, z.clone(), [f], [f * 3.0])   # channel scale is normalised away
    assert out.kd == pytest.approx(0, abs=1e-7)
    assert out.intra == pytest.approx(0, abs=1e-10) and out.inter == pytest.approx(0, abs=1e-10)
    assert out.rand == pytest.approx(0, abs=1e-10)


def test_errors_are_user_errors():
    with pytest.raises(VitoptError, match="label for every image"):
        ManifoldDistillLoss(alpha=0.5, beta=0)(torch.randn(2, 3), torch.randn(2, 3), labels=torch.tensor([-1, 0]))
    with pytest.raises(VitoptError, match="equal batch"):
        relation_losses(torch.randn(2, 5, 4), torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match="pair up"):
        DistillConfig(student_layers=(0, 1), teacher_layers=(0,))
    with pytest.raises(ValueError, match="give student_layers"):
        DistillConfig().layer_pairs(4, 12)
    assert DistillConfig(student_layers=(0, 1), teacher_layers=(0, 11)).layer_pairs(2, 12) == [(0, 0), (1, 11)]
    assert DistillConfig().layer_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]


def test_taps_drop_prefix_and_gather_pruned_student_positions():
    from optimizer.models.blocks import make_prunable
    teacher = tiny_vit(depth=2)                    # 1 cls + 16 patches
    student = make_prunable(tiny_vit(depth=2, seed=1))
    keep = [0, 2, 5, 7, 16]                        # cls and four patches kept from block 1 on
    student.blocks[1].token_index = torch.tensor(keep)
    student.blocks[1].token_positions = keep
    x = torch.randn(2, 3, 32, 32)
    with BlockTap(student, [0, 1]) as ts, BlockTap(teacher, [0, 1]) as tt:
        student(x), teacher(x)
        fs, ft = matched_features(student, ts.outputs, teacher, tt.outputs, [(0, 0), (1, 1)])
    assert [f.shape[1] for f in fs] == [16, 4] and [f.shape[1] for f in ft] == [16, 4]
    assert torch.equal(ft[0], tt.outputs[0][:, 1:])
    assert torch.equal(ft[1], tt.outputs[1][:, [2, 5, 7, 16]])
    assert torch.equal(fs[1], ts.outputs[1][:, 1:])
    assert not student.blocks[0]._forward_hooks     # hooks removed on exit


def test_taps_match_patches_across_prefix_counts():
    # a distilled student (cls + dist tokens) against a plain teacher: patch k ↔ patch k
    import timm
    teacher = tiny_vit(depth=1)
    student = timm.create_model("deit_tiny_distilled_patch16_224", depth=1, embed_dim=32, num_heads=2,
                                img_size=32, patch_size=8, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with BlockTap(student, [0]) as ts, BlockTap(teacher, [0]) as tt:
        student(x), teacher(x)
        fs, ft = matched_features(student, ts.outputs, teacher, tt.outputs, [(0, 0)])
    assert torch.equal(fs[0], ts.outputs[0][:, 2:]) and torch.equal(ft[0], tt.outputs[0][:, 1:])

"""A merging ViT through the one deployment chain: ONNX Runtime == PyTorch at several batch sizes,
the matching computed in the graph without the ops TensorRT for RTX rejects, and an engine built."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from optimizer.engine import INSTALL_HINT, available_builder
from optimizer.methods.merge import merge_tokens
from optimizer.tolerances import tolerance_for
from tests.conftest import tiny_vit

KW = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from optimizer.deploy import DeployOptions, deploy_model, write_onnx
    model = merge_tokens(tiny_vit(**KW), [4, 3, 2]).eval()
    result = deploy_model(model, DeployOptions())
    path = tmp_path_factory.mktemp("merge") / "m.onnx"
    write_onnx(result, path)
    return model, result, path


def test_graph_has_no_scatter_sort_or_cumsum(exported):
    _, result, _ = exported
    ops = collections.Counter(n.op_type for n in result.proto.graph.node)
    for banned in ("ScatterElements", "ScatterND", "TopK", "CumSum", "NonZero"):
        assert banned not in ops, f"{banned} in the merged graph: {dict(ops)}"
    # per merging block: ArgMax for the best match, the unmerged and the merged tokens; two gathers;
    # log(size) in the attention of every block after the first merge
    assert ops["ArgMax"] == 3 * 3 and ops["GatherElements"] == 3 * 3 and ops["Log"] == 2


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_onnx_runtime_equals_pytorch(exported, batch):
    import onnxruntime as ort
    model, _, path = exported
    tol = tolerance_for("fp32")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(batch)
    x = torch.randn(batch, 3, 32, 32)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, atol=tol.atol, rtol=tol.rtol)
    assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.trt
@pytest.mark.skipif(available_builder() is None, reason=f"no TensorRT builder importable ({INSTALL_HINT})")
def test_engine_builds(exported):
    from optimizer.engine import engine_from_onnx
    _, _, path = exported
    built = engine_from_onnx(path, (1, 2, 8))
    assert built.size_bytes > 0
    assert built.info["profile"]["max"] == [8, 3, 32, 32]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_keeps_the_merge_index_arithmetic_exact(exported, mode):
    """The running count of kept tokens (``kept @ triu``) has a constant weight but must stay FP32: with
    INT8 scales its integers are off by an ulp, the equality that picks each token fails, and the
    output collapses (min cosine 0.88 dynamic / 0.73 static on this model without the rule; DeiT-Tiny
    slim 0.5 with merging: 0.05)."""
    import onnxruntime as ort
    from optimizer.quant import QuantConfig, quantize_onnx
    _, result, _ = exported
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32).numpy()
    q, rep = quantize_onnx(result.proto, x, QuantConfig(mode=mode, calib_images=16))
    kept = [lr.node for lr in rep.layers if lr.reason.startswith("index arithmetic")]
    masks = [n.name for n in result.proto.graph.node if n.op_type == "MatMul" and "triu" in n.input[1]]
    assert len(masks) == 3 and sorted(kept) == sorted(masks)
    assert len(rep.quantized) > 0

    def run(proto):
        s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x})[0]
    ref, out = run(result.proto), run(q)
    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert cos.min() >= tolerance_for("int8").min_cosine


def test_recorded_margins_are_the_gaps_of_each_decision():
    """Oracle: a numpy recomputation of both gaps per sample: the r-th vs (r+1)-th best A score (which
    tokens merge) and, over the merged A tokens, best vs second-best B score (where they merge)."""
    from optimizer.methods.merge.matching import match_tokens, recording_margins
    torch.manual_seed(0)
    metric = torch.randn(3, 17, 8)
    r = 4
    with recording_margins() as rec:
        _, src, _ = match_tokens(metric, r)
    assert len(rec) == 1 and rec[0].shape == (3,)
    m = metric.double().numpy()
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    for b in range(3):
        scores = m[b, 0::2] @ m[b, 1::2].T
        best = scores.max(-1)
        best[0] = -2.0
        s = np.sort(best)[::-1]
        top2 = np.sort(scores, axis=-1)[:, -2:]
        where = (top2[:, 1] - top2[:, 0])[src[b].numpy()].min()
        assert rec[0][b].item() == pytest.approx(min(s[r - 1] - s[r], where), abs=1e-6)


def test_deploy_hook_records_one_margin_per_merging_block(exported):
    from optimizer.deploy.chain import decision_margins
    model, _, _ = exported
    with torch.no_grad(), decision_margins() as lists:
        model(torch.randn(5, 3, 32, 32))
    got = [t for lst in lists for t in lst]
    assert len(got) == 3 and all(t.shape == (5,) and torch.isfinite(t).all() for t in got)


class _Nudged(torch.nn.Module):
    """The exported model with sample 1's logits moved by ``delta`` in PyTorch only."""

    def __init__(self, model, delta):
        super().__init__()
        self.model, self.delta = model, delta

    def forward(self, x):
        y = self.model(x).clone()
        y[1] += self.delta
        return y


@pytest.mark.parametrize("margin,scale,passes", [(1e-8, 0.05, True),    # near-tie, small change: cosine
                                                 (1e-2, 0.05, False),   # no near-tie: atol applies
                                                 (1e-8, 5.0, False)])   # near-tie, but the output moved
def test_parity_judges_a_near_tie_sample_by_cosine_and_every_other_by_atol(exported, margin, scale, passes):
    import contextlib
    from optimizer.export import check_parity
    from optimizer.tolerances import NEAR_TIE
    model, _, path = exported
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
    delta = scale * base[1].abs().mean() * torch.linspace(-1, 1, base.shape[1])

    @contextlib.contextmanager
    def margins():
        yield [[torch.tensor([1.0, margin, 1.0, 1.0])]]
    res = check_parity(_Nudged(model, delta), str(path), x, atol=1e-4, raise_on_fail=False, margins=margins)
    cos = torch.nn.functional.cosine_similarity(base[1], base[1] + delta, dim=0).item()
    assert res.passed is passes
    assert res.near_ties == (1 if margin < NEAR_TIE["margin"] else 0)
    assert passes == (margin < NEAR_TIE["margin"] and cos >= NEAR_TIE["min_cosine"])
    plain = check_parity(_Nudged(model, delta), str(path), x, atol=1e-4, raise_on_fail=False)
    assert not plain.passed and plain.near_ties == 0

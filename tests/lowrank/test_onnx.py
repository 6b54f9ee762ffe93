"""A factorised ViT exports to ONNX with parity, and merge_lowrank_pairs merges exported two-term layers."""
import numpy as np
import pytest
import torch

from optimizer.methods.lowrank import LowRankConfig, LowRankLinear, factorize_linears
from tests.conftest import tiny_vit


def _factorised(merge):
    model = tiny_vit()
    torch.manual_seed(1)
    x = torch.randn(8, 3, 32, 32)
    cfg = LowRankConfig(params_ratio=0.6, calib_images=8, batch_size=4, heldout_every=0, comp_steps=10, comp_fraction=0.25,
                        merge=merge)
    model, structure, _ = factorize_linears(model, cfg, [x[:4], x[4:]], log=lambda s: None)
    return model.eval(), structure


def _ort(proto_or_path, x):
    import onnxruntime as ort
    src = proto_or_path if isinstance(proto_or_path, str) else proto_or_path.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_export_parity_with_dynamic_batch(tmp_path):
    from optimizer.export import check_parity, onnx_from_torch
    model, structure = _factorised(merge=True)
    path = tmp_path / "lr.onnx"
    onnx_from_torch(model, path)
    for b in (1, 5):
        res = check_parity(model, str(path), torch.randn(b, 3, 32, 32), atol=1e-4)
        assert res.passed and res.max_abs_diff < 1e-4


def test_graph_rule_merges_two_term_layers(tmp_path):
    import onnx
    import onnx_graphsurgeon as gs
    from optimizer.export import onnx_from_torch
    from optimizer.graph import op_histogram
    from optimizer.graph.rules import apply_rules
    model, structure = _factorised(merge=False)
    two_term = [p for p, s in structure.items() if s["ranks"][1] > 0]
    assert len(two_term) >= 3
    path = tmp_path / "lr2.onnx"
    onnx_from_torch(model, path)
    proto = onnx.load(str(path))
    graph = gs.import_onnx(proto)
    counts = apply_rules(graph, ["merge_lowrank_pairs"])
    merged = gs.export_onnx(graph)
    assert counts["merge_lowrank_pairs"] == len(two_term)          # coverage: one rewrite per factorised Linear
    before, after = op_histogram(proto), op_histogram(merged)
    assert before["MatMul"] - after["MatMul"] == 2 * len(two_term)  # four GEMMs -> two per layer
    assert before["Add"] - after["Add"] == len(two_term)            # the branch sum is gone
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_ort(merged, x), _ort(str(path), x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(merged, x), model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-4)


def test_graph_rule_runs_in_cleanup_and_leaves_merged_models_alone(tmp_path):
    import onnx
    from optimizer.export import onnx_from_torch
    from optimizer.graph import cleanup_graph
    model, structure = _factorised(merge=True)
    assert all(m.ranks[1] == 0 for m in model.modules() if isinstance(m, LowRankLinear))
    path = tmp_path / "lr1.onnx"
    onnx_from_torch(model, path)
    _, report = cleanup_graph(onnx.load(str(path)))
    assert report.rules.get("merge_lowrank_pairs") == 0


@pytest.mark.trt
def test_factorised_model_builds_an_engine(tmp_path):
    from optimizer.engine import available_builder, engine_from_onnx, save_engine
    from optimizer.export import onnx_from_torch
    if available_builder() is None:
        pytest.skip("no TensorRT builder importable (pip install tensorrt-rtx or tensorrt)")
    model, structure = _factorised(merge=True)
    onnx_from_torch(model, tmp_path / "lr.onnx")
    built = engine_from_onnx(tmp_path / "lr.onnx", batch_sizes=(1, 4))
    path = save_engine(built, tmp_path / "lr.engine")
    assert built.size_bytes > 0 and path.is_file() and path.stat().st_size == built.size_bytes

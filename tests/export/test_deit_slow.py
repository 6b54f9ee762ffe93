"""DeiT-Tiny with real weights on real validation images: export parity, rule coverage, fp16."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.export.models import TOLERANCES

N_IMAGES = 24


def _val_images(model, root, n):
    """``n`` images spread over the validation classes (not the first class only)."""
    from optimizer.data.folder import ImageFolderData, eval_transform
    ds = ImageFolderData(root, eval_transform(model), labeled=True)
    idx = np.linspace(0, len(ds) - 1, n).astype(int)
    items = [ds[int(i)] for i in idx]
    return torch.stack([it[0] for it in items if it[0] is not None])


@pytest.mark.slow
def test_deit_tiny_export_cleanup_fp16_on_real_images(tmp_path, shared_weights, mini_val):
    import onnx
    from optimizer.export import check_parity, compare_outputs, onnx_from_torch, save_onnx
    from optimizer.graph import cleanup_graph, convert_to_fp16
    from optimizer.models.loading import load_model
    model = load_model("deit_tiny_patch16_224", shared_weights).model
    x = _val_images(model, mini_val, N_IMAGES)
    raw = tmp_path / "deit.onnx"
    onnx_from_torch(model, raw)
    res = check_parity(model, raw, x, atol=TOLERANCES["fp32_export_atol"])
    assert res.passed and res.top1_agreement == 1.0
    print(f"DeiT-Tiny fp32 export parity on {len(x)} val images: {res}")

    clean, rep = cleanup_graph(onnx.load(str(raw)))
    # coverage: one rewrite per attention block of the 12-block model
    assert rep.rules["reshape_transpose_to_transpose"] == 12 and rep.rules["merge_attention_scales"] == 12
    assert rep.ops_after.get("Shape", 0) <= 1
    clean_path = tmp_path / "clean.onnx"
    save_onnx(clean, clean_path)
    assert check_parity(model, clean_path, x, atol=TOLERANCES["fp32_export_atol"]).passed

    f16_path = tmp_path / "fp16.onnx"
    save_onnx(convert_to_fp16(clean), f16_path)
    from optimizer.export import ort_session
    sess = ort_session(f16_path)
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    r16 = compare_outputs(ref, got, atol=float("inf"))
    print(f"DeiT-Tiny fp16 vs PyTorch fp32: {r16}")
    assert got.dtype == np.float32
    assert r16.cosine > TOLERANCES["fp16_min_cosine"]
    assert r16.top1_agreement >= TOLERANCES["fp16_min_top1_agreement"]

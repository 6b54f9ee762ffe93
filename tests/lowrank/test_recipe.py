"""A ``lowrank`` step in a ``vitopt run`` recipe (after slim), exported to ONNX with parity."""
import json

import numpy as np
import torch


def test_recipe_slim_then_lowrank_then_export(tmp_path, image_folder):
    from optimizer.cli.main import main
    from optimizer.compress import load_compressed
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: vit_tiny_patch16_224
model_kwargs: {{depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 10}}
calib: {image_folder}
workers: 0
steps:
  - slim: {{macs: 0.8, importance: magnitude, prune_tokens: false, recovery: none}}
  - lowrank: {{params: 0.8, calib_images: 6, batch_size: 3, heldout_every: 0, comp_fraction: 0.25, merge: false}}
  - export: {{}}
""")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    onnx_files = [p for p in out.rglob("*.onnx") if "fp16" not in p.name]
    model_dirs = [p.parent for p in out.rglob("recipe.json")]
    assert onnx_files and model_dirs
    loaded = load_compressed(model_dirs[-1])
    steps = [s["method"] for s in loaded.recipe["steps"]]
    assert steps == ["slim", "lowrank"]
    import onnx
    from optimizer.graph import op_histogram
    two_term = [p for p, s in loaded.recipe["steps"][1]["structure"].items() if s["ranks"][1] > 0]
    ops = op_histogram(onnx.load(str(onnx_files[0])))
    # export's graph cleanup ran merge_lowrank_pairs: two MatMuls per factorised Linear, not four
    n_low = len(loaded.recipe["steps"][1]["structure"])
    depth, linears_per_block = 2, 4
    dense_linears = depth * linears_per_block - n_low
    assert two_term and ops["MatMul"] == 2 * n_low + dense_linears + 2 * depth   # + q·kᵀ and attn·v per block
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = loaded.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref, atol=1e-4, rtol=1e-4)

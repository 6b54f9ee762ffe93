"""A ``gates`` step in a ``vitopt run`` recipe, after ``lowrank``, followed by export (+ clean-up, fp16) and build."""
from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("gates_k", [None, "fixed"])
def test_recipe_lowrank_then_gates_then_export(tmp_path, image_folder, gates_k):
    pytest.importorskip("onnxruntime")
    import onnx
    from optimizer.export import get_metadata
    from optimizer.pipeline.recipe import load_recipe
    from optimizer.pipeline.run import run_recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: vit_tiny_patch16_224
model_kwargs: {{depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 5}}
calib: {image_folder}
data: {image_folder}
workers: 0
steps:
  - lowrank: {{params: 0.8}}
  - gates: {{macs: 0.6, steps: 2, batch_size: 2, group_size: 16, gate_hidden: 8, calib_groups: [1, 2], augment: false}}
  - export: {{opset: 18, parity_images: 4, atol: 1.0e-4{", gates_k: " + gates_k if gates_k else ""}}}
""")
    manifest = run_recipe(load_recipe(recipe), tmp_path / "out")
    steps = {s["step"]: s["result"] for s in manifest["steps"]}
    assert steps["export"]["parity"]["passed"]
    # two gate-training steps leave every unit of this tiny model static (always on in calibration), so
    # both modes export the same graph and say so; the modes' effect is tested in test_gates_cli.py
    want = "none (every gated unit static)"
    assert steps["export"]["method_export"]["vitopt.gates.k"] == want
    assert get_metadata(onnx.load(str(tmp_path / "out" / "model.onnx")))["vitopt.gates.k"] == want
    saved = json.loads((tmp_path / "out" / "compressed" / "recipe.json").read_text())
    assert [st["method"] for st in saved["steps"]] == ["lowrank", "gates"]
    gates = saved["steps"][1]["structure"]["blocks"]
    specs = [blk[part][lin] for blk in gates for part, lin in
             (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))]
    assert any(s is not None and "ranks" in s for s in specs)   # gated modules hold low-rank layers


def test_recipe_export_rejects_an_unknown_gates_k(tmp_path):
    from optimizer.errors import VitoptError
    from optimizer.pipeline.recipe import load_recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""
model: vit_tiny_patch16_224
model_kwargs: {depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 5}
steps:
  - export: {gates_k: static}
""")
    with pytest.raises(VitoptError, match="step 1 \\(export\\): invalid export options: gates_k must be data or "
                                          "fixed, got 'static'"):
        load_recipe(recipe)            # at load time: before any compress step could run

"""``reconstruct`` options in every method's config, recipes and ``--set``; a reconstructed model
rebuilds from recipe.json + safetensors and exports through the deployment chain with parity."""
from __future__ import annotations

import json

import pytest
import torch

from optimizer.compress.runner import build_config, parse_set_options
from optimizer.errors import VitoptError
from optimizer.reconstruct import ReconstructConfig

TINY = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


@pytest.mark.parametrize("method,budget", [("slim", {"params": 0.7}), ("lowrank", {"params": 0.7}),
                                           ("gates", {"macs": 0.6})])
def test_every_method_takes_a_reconstruct_block(method, budget):
    cfg = build_config(method, {**budget, **parse_set_options(["reconstruct.mode=blockwise",
                                                                "reconstruct.steps=50"])})
    assert cfg.reconstruct == ReconstructConfig(mode="blockwise", steps=50)
    assert build_config(method, {**budget, "reconstruct": "closed_form"}).reconstruct.mode == "closed_form"
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("options,message", [
    ({"mode": "fast"}, "mode must be one of none, closed_form, blockwise, both, auto, got 'fast'"),
    ({"images": 0}, "images must be a positive integer, got 0"),
    ({"ridge": -1}, "ridge must be non-negative, got -1.0"),
    ({"layers": "qkv"}, "layers must be a non-empty subset of proj, fc2, got \\['qkv'\\]"),
    ({"holdout": 0.9}, "holdout must be a fraction in \\[0, 0.5\\], got 0.9"),
    ({"lr": 0}, "lr must be positive, got 0.0"),
    ({"stepz": 3}, "unknown reconstruct option\\(s\\): stepz"),
])
def test_bad_values_are_one_line_errors(options, message):
    with pytest.raises(VitoptError, match=message) as e:
        build_config("slim", {"params": 0.7, "reconstruct": options})
    assert "\n" not in str(e.value)


def test_reconstructed_model_rebuilds_and_exports_with_parity(tmp_path, calib_folder):
    import timm
    from optimizer.compress import compress, load_compressed, save_compressed
    from optimizer.compress.registry import CompressContext
    from optimizer.deploy import DeployOptions, deploy_model
    from optimizer.methods.slim.config import SlimConfig
    model = timm.create_model("vit_tiny_patch16_224", **TINY).eval()
    dense = timm.create_model("vit_tiny_patch16_224", **TINY).eval()
    dense.load_state_dict(model.state_dict())
    cfg = build_config("slim", {"params": 0.6, "importance": "magnitude", "prune_tokens": False, "recovery": "none",
                                "reconstruct": {"mode": "closed_form", "holdout": 0.25}})
    assert isinstance(cfg, SlimConfig)
    cm = compress(model, [cfg], CompressContext(calib_dir=calib_folder, teacher=dense, workers=0),
                  arch="vit_tiny_patch16_224", model_kwargs=TINY, base_weights="random")
    rep = cm.steps[0]["report"]["reconstruct"]
    assert rep["mode"] == "closed_form" and any(b["kept"] for b in rep["blocks"])
    save_compressed(tmp_path / "out", cm)
    loaded = load_compressed(tmp_path / "out")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), cm.model(x), rtol=0, atol=0)
    result = deploy_model(loaded.model, DeployOptions())
    parity = result.report["parity"]
    assert parity["passed"], parity

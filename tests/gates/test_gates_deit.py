"""End to end on the real DeiT-Tiny: ``vitopt compress --method gates`` -> load -> ONNX parity."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
def test_cli_compress_gates_deit_tiny(tmp_path, shared_weights, mini_train, mini_val):
    from optimizer.cli.main import main
    from optimizer.compress import load_compressed
    from optimizer.data import build_loader
    from optimizer.export import check_parity
    from optimizer.methods.gates.export import onnx_from_gated
    out = tmp_path / "gated"
    rc = main(["compress", "--method", "gates", "--model", "deit_tiny_patch16_224", "--checkpoint", shared_weights,
               "--calib", mini_train, "--macs", "0.7", "--set", "steps=2", "--set", "batch_size=8",
               "--set", "calib_images=16", "--set", "calib_groups=1,8", "--workers", "0",
               "-o", str(out), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())["report"]
    assert rep["dense_params"] == 5717416
    assert rep["deployed_params"] <= rep["gated_params_before_static"]
    model = load_compressed(out).model
    assert len(model.blocks) == 12
    images = next(iter(build_loader(mini_val, model, batch_size=8, shuffle=True, workers=0))).images
    onnx_from_gated(model, tmp_path / "g.onnx")
    for b in (1, 2, 8):
        assert check_parity(model, tmp_path / "g.onnx", images[:b], atol=1e-3).passed

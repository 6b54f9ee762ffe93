"""End to end on the real DeiT-Tiny: the CLI compresses, the result restores, and stays close to dense."""
import json

import pytest
import torch


@pytest.mark.slow
def test_cli_lowrank_on_deit_tiny(tmp_path, shared_weights, mini_train, mini_val):
    from optimizer.cli.main import main
    from optimizer.compress import load_compressed
    from optimizer.data import build_loader
    from optimizer.evaluation import evaluate
    from optimizer.methods.lowrank import LowRankLinear
    from optimizer.models.loading import load_model
    out = tmp_path / "lr"
    rc = main(["compress", "--method", "lowrank", "--model", "deit_tiny_patch16_224", "--checkpoint", shared_weights,
               "--calib", mini_train, "--params", "0.75", "--set", "calib_images=32",
               "--set", "probe_images=8", "-o", str(out), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert abs(res["params_ratio"] - 0.75) < 0.015
    loaded = load_compressed(out)
    assert sum(isinstance(m, LowRankLinear) for m in loaded.model.modules()) >= 24
    dense = load_model("deit_tiny_patch16_224", shared_weights).model
    torch.set_num_threads(2)
    r = evaluate(loaded.model, build_loader(mini_val, dense, batch_size=32, workers=0, limit=64), reference=dense)
    # measured 47 % on these 64 images (32 calibration images, default independent ASVD); a broken
    # factorisation (e.g. mismatched factors) gives < 10 %
    assert r.agreement >= 30.0, r

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
               "--set", "probe_images=8", "--set", "reconstruct.images=64", "-o", str(out),
               "--json", str(tmp_path / "r.json")])
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


@pytest.mark.slow
def test_cli_latency_budget_on_deit_tiny_and_table_reuse(tmp_path, shared_weights, mini_train):
    """--latency measures an ONNX Runtime table for DeiT-Tiny's four Linear shapes, meets the budget on
    the predicted latency, never factorises a layer past its measured break-even; the table in the
    --json result is reused by a second run (latency_table=FILE) without measuring again."""
    from optimizer.cli.main import main
    from optimizer.methods.lowrank.latency import LatencyTable
    common = ["--model", "deit_tiny_patch16_224", "--checkpoint", shared_weights, "--calib", mini_train,
              "--set", "calib_images=16", "--set", "probe_images=4"]
    rc = main(["compress", "--method", "lowrank", *common, "--latency", "0.85", "--set", "latency_batch=1",
               "--set", "latency_threads=2", "-o", str(tmp_path / "a"), "--json", str(tmp_path / "a.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "a.json").read_text())["report"]
    lat = rep["latency"]
    table = LatencyTable.from_dict(lat["latency_table"])
    assert set(table.shapes) == {"197x192->576", "197x192->192", "197x192->768", "197x768->192"}
    assert table.batch == 1 and table.model["ms"] > 0
    assert lat["predicted_latency_ratio"] <= 0.85 + 1e-9
    assert rep["factorised"] > 0
    for row in lat["layers"].values():
        if row["rank"] is not None:
            assert row["rank"] <= row["breakeven_rank"] and row["ms"] < row["dense_ms"]
    rc = main(["compress", "--method", "lowrank", *common, "--params", "0.8", "--set",
               f"latency_table={tmp_path / 'a.json'}", "-o", str(tmp_path / "b"), "--json", str(tmp_path / "b.json")])
    assert rc == 0
    rep_b = json.loads((tmp_path / "b.json").read_text())["report"]
    assert rep_b["latency"]["latency_table"]["shapes"] == table.to_dict()["shapes"]
    assert all(r["rank"] is None or r["rank"] <= r["breakeven_rank"] for r in rep_b["latency"]["layers"].values())
    assert abs(rep_b["params_ratio"] - 0.8) < 0.02

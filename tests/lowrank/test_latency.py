"""Latency-aware allocation: the per-shape table (smoothing, break-even, JSON), rank caps, the latency
budget, and the ONNX Runtime measurement. Timing-dependent values are never asserted: tests with
fixed outcomes use hand-written tables; the measured one is checked for structure only."""
import json

import pytest
import torch

from optimizer.compress import config_from_dict
from optimizer.errors import VitoptError
from optimizer.methods.lowrank import LowRankConfig, factorize_linears
from optimizer.methods.lowrank.allocate import DENSE, LayerCost, allocate_ranks
from optimizer.methods.lowrank.latency import TABLE_FORMAT, LatencyTable, measure_ort_table, monotone, shape_key
from tests.conftest import tiny_vit


def test_monotone_is_the_least_squares_non_decreasing_fit():
    assert monotone([1, 2, 3]) == [1, 2, 3]
    assert monotone([3, 1, 2]) == pytest.approx([2, 2, 2])
    assert monotone([1, 3, 2, 4]) == pytest.approx([1, 2.5, 2.5, 4])
    vals = [5.0, 0.5, 2.0, 1.0, 7.0, 6.0]
    out = monotone(vals)
    assert all(a <= b for a, b in zip(out, out[1:]))
    assert sum(out) == pytest.approx(sum(vals))     # pooling keeps the total


def _table(shapes, model=None):
    return LatencyTable("onnxruntime CPUExecutionProvider", 8, 2, shapes, model)


def test_breakeven_uses_smoothed_times():
    t = _table({shape_key(17, 64, 192): {"dense": 1.0, "ranks": {"8": 0.5, "16": 0.9, "24": 1.2}},
                shape_key(17, 64, 64): {"dense": 1.0, "ranks": {"8": 0.5, "16": 1.1, "24": 0.95}},
                shape_key(17, 64, 256): {"dense": 1.0, "ranks": {"8": 1.5}}})
    assert t.breakeven(17, 64, 192) == 16
    # 1.1 then 0.95 pool to 1.025: rank 24's fast reading is noise, not a faster layer
    assert t.rank_ms(17, 64, 64) == pytest.approx({8: 0.5, 16: 1.025, 24: 1.025})
    assert t.breakeven(17, 64, 64) == 8
    assert t.breakeven(17, 64, 256) == 0
    with pytest.raises(VitoptError, match="no entry for the 17x256->64 layer"):
        t.dense_ms(17, 256, 64)


def test_table_json_round_trip_and_lookup_inside_reports(tmp_path):
    t = _table({shape_key(5, 8, 8): {"dense": 0.1, "ranks": {"4": 0.05}}}, {"params": 10, "ms": 2.0})
    t.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.to_dict() == t.to_dict() and back.to_dict()["format"] == TABLE_FORMAT
    # a compress --json result / recipe holding the table in a step report
    (tmp_path / "r.json").write_text(json.dumps({"steps": [{"report": {"latency": {"latency_table": t.to_dict()}}}]}))
    assert LatencyTable.load(tmp_path / "r.json").shapes == t.shapes


@pytest.mark.parametrize("content, match", [("[1]", "not a JSON object"), ('{"a": 1}', "holds no vitopt latency"),
                                            (json.dumps({"format": TABLE_FORMAT, "backend": "x"}), "not a valid"),
                                            ("{", "not valid JSON")])
def test_bad_table_files_are_one_line_errors(tmp_path, content, match):
    p = tmp_path / "t.json"
    p.write_text(content)
    with pytest.raises(VitoptError, match=match):
        LatencyTable.load(p)
    with pytest.raises(VitoptError, match="latency table"):
        LatencyTable.load(tmp_path / "missing.json")


def test_cap_limits_ranks_and_a_layer_never_faster_stays_dense():
    flat = torch.linspace(1, 0, 33)
    # params break-even of 32x32 is 16; cap at 8 (measured) and 0 (no rank is faster)
    # ("a" is too costly to keep dense, so it stays factorised at its cap)
    layers = [LayerCost("a", 32, 32, 64, 1e6, flat, cap=8), LayerCost("b", 32, 32, 64, 1024, flat, cap=0),
              LayerCost("c", 32, 32, 64, 1024, flat)]
    ranks = allocate_ranks(layers, budget=1e9, multiple=4)
    assert ranks == {"a": DENSE, "b": DENSE, "c": DENSE}     # unlimited budget: every layer ends dense
    tight = allocate_ranks(layers, budget=64 * 8 + 1024 + 64 * 12, multiple=4)
    assert tight["a"] == 8 and tight["b"] == DENSE and tight["c"] == 12


def test_latency_costs_drive_the_greedy():
    # same errors; each rank of "pricey" costs 5x the time: the budget goes to the cheap layer
    err = torch.linspace(1, 0, 65)
    cheap = {r: 0.01 * r for r in range(4, 33, 4)}
    pricey = {r: 0.5 + 0.05 * r for r in range(4, 33, 4)}
    layers = [LayerCost("cheap", 64, 64, 0.0, 1.0, err, cheap), LayerCost("pricey", 64, 64, 0.0, 1.0, err, pricey)]
    ranks = allocate_ranks(layers, budget=0.9 + 1e-9, multiple=4)
    assert ranks == {"cheap": 20, "pricey": 4}
    assert sum(L.cost(ranks[L.path]) for L in layers) <= 0.9 + 1e-12


def _tiny_table(model_params, faster=True, model_ms=6.0, multiple=8):
    """A hand-made table for tiny_vit's shapes (17 tokens), dense 0.3 ms: ranks below 24 cost r/100 ms,
    larger ones 0.5 ms (break-even 16); ``faster=False``: no rank beats dense."""
    shapes = {}
    for fin, fout in ((64, 192), (64, 64), (64, 256), (256, 64)):
        cap = fin * fout // (fin + fout)
        ranks = {str(r): ((r / 100 if r < 24 else 0.5) if faster else 1.0 + r)
                 for r in range(multiple, cap + 1, multiple)}
        shapes[shape_key(17, fin, fout)] = {"dense": 0.3, "ranks": ranks}
    return _table(shapes, {"params": model_params, "ms": model_ms})


def _factorise(cfg):
    model = tiny_vit(depth=3)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    return factorize_linears(model, cfg, [x[:4], x[4:]], log=lambda s: None)


def _common():
    return dict(calib_images=8, batch_size=4, heldout_every=0, probe_images=4)


def test_params_budget_with_table_caps_every_rank(tmp_path):
    from optimizer.counting import count_params
    params = count_params(tiny_vit(depth=3))
    _tiny_table(params).save(tmp_path / "t.json")
    _, structure, report = _factorise(LowRankConfig(params_ratio=0.8, latency_table=str(tmp_path / "t.json"),
                                                    **_common()))
    assert structure and all(sum(s["ranks"]) <= 16 for s in structure.values())     # break-even 16 everywhere
    lat = report["latency"]
    assert all(v["breakeven_rank"] == 16 for v in lat["layers"].values())
    assert lat["predicted_latency_ratio"] < 1.0


def test_latency_budget_is_met_on_the_predicted_latency(tmp_path):
    from optimizer.counting import count_params
    params = count_params(tiny_vit(depth=3))
    _tiny_table(params, model_ms=6.0).save(tmp_path / "t.json")
    # 12 layers x 0.3 ms dense = 3.6 of 6.0 ms; ratio 0.7 leaves 4.2 - 2.4 = 1.8 ms for them
    _, structure, report = _factorise(LowRankConfig(latency_ratio=0.7, latency_table=str(tmp_path / "t.json"),
                                                    **_common()))
    pred = report["latency"]["predicted_latency_ratio"]
    assert 0.6 < pred <= 0.7 + 1e-9
    assert report["budget"] == "latency" and report["target_ratio"] == 0.7
    spent = sum(v["ms"] for v in report["latency"]["layers"].values())
    assert spent == pytest.approx(pred * 6.0 - (6.0 - 3.6), abs=1e-3)
    assert all(sum(s["ranks"]) <= 16 for s in structure.values())


def test_latency_budget_errors(tmp_path):
    from optimizer.counting import count_params
    params = count_params(tiny_vit(depth=3))
    _tiny_table(params + 1).save(tmp_path / "other.json")
    with pytest.raises(VitoptError, match="measured on a model with"):
        _factorise(LowRankConfig(latency_ratio=0.7, latency_table=str(tmp_path / "other.json"), **_common()))
    _tiny_table(params, faster=False).save(tmp_path / "slow.json")   # factorising never pays: all dense
    with pytest.raises(VitoptError, match="budget is too small"):
        _factorise(LowRankConfig(latency_ratio=0.9, latency_table=str(tmp_path / "slow.json"), **_common()))
    _tiny_table(params, multiple=16).save(tmp_path / "m16.json")
    with pytest.raises(VitoptError, match="rank multiples"):
        _factorise(LowRankConfig(latency_ratio=0.9, latency_table=str(tmp_path / "m16.json"), **_common()))
    t = _tiny_table(params)
    del t.shapes[shape_key(17, 256, 64)]
    t.save(tmp_path / "partial.json")
    with pytest.raises(VitoptError, match="no entry for the 17x256->64"):
        _factorise(LowRankConfig(params_ratio=0.8, latency_table=str(tmp_path / "partial.json"), **_common()))


def test_measured_ort_table_structure():
    t = measure_ort_table([(17, 64, 192, 48), (17, 64, 64, 0), (17, 64, 192, 48)], multiple=16, batch=2,
                          threads=1, rounds=2, iters=2, log=lambda s: None)
    assert set(t.shapes) == {"17x64->192", "17x64->64"}            # duplicates measured once
    assert sorted(int(r) for r in t.shapes["17x64->192"]["ranks"]) == [16, 32, 48]
    assert t.shapes["17x64->64"]["ranks"] == {}                      # nothing saves: dense time only
    assert all(v["dense"] > 0 for v in t.shapes.values())
    assert all(ms > 0 for ms in t.shapes["17x64->192"]["ranks"].values())
    assert t.batch == 2 and t.threads == 1 and t.model is None
    assert LatencyTable.from_dict(json.loads(json.dumps(t.to_dict()))).shapes == t.shapes


def test_ort_source_measures_this_model():
    cfg = LowRankConfig(latency_ratio=1.0, latency_batch=2, latency_threads=1, **_common())
    model, structure, report = _factorise(cfg)
    lat = report["latency"]
    table = LatencyTable.from_dict(lat["latency_table"])
    assert set(table.shapes) == {"17x64->192", "17x64->64", "17x64->256", "17x256->64"}
    assert table.model["ms"] > 0 and table.model["params"] > 0 and table.batch == 2
    assert lat["predicted_latency_ratio"] <= 1.0 + 1e-9
    for path, s in structure.items():     # every factorised layer is measured faster than dense
        row = lat["layers"][path]
        assert sum(s["ranks"]) <= row["breakeven_rank"] and row["ms"] < row["dense_ms"]


def test_config_budget_kinds_and_cli_flag():
    with pytest.raises(ValueError, match="exactly one"):
        LowRankConfig(params_ratio=0.5, latency_ratio=0.5)
    cfg = config_from_dict({"method": "lowrank", "latency_ratio": "0.7", "latency_batch": "4"})
    assert cfg.budget_kind == "latency" and cfg.ratio == 0.7 and cfg.latency_source == "ort"
    assert LowRankConfig(params_ratio=0.5).latency_source is None
    assert LowRankConfig(params_ratio=0.5, latency_table="t.json").latency_source == "t.json"
    for bad in ({"latency_batch": 0}, {"latency_threads": "0"}, {"latency_table": ""}):
        with pytest.raises(VitoptError):
            config_from_dict({"method": "lowrank", "params_ratio": 0.5, **bad})
    from optimizer.compress.runner import build_config
    assert build_config("lowrank", {"latency": "0.8"}).latency_ratio == 0.8
    with pytest.raises(VitoptError, match="takes no --latency"):
        build_config("slim", {"latency": "0.8"})


def test_missing_table_fails_before_calibration(tmp_path):
    def batches():
        raise AssertionError("calibration started before the table was checked")
        yield
    cfg = LowRankConfig(params_ratio=0.8, latency_table=str(tmp_path / "none.json"), **_common())
    with pytest.raises(VitoptError, match="none.json does not exist"):
        factorize_linears(tiny_vit(depth=3), cfg, batches(), log=lambda s: None)

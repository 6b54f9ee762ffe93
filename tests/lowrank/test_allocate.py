"""Mixed-rank budget: meets the ratio, never factorises without saving, rounds ranks."""
import pytest
import torch

from optimizer.counting import count_macs, count_params
from optimizer.errors import VitoptError
from optimizer.methods.lowrank import LowRankConfig, LowRankLinear, factorize_linears
from optimizer.methods.lowrank.allocate import DENSE, LayerCost, allocate_ranks
from tests.conftest import tiny_vit


def _run(**kw):
    model = tiny_vit(depth=3)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    args = dict(calib_images=8, batch_size=4, heldout_every=0, comp_steps=0)
    args.update(kw)
    cfg = LowRankConfig(**args)
    dense_p, dense_m = count_params(model), count_macs(model).macs
    model, structure, report = factorize_linears(model, cfg, [x[:4], x[4:]], log=lambda s: None)
    return model, structure, report, dense_p, dense_m


@pytest.mark.parametrize("ratio", [0.5, 0.7, 0.9])
def test_params_budget_met_and_rules_respected(ratio):
    model, structure, report, dense_p, _ = _run(params_ratio=ratio, multiple=8)
    achieved = count_params(model) / dense_p
    assert achieved <= ratio + 1e-9 and achieved >= ratio - 0.02, achieved
    assert report["params_ratio"] == pytest.approx(achieved, abs=1e-5)
    for s in structure.values():
        r = sum(s["ranks"])
        assert r % 8 == 0 and r >= 8
        assert r * (s["in"] + s["out"]) < s["in"] * s["out"], s     # every factorised layer saves


def test_macs_budget_met():
    model, _, report, _, dense_m = _run(macs_ratio=0.6, multiple=4)
    achieved = count_macs(model).macs / dense_m
    assert 0.58 <= achieved <= 0.6 + 1e-9
    assert all(sum(m.ranks) % 4 == 0 for m in model.modules() if isinstance(m, LowRankLinear))


def test_budget_too_small_is_a_user_error():
    with pytest.raises(VitoptError, match="budget is too small"):
        _run(params_ratio=0.05)


def test_greedy_prefers_the_layer_with_more_error_per_cost():
    flat = torch.linspace(1, 0, 33)                               # slow decay: ranks help a lot
    steep = torch.cat([torch.tensor([1.0, 0.01]), torch.zeros(31)])
    layers = [LayerCost("a", 32, 32, 64, 1024, flat), LayerCost("b", 32, 32, 64, 1024, steep)]
    ranks = allocate_ranks(layers, budget=64 * 12, multiple=2)
    assert ranks["b"] == 2 and ranks["a"] == 10
    assert sum(layers[i].cost(ranks[p]) for i, p in enumerate("ab")) <= 64 * 12


def test_layer_that_cannot_save_stays_dense():
    # 8x8: in·out/(in+out) = 4, so rank 8 never saves and the layer is not a candidate
    layers = [LayerCost("tiny", 8, 8, 16, 64, torch.zeros(9))]
    assert allocate_ranks(layers, budget=64, multiple=8) == {"tiny": DENSE}


def test_sensitivity_weights_are_measured_for_every_candidate():
    _, structure, report, _, _ = _run(params_ratio=0.7, allocation="sensitivity", probe_images=4)
    sens = report["sensitivity"]
    assert len(sens) == 12 and all(v > 0 for v in sens.values())          # 3 blocks x 4 Linears
    assert abs(sum(sens.values()) / len(sens) - 1.0) < 1e-3                 # normalised to mean 1
    _, _, report_err, _, _ = _run(params_ratio=0.7, allocation="error")
    assert report_err["sensitivity"] == {}


@pytest.mark.parametrize("sequential", [True, False])
def test_head_is_factorised_only_when_asked(sequential):
    _, structure, _, _, _ = _run(params_ratio=0.7, sequential=sequential)
    assert "head" not in structure
    model = tiny_vit(depth=3, num_classes=100)
    x = torch.randn(8, 3, 32, 32)
    cfg = LowRankConfig(params_ratio=0.7, calib_images=8, batch_size=4, heldout_every=0, include_head=True,
                        sequential=sequential)
    model, structure, _ = factorize_linears(model, cfg, [x[:4], x[4:]], log=lambda s: None)
    assert isinstance(model.head, LowRankLinear) and structure["head"]["out"] == 100

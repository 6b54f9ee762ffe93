"""The Torch-Pruning peer's budget matching: the ratio found meets the MACs budget within tolerance."""
import pytest

from optimizer.errors import VitoptError
from tests.conftest import tiny_vit


def test_match_ratio_meets_a_linear_budget_and_reports_its_trials():
    from _tp_peer import match_ratio
    # measure falls linearly from 1.0: the answer is known in closed form (r = 0.6 for 0.4)
    r, model, value, trials = match_ratio(lambda r: r, lambda m: 1.0 - m, 0.4, 0.02)
    assert abs(value / 0.4 - 1) <= 0.02 and abs(r - 0.6) <= 0.02 * 0.4
    assert model == r and trials[-1] == {"ratio": round(r, 6), "measured": value}


def test_match_ratio_gives_up_in_one_line_when_the_measure_jumps_over_the_window():
    from _tp_peer import match_ratio
    step = lambda r: 1.0 if r < 0.5 else 0.2    # nothing lands within 2 % of 0.6
    with pytest.raises(VitoptError, match="no pruning ratio meets 0.600 within 2%"):
        match_ratio(lambda r: r, step, 0.6, 0.02, max_iter=8)


def test_peer_config_refuses_two_budgets_and_unknown_importance():
    from _tp_peer import PeerConfig
    with pytest.raises(ValueError, match="exactly one budget"):
        PeerConfig(macs_ratio=0.5, params_ratio=0.5)
    with pytest.raises(ValueError, match="importance must be one of taylor, magnitude"):
        PeerConfig(importance="l1", macs_ratio=0.5)


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_torch_pruning_meets_the_macs_budget_on_a_tiny_vit(importance):
    pytest.importorskip("torch_pruning", reason="the peer needs torch-pruning (pip install torch-pruning)")
    import torch
    from _tp_peer import PeerConfig, match_ratio, prune_vit
    from optimizer.counting import count_macs
    dense = tiny_vit(depth=2, embed_dim=64, num_heads=4, mlp_ratio=4.0)
    cfg = PeerConfig(importance=importance, macs_ratio=0.6, head_pruning_ratio=0.25, round_to=None)
    grads = None
    if importance == "taylor":
        torch.manual_seed(0)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        torch.nn.functional.cross_entropy(dense(x), y).backward()
        grads = {n: p.grad.clone() for n, p in dense.named_parameters()}
        dense.zero_grad(set_to_none=True)
    base = count_macs(dense).macs
    r, model, value, _ = match_ratio(lambda r: prune_vit(dense, cfg, r, grads),
                                     lambda m: count_macs(m).macs / base, 0.6, 0.02)
    # the oracle: the pruned model's own count, and the dense one untouched
    assert abs(count_macs(model).macs / base / 0.6 - 1) <= 0.02
    assert count_macs(dense).macs == base
    attn = model.blocks[0].attn
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_missing_torch_pruning_is_one_line_naming_the_install(monkeypatch):
    import builtins
    from _tp_peer import require_torch_pruning
    from optimizer.errors import MissingDependency
    real = builtins.__import__

    def no_tp(name, *a, **k):
        if name == "torch_pruning":
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tp)
    with pytest.raises(MissingDependency, match="pip install torch-pruning"):
        require_torch_pruning()

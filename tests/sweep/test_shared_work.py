"""Work a sweep shares between variants: cached dense eval logits, cached low-rank statistics, paired SE."""
import copy

import pytest
import torch

from tests.conftest import tiny_vit


def test_paired_difference_matches_the_hand_computed_value():
    from optimizer.evaluation import paired_difference
    a = {"images_sha256": "x", "correct": "1100"}
    b = {"images_sha256": "x", "correct": "1000"}
    # d = [0, 1, 0, 0]: mean 0.25, sample sd 0.5, se 0.25 -> 25 +- 25 points
    assert paired_difference(a, b) == pytest.approx((25.0, 25.0))
    assert paired_difference(a, {**b, "images_sha256": "y"}) is None        # other images: no pairing
    assert paired_difference({"images_sha256": "x", "correct": "1-1"}, {"images_sha256": "x", "correct": "0-1"}) \
        == pytest.approx((50.0, 50.0))                                        # unlabelled images skipped


def test_reference_cache_runs_the_reference_once_and_changes_nothing(tmp_path, image_folder):
    from optimizer.data import build_loader
    from optimizer.evaluation import evaluate
    ref, model = tiny_vit(num_classes=5, seed=0), tiny_vit(num_classes=5, seed=1)
    calls = []
    ref.register_forward_hook(lambda m, i, o: calls.append(1))
    loader = lambda: build_loader(str(image_folder), model, batch_size=2, workers=0)
    cache = tmp_path / "ref.pt"
    first = evaluate(model, loader(), reference=ref, reference_cache=cache)
    n_first = len(calls)
    second = evaluate(model, loader(), reference=ref, reference_cache=cache)
    assert n_first > 0 and len(calls) == n_first                 # the second evaluation read the cache
    assert second.to_dict() == first.to_dict()
    assert len(first.per_image["agree"]) == first.images and first.per_image["images_sha256"]
    # other reference weights: the cache is not used
    other = tiny_vit(num_classes=5, seed=2)
    third = evaluate(model, loader(), reference=other, reference_cache=cache)
    plain = evaluate(model, loader(), reference=other)
    assert third.agreement == plain.agreement and third.mean_kl == pytest.approx(plain.mean_kl)


def test_lowrank_statistics_cache_gives_the_same_factorisation_without_reading_images(tmp_path):
    from optimizer.methods.lowrank import LowRankConfig
    from optimizer.methods.lowrank.apply import factorize_linears
    cfg = LowRankConfig(params_ratio=0.8, heldout_every=0, probe_images=2)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 3, 32, 32, generator=g) for _ in range(2)]
    base = tiny_vit()
    a, sa, _ = factorize_linears(copy.deepcopy(base), cfg, iter(batches), log=lambda s: None,
                                 cache_dir=tmp_path, cache_key={"k": 1})

    def never():
        raise AssertionError("images were read although the statistics are cached")
        yield
    logs = []
    b, sb, _ = factorize_linears(copy.deepcopy(base), cfg, never(), log=logs.append, cache_dir=tmp_path,
                                 cache_key={"k": 1})
    assert sa == sb and any("reused" in s for s in logs)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    # other weights -> another cache entry, images read again
    with pytest.raises(AssertionError, match="images were read"):
        factorize_linears(tiny_vit(seed=3), cfg, never(), log=lambda s: None, cache_dir=tmp_path,
                          cache_key={"k": 1})

"""Streaming histograms and amax calibrators against closed-form and brute-force oracles."""
import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.quant.histogram import (StreamingHistogram, amax_entropy, amax_max, amax_mse,
                                       amax_percentile)


def _stream(chunks, bins=2048):
    h = StreamingHistogram(bins)
    for c in chunks:
        h.update(c)
    return h


def test_streaming_histogram_equals_one_shot_histogram_over_the_final_range():
    rng = np.random.default_rng(0)
    # growing ranges force several re-binnings (x2, x4, x16 ...)
    chunks = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.1, 0.3, 1.0, 5.0, 0.2)]
    h = _stream(chunks)
    one, _ = np.histogram(np.abs(np.concatenate(chunks)), bins=h.bins, range=(0.0, h.range))
    assert h.total == sum(c.size for c in chunks)
    # values exactly on a bin edge may fall either side in float64 vs float32 edge arithmetic
    assert np.abs(h.counts - one).sum() <= 4
    assert h.counts.sum() == one.sum()
    assert h.counts.nbytes == 2048 * 8  # memory does not grow with the data


def test_max_calibrator_is_the_exact_max():
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    assert amax_max(_stream(chunks)) == float(np.max(np.abs(np.concatenate(chunks))))


@pytest.mark.parametrize("p", [90.0, 99.0, 99.9])
def test_percentile_calibrator_matches_numpy_within_one_bin(p):
    rng = np.random.default_rng(2)
    data = rng.laplace(0, 1, 200_000).astype(np.float32)
    h = _stream(np.split(data, 10))
    lo, hi = (np.percentile(np.abs(data), p, method=m) for m in ("lower", "higher"))
    w = h.range / h.bins  # the histogram resolves the bracketing order statistics to one bin
    assert lo - w <= amax_percentile(h, p) <= hi + w


def _brute_mse(a, clip):
    s = clip / 127
    q = np.clip(np.round(a / s), 0, 127) * s
    return float(np.mean((a - q) ** 2))


def test_mse_calibrator_finds_the_brute_force_best_clip():
    rng = np.random.default_rng(3)
    # N values uniform in [0, 1] and k at v: for a clip c in [1, v] the squared error is
    # N c^2 / (12 * 127^2) (rounding) + k (v - c)^2 (clipping), minimal at c* = 2kv / (2k + N / (6 * 127^2))
    n, k, v = 200_000, 2, 3.0
    a = np.concatenate([rng.uniform(0, 1, n), [v] * k]).astype(np.float32)
    closed_form = 2 * k * v / (2 * k + n / (6 * 127 ** 2))
    h = _stream([a])
    got = amax_mse(h)
    grid = np.linspace(0.5, 3.0, 400)
    best = grid[np.argmin([_brute_mse(a, c) for c in grid])]
    assert abs(best - closed_form) < 0.05
    assert abs(got - closed_form) < 0.05
    assert _brute_mse(a, got) <= 1.05 * _brute_mse(a, best)


def test_entropy_calibrator_clips_rare_outliers_and_keeps_a_clean_range():
    rng = np.random.default_rng(4)
    bulk = np.abs(rng.normal(0, 1, 200_000))
    outliers = rng.uniform(30, 40, 10)
    h = _stream([np.concatenate([bulk, outliers]).astype(np.float32)])
    clip = amax_entropy(h)
    # the KL optimum keeps the bulk (|x| <= ~4 sigma) and drops the outliers
    assert 2.5 < clip < 10.0
    # uniform data has no tail to cut: the best clip is the whole range
    u = rng.uniform(0, 1, 100_000).astype(np.float32)
    assert amax_entropy(_stream([u])) == pytest.approx(float(u.max()), rel=0.02)


def test_nan_activation_is_refused():
    with pytest.raises(VitoptError, match="NaN or Inf"):
        StreamingHistogram().update(np.array([1.0, np.nan], dtype=np.float32))

"""Streaming least-squares statistics and the closed-form re-fits, against numpy oracles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizer.reconstruct.closed_form import refit_layer
from optimizer.reconstruct.stats import LinearStats, solve_ridge


def _problem(n=300, d_in=12, d_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    y = x @ w.T + 2.0 + 0.1 * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return x, y


def _stats(x, y, batches=1):
    s = LinearStats(x.shape[1], y.shape[1])
    for xb, yb in zip(x.chunk(batches), y.chunk(batches)):
        s.add(xb, yb)
    return s


def test_closed_form_equals_numpy_lstsq():
    x, y = _problem()
    W, b = solve_ridge(_stats(x, y), ridge=0.0)
    A = np.hstack([x.numpy(), np.ones((x.shape[0], 1))])
    sol = np.linalg.lstsq(A, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(W.numpy(), sol[:-1].T, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), sol[-1], rtol=1e-9, atol=1e-10)


def test_ridge_towards_current_weights_equals_augmented_lstsq():
    x, y = _problem()
    w0 = torch.randn(5, 12, dtype=torch.float64)
    ridge = 0.3
    W, b = solve_ridge(_stats(x, y), ridge=ridge, w0=w0)
    # oracle: centred data stacked with sqrt(λ)·I rows whose targets are sqrt(λ)·W0ᵀ
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = ridge * float((xc ** 2).sum()) / x.shape[1]
    A = np.vstack([xc.numpy(), np.sqrt(lam) * np.eye(12)])
    B = np.vstack([yc.numpy(), np.sqrt(lam) * w0.numpy().T])
    Wt = np.linalg.lstsq(A, B, rcond=None)[0]
    np.testing.assert_allclose(W.numpy(), Wt.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), (y.mean(0) - x.mean(0) @ torch.from_numpy(Wt)).numpy(), atol=1e-9)


def test_no_intercept_fits_through_the_origin():
    x, y = _problem()
    W, b = solve_ridge(_stats(x, y), ridge=0.0, intercept=False)
    sol = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(W.numpy(), sol.T, rtol=1e-9, atol=1e-10)
    assert float(b.abs().max()) == 0.0


def test_streamed_batches_equal_one_batch():
    x, y = _problem(n=257)
    one, many = _stats(x, y), _stats(x, y, batches=7)
    for a, b in ((one.xx, many.xx), (one.xy, many.xy), (one.sx, many.sx), (one.sy, many.sy), (one.n, many.n)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(solve_ridge(one, 0.01)[0], solve_ridge(many, 0.01)[0], rtol=1e-10, atol=1e-10)


def test_statistics_memory_does_not_grow_with_rows():
    x, y = _problem(n=1000)
    s = _stats(x[:10], y[:10])
    sizes = [t.numel() for t in (s.xx, s.xy, s.sx, s.sy)]
    s.add(x, y)
    assert [t.numel() for t in (s.xx, s.xy, s.sx, s.sy)] == sizes


def test_refit_linear_removes_the_dropped_inputs_mean_into_the_bias():
    # a layer that lost two of its inputs: the re-fit over the kept ones absorbs their mean in the bias
    x, _ = _problem(d_in=8)
    x[:, 6:] = 3.0 + 0.1 * x[:, 6:]          # the dropped units: large mean, little variance
    full = torch.nn.Linear(8, 4).double()
    with torch.no_grad():
        y = full(x)
    kept = torch.nn.Linear(6, 4).double()
    with torch.no_grad():
        kept.weight.copy_(full.weight[:, :6])
        kept.bias.copy_(full.bias)
    s = _stats(x[:, :6], y)
    refit_layer(kept, s, ridge=0.0)
    W, b = solve_ridge(s, 0.0)
    torch.testing.assert_close(kept.weight.detach(), W)
    torch.testing.assert_close(kept.bias.detach(), b)
    with torch.no_grad():
        before = ((x[:, :6] @ full.weight[:, :6].T + full.bias - y) ** 2).mean()
        after = ((kept(x[:, :6]) - y) ** 2).mean()
    assert after < 0.05 * before


@pytest.mark.parametrize("ranks", [(3, 0), (2, 2)])
def test_lowrank_refit_is_the_whitened_reduced_rank_solution(ranks):
    from optimizer.methods.lowrank.module import LowRankLinear
    x, y = _problem(d_in=10, d_out=8)
    layer = LowRankLinear(10, 8, ranks, bias=True).double()
    refit_layer(layer, _stats(x, y), ridge=0.0)
    assert layer.ranks == ranks
    # oracle (numpy): LS solution W*, then the best rank-r map in the metric of the centred inputs
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    Wt = np.linalg.lstsq(xc, yc, rcond=None)[0]
    Lc = np.linalg.cholesky(xc.T @ xc)
    U, S, Vh = np.linalg.svd(Wt.T @ Lc)
    r = sum(ranks)
    Wr = (U[:, :r] * S[:r]) @ Vh[:r] @ np.linalg.inv(Lc)
    np.testing.assert_allclose(layer.dense_weight().numpy(), Wr, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(layer.bias.detach().numpy(), y.mean(0).numpy() - Wr @ x.mean(0).numpy(), atol=1e-8)

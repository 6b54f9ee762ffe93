"""Streaming least-squares statistics and the ridge solve that reads them.

For inputs X (tokens × d_in) and targets Y (tokens × d_out) only XᵀX, XᵀY, Σx, Σy and the token
count are kept, in float64, so memory does not grow with the number of images. Each batch's
products run in the inputs' precision (float32 activations: float32 GEMMs, 4x cheaper on CPU;
float64 inputs stay exact) and are summed in float64. ``reduce`` sums them over processes
(``optimizer.distributed.all_reduce_sum``), so every rank solves the same system.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..distributed import all_reduce_sum


class LinearStats:
    """Sums for the affine least-squares fit Y ≈ X Wᵀ + b."""

    def __init__(self, d_in: int, d_out: int):
        f64 = torch.float64
        self.xx = torch.zeros(d_in, d_in, dtype=f64)
        self.xy = torch.zeros(d_in, d_out, dtype=f64)
        self.sx = torch.zeros(d_in, dtype=f64)
        self.sy = torch.zeros(d_out, dtype=f64)
        self.n = torch.zeros((), dtype=f64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows of ``x`` (…, d_in) and ``y`` (…, d_out)."""
        x = x.detach().reshape(-1, self.xx.shape[0])
        y = y.detach().reshape(-1, self.xy.shape[1])
        # float64 products: sums over differently split batches (ranks, chunk sizes) then agree to rounding
        x, y = x.double(), y.double()
        self.xx += (x.T @ x).cpu().double()
        self.xy += (x.T @ y).cpu().double()
        self.sx += x.sum(0).cpu().double()
        self.sy += y.sum(0).cpu().double()
        self.n += x.shape[0]

    def reduce(self) -> "LinearStats":
        """Sum over all processes (identity alone); returns self."""
        for t in (self.xx, self.xy, self.sx, self.sy, self.n):
            all_reduce_sum(t)
        return self

    def centred(self, intercept: bool = True) -> tuple:
        """(Cxx, Cxy, mean x, mean y) of the centred data; uncentred (means 0) without an intercept."""
        n = float(self.n)
        if n < 1:
            raise ValueError("no rows were added to the least-squares statistics")
        if not intercept:
            return self.xx, self.xy, torch.zeros_like(self.sx), torch.zeros_like(self.sy)
        mx, my = self.sx / n, self.sy / n
        return self.xx - n * torch.outer(mx, mx), self.xy - n * torch.outer(mx, my), mx, my

    def ridge_system(self, ridge: float, w0: Optional[torch.Tensor] = None, intercept: bool = True) -> tuple:
        """(A, B, λ, mean x, mean y) of the centred ridge system A Wᵀ = B,
        A = Cxx + λI, B = Cxy + λ W0ᵀ, λ = ridge · trace(Cxx) / d_in."""
        cxx, cxy, mx, my = self.centred(intercept)
        d_in = cxx.shape[0]
        lam = float(ridge) * float(torch.trace(cxx)) / d_in
        A = cxx + lam * torch.eye(d_in, dtype=torch.float64)
        B = cxy if w0 is None or lam == 0 else cxy + lam * w0.detach().cpu().double().T
        return A, B, lam, mx, my


def solve_ridge(stats: LinearStats, ridge: float, w0: Optional[torch.Tensor] = None,
                intercept: bool = True) -> tuple:
    """Affine ridge least squares from ``stats`` (float64): returns (W (d_out × d_in), b (d_out)).

    Minimises ‖Y − X Wᵀ − b‖² + λ‖W − W0‖² (the intercept unpenalised, W0 = 0 when None): centring
    puts the mean of whatever the model no longer computes (removed units, dropped heads) in ``b``;
    ``intercept=False`` fits through the origin (b = 0), for a layer without a bias.
    """
    A, B, _, mx, my = stats.ridge_system(ridge, w0, intercept)
    Wt = _solve_psd(A, B)
    return Wt.T.contiguous(), my - mx @ Wt


def _solve_psd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A⁻¹B for symmetric positive (semi)definite A: Cholesky, least squares when singular."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.lstsq(A, B, driver="gelsd").solution

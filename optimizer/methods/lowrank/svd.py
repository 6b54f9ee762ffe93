"""Activation-aware SVD: the rank-r matrix closest to W on real activations.

For calibration inputs X (tokens × in) with C = XᵀX, the output error of replacing W by W' is

    ‖X Wᵀ − X W'ᵀ‖²  =  tr((W − W') C (W − W')ᵀ)  =  ‖(W − W') L‖²       C = L Lᵀ (Cholesky)

so the best rank-r W' is the truncated SVD of W L mapped back: W L = U S Vᵀ,
W'_r = U_r S_r V_rᵀ L⁻¹ (Eckart–Young in the whitened space). Factors are balanced:
up = U_r √S_r, down = √S_r V_rᵀ L⁻¹. Plain SVD is the same with L = I.

Everything here runs in float64: the Cholesky of XᵀX and the back-substitution lose digits
in float32 when XᵀX is ill-conditioned (LayerNorm outputs with near-dead channels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Whitening:
    """Cholesky factor of ``C + λI`` (``L`` lower-triangular), or identity when ``L`` is None."""
    L: Optional[torch.Tensor]
    damp: float                 # the λ actually used
    fallback: bool = False      # True when C could not be factorised and plain SVD was used


def whitening(C: Optional[torch.Tensor], damp: float = 1e-4, tries: int = 8) -> Whitening:
    """Cholesky of ``C + λI`` with λ = damp · mean(diag C), raised ×10 until it factorises.

    Returns an identity whitening (``fallback=True``) when C is absent, empty or never factorises.
    """
    if C is None:
        return Whitening(None, 0.0, fallback=False)
    C = C.to(torch.float64)
    scale = float(torch.diagonal(C).mean())
    if not (scale > 0) or not torch.isfinite(C).all():
        return Whitening(None, 0.0, fallback=True)
    lam = damp * scale
    eye = torch.eye(C.shape[0], dtype=torch.float64)
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(C + lam * eye)
        if int(info) == 0 and torch.isfinite(L).all():
            return Whitening(L, lam)
        lam = max(lam * 10.0, 1e-12 * scale)
    return Whitening(None, 0.0, fallback=True)


def whitened_svd(W: torch.Tensor, wh: Whitening):
    """SVD of W·L (float64): returns (U, S, Vh) with W L = U diag(S) Vh."""
    A = W.to(torch.float64)
    if wh.L is not None:
        A = A @ wh.L
    return torch.linalg.svd(A, full_matrices=False)


def factors_from_svd(U, S, Vh, wh: Whitening, lo: int, hi: int):
    """Balanced factors (up: out×k, down: k×in) of singular components ``lo:hi``, mapped out of the whitened space."""
    s = S[lo:hi].clamp_min(0).sqrt()
    up = U[:, lo:hi] * s
    down = s[:, None] * Vh[lo:hi]
    if wh.L is not None:
        # down · L⁻¹  =  (L⁻ᵀ downᵀ)ᵀ, a triangular solve instead of an inverse
        down = torch.linalg.solve_triangular(wh.L.T, down.T, upper=True).T
    return up, down


def tail_energy(S: torch.Tensor) -> torch.Tensor:
    """``e[r]`` = relative whitened error of the best rank-r approximation, r = 0..len(S)."""
    s2 = S.to(torch.float64) ** 2
    total = float(s2.sum())
    tail = torch.cat([torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0]), torch.zeros(1, dtype=torch.float64)])
    return tail / total if total > 0 else torch.zeros_like(tail)


def output_error(W_new: torch.Tensor, W: torch.Tensor, C_cc: Optional[torch.Tensor],
                 C_cd: Optional[torch.Tensor] = None, C_dd: Optional[torch.Tensor] = None) -> float:
    """Relative output error ‖X_d Wᵀ − X_c W_newᵀ‖² / ‖X_d Wᵀ‖² from Gram matrices (float64).

    C_cc = X_cᵀX_c, C_cd = X_cᵀX_d, C_dd = X_dᵀX_d; with only C_cc the inputs are the same (X_c = X_d).
    Without any Gram matrix it is the relative Frobenius error of the weights.
    """
    Wn, W = W_new.to(torch.float64), W.to(torch.float64)
    if C_cc is None:
        d = float(((Wn - W) ** 2).sum())
        return d / max(float((W ** 2).sum()), 1e-300)
    C_cc = C_cc.to(torch.float64)
    C_cd = C_cc if C_cd is None else C_cd.to(torch.float64)
    C_dd = C_cc if C_dd is None else C_dd.to(torch.float64)
    ref = float(((W @ C_dd) * W).sum())
    err = float(((Wn @ C_cc) * Wn).sum()) - 2.0 * float(((Wn @ C_cd) * W).sum()) + ref
    return max(err, 0.0) / max(ref, 1e-300)

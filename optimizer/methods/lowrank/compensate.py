"""Error compensation: a second low-rank term fitted by Adam on the layer's output loss.

In sequential calibration a layer sees the inputs X_c of the already-compressed prefix while the
dense model saw X_d. The loss that matters is ‖X_d Wᵀ − X_c (W₁ + W₂)ᵀ‖²; the activation-aware
SVD of W alone ignores the input drift. With C_cc = X_cᵀX_c = L Lᵀ and C_cd = X_cᵀX_d:

    ‖X_d Wᵀ − X_c W'ᵀ‖²  =  ‖W' L − T‖²  +  const,        T = W C_cdᵀ L⁻ᵀ

so the loss over *all* calibration tokens is evaluated exactly from Gram matrices, at the cost of
one (out × r × in) product per step, and no activations are cached. Adam runs on the factors in
the whitened space (up: out×r, z = down·L: r×in), which is also a good preconditioner.

[our design] Both terms start from the activation-aware SVD of W (term 1 = top r₁ components,
term 2 = the next r₂), so the starting loss is that of the rank r₁+r₂ ASVD and Adam only improves
on it; the best iterate is kept. ``closed_form`` gives the exact optimum of the same loss
(reduced-rank regression: truncated SVD of T), used as an oracle in tests and as an option.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .svd import Whitening


def whitened_target(W: torch.Tensor, wh: Whitening, C_cd: Optional[torch.Tensor]) -> torch.Tensor:
    """T = W C_cdᵀ L⁻ᵀ (float64); equals W·L when the inputs did not drift."""
    W = W.to(torch.float64)
    if C_cd is None:
        return W @ wh.L if wh.L is not None else W
    M = W @ C_cd.to(torch.float64).T
    if wh.L is None:
        return M
    # M L⁻ᵀ = (L⁻¹ Mᵀ)ᵀ
    return torch.linalg.solve_triangular(wh.L, M.T, upper=False).T


def unwhiten(z: torch.Tensor, wh: Whitening) -> torch.Tensor:
    """down = z · L⁻¹."""
    if wh.L is None:
        return z
    return torch.linalg.solve_triangular(wh.L.T, z.T, upper=True).T


def closed_form(T: torch.Tensor, rank: int):
    """Optimal rank-r (up, z) for ‖up·z − T‖² (balanced factors)."""
    U, S, Vh = torch.linalg.svd(T.to(torch.float64), full_matrices=False)
    s = S[:rank].sqrt()
    return U[:, :rank] * s, s[:, None] * Vh[:rank]


@torch.enable_grad()
def compensate_adam(T: torch.Tensor, terms: list, steps: int, lr: float, refine_first: bool = True,
                    seed: int = 0) -> tuple:
    """Adam on ``‖Σ up_i z_i − T‖² / ‖T‖²`` over the (up, z) pairs in ``terms``.

    ``terms[0]`` is trained only when ``refine_first``; the last pair always is. ``lr`` is relative
    to the root-mean-square entry of the starting factors. Returns (best terms, [first, best] loss).
    """
    torch.manual_seed(seed)
    # float32 is enough here: the residual ‖Σ up·z − T‖ is formed directly (no cancellation of
    # large Gram terms), and it is 2-3x faster than float64 on CPU
    T = T.to(torch.float32)
    norm = max(float((T.double() ** 2).sum()), 1e-300)
    params = [[p.detach().clone().to(torch.float32) for p in pair] for pair in terms]
    train = [p for i, pair in enumerate(params) for p in pair if i > 0 or refine_first or len(params) == 1]
    if not train or steps <= 0:
        return terms, []
    scale = math.sqrt(sum(float((p ** 2).sum()) for p in train) / max(sum(p.numel() for p in train), 1))
    for p in train:
        p.requires_grad_(True)
    opt = torch.optim.Adam(train, lr=lr * max(scale, 1e-12))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    def loss_fn():
        approx = sum(u @ z for u, z in params)
        return ((approx - T) ** 2).sum() / norm

    first = None
    best, best_params = math.inf, None
    for _ in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        value = float(loss.detach())
        if first is None:
            first = value
        if value < best:  # snapshot the iterate this loss belongs to (factors are small)
            best, best_params = value, [[p.detach().clone().double() for p in pair] for pair in params]
        if _ == steps:
            break
        loss.backward()
        opt.step()
        sched.step()
    return best_params, [first, best]

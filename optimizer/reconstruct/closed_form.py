"""Closed-form re-fit of one output map (``attn.proj``, ``mlp.fc2``) from streamed statistics.

A dense ``nn.Linear`` gets the affine ridge solution over the inputs it still has (the kept heads /
hidden units). A ``LowRankLinear`` keeps its ranks: the best rank-r map under the same objective is
the ridge solution W* truncated in the metric of the inputs (A = Cxx + λI = L Lᵀ, SVD of W* L: the
reduced-rank regression), split into the layer's first and second (compensation) terms.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import VitoptError
from .stats import LinearStats, _solve_psd


def current_weight(layer: nn.Module) -> torch.Tensor:
    """The (out × in) map ``layer`` applies."""
    from ..methods.lowrank.module import LowRankLinear
    if isinstance(layer, LowRankLinear):
        return layer.dense_weight()
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    raise VitoptError(f"cannot re-fit a {type(layer).__name__} in closed form (nn.Linear or LowRankLinear only)")


@torch.no_grad()
def refit_layer(layer: nn.Module, stats: LinearStats, ridge: float) -> dict:
    """Replace ``layer``'s weights (and bias) by the ridge fit of ``stats``, in place; returns
    {"lambda", "rank"}. A layer without a bias is fitted through the origin (no intercept)."""
    from ..methods.lowrank.module import LowRankLinear
    from ..methods.lowrank.svd import Whitening, factors_from_svd, whitened_svd
    w0 = current_weight(layer)
    intercept = layer.bias is not None
    A, B, lam, mx, my = stats.ridge_system(ridge, w0, intercept)
    W = _solve_psd(A, B).T.contiguous()
    info = {"lambda": lam}
    if isinstance(layer, LowRankLinear):
        L, err = torch.linalg.cholesky_ex(A + 1e-12 * float(torch.trace(A)) * torch.eye(A.shape[0], dtype=A.dtype))
        if int(err) != 0:
            raise VitoptError("closed-form low-rank re-fit: the input statistics are not positive definite "
                              "(raise reconstruct.ridge)")
        wh = Whitening(L, lam)
        U, S, Vh = whitened_svd(W, wh)
        r1, r2 = layer.ranks
        up1, down1 = factors_from_svd(U, S, Vh, wh, 0, r1)
        W = up1 @ down1
        pairs = {"up1": up1, "down1": down1}
        if r2:
            up2, down2 = factors_from_svd(U, S, Vh, wh, r1, r1 + r2)
            W = W + up2 @ down2
            pairs.update(up2=up2, down2=down2)
        b = my - W @ mx
        layer.set_factors(**pairs, bias=b if layer.bias is not None else None)
        info["rank"] = r1 + r2
    else:
        b = my - W @ mx
        layer.weight.copy_(W.to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(b.to(layer.bias.dtype))
    return info

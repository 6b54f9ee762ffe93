"""Fine-grained manifold distillation loss (Hao et al., NeurIPS 2022), as in the official code.

    L = (1-α)·CE(z_s, y) + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))
        + β · mean over layer pairs [w_intra·L_intra + w_inter·L_inter + w_rand·L_rand]

For one layer pair, F_s (B, N, C_s) and F_t (B, N, C_t) are block outputs without class /
distillation tokens, L2-normalised over channels, so relation matrices are width-free:

    L_intra  per image,    the N×N matrix F Fᵀ          mean squared difference
    L_inter  per position, the B×B matrix across images  mean squared difference
    L_rand   K rows sampled from the pooled B·N patches, K×K relation, mean squared difference
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import VitoptError


@dataclass
class LossTerms:
    """The total loss (a graph-carrying tensor) and each weighted term as a float for logging."""
    total: torch.Tensor
    ce: float = 0.0
    kd: float = 0.0
    intra: float = 0.0
    inter: float = 0.0
    rand: float = 0.0

    def to_dict(self) -> dict:
        return {"loss": float(self.total.detach()), "ce": self.ce, "kd": self.kd,
                "intra": self.intra, "inter": self.inter, "rand": self.rand}


def sample_patches(total: int, K: int, generator: Optional[torch.Generator] = None,
                   device="cpu") -> torch.Tensor:
    """K distinct indices into the pooled B·N patches (all of them when K ≥ B·N)."""
    return torch.randperm(total, generator=generator)[:K].to(device)


def relation_losses(f_s: torch.Tensor, f_t: torch.Tensor, K: int = 192,
                    generator: Optional[torch.Generator] = None,
                    index: Optional[torch.Tensor] = None) -> tuple:
    """Unweighted (L_intra, L_inter, L_rand) for one layer pair of patch features (B, N, C_s/C_t).

    ``index`` fixes the L_rand sample (else ``sample_patches`` with ``generator``).
    """
    if f_s.dim() != 3 or f_t.dim() != 3 or f_s.shape[:2] != f_t.shape[:2]:
        raise VitoptError(f"student and teacher features must be (batch, patches, channels) with equal batch "
                          f"and patches, got {tuple(f_s.shape)} and {tuple(f_t.shape)}")
    f_s = F.normalize(f_s.float(), dim=-1)
    f_t = F.normalize(f_t.float(), dim=-1)
    # cross-patch relations within each image: (B, N, N)
    intra = (f_t @ f_t.transpose(1, 2) - f_s @ f_s.transpose(1, 2)).pow(2).mean()
    # cross-image relations at each patch position: (N, B, B)
    g_s, g_t = f_s.transpose(0, 1), f_t.transpose(0, 1)
    inter = (g_t @ g_t.transpose(1, 2) - g_s @ g_s.transpose(1, 2)).pow(2).mean()
    # relations among K patches sampled from the whole batch: (K, K)
    B, N, _ = f_s.shape
    if index is None:
        index = sample_patches(B * N, K, generator, f_s.device)
    r_s = f_s.reshape(B * N, -1)[index]
    r_t = f_t.reshape(B * N, -1)[index]
    rand = (r_t @ r_t.T - r_s @ r_s.T).pow(2).mean()
    return intra, inter, rand


def _logits(out) -> torch.Tensor:
    # timm distilled models may return (cls, dist) heads in training mode: DeiT averages them at test time
    if isinstance(out, (tuple, list)):
        return sum(out) / len(out)
    return out


class ManifoldDistillLoss(nn.Module):
    """The full objective on already-collected logits and matched patch features.

    Example: ``ManifoldDistillLoss()(z_s, z_t, [f_s0, f_s1], [f_t0, f_t1])`` -> ``LossTerms``.
    ``beta=0`` gives plain logit distillation; ``alpha=0, beta=0`` plain cross-entropy.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, tau: float = 1.0, w_intra: float = 4.0,
                 w_inter: float = 0.1, w_rand: float = 0.2, K: int = 192):
        super().__init__()
        self.alpha, self.beta, self.tau = float(alpha), float(beta), float(tau)
        self.w_intra, self.w_inter, self.w_rand, self.K = float(w_intra), float(w_inter), float(w_rand), int(K)

    @classmethod
    def from_config(cls, cfg) -> "ManifoldDistillLoss":
        return cls(cfg.alpha, cfg.beta, cfg.tau, cfg.w_intra, cfg.w_inter, cfg.w_rand, cfg.K)

    def forward(self, logits_s, logits_t=None, feats_s: Sequence[torch.Tensor] = (),
                feats_t: Sequence[torch.Tensor] = (), labels: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> LossTerms:
        z_s = _logits(logits_s).float()
        total = z_s.new_zeros(())
        terms = {}
        if self.alpha < 1:
            if labels is None or bool((labels < 0).any()):
                raise VitoptError("alpha < 1 needs a label for every image (a labelled image folder)")
            ce = F.cross_entropy(z_s, labels)
            total = total + (1 - self.alpha) * ce
            terms["ce"] = float((1 - self.alpha) * ce.detach())
        if self.alpha > 0:
            if logits_t is None:
                raise VitoptError("alpha > 0 needs the teacher's logits")
            T = self.tau
            z_t = _logits(logits_t).float()
            kd = F.kl_div(F.log_softmax(z_s / T, dim=1), F.log_softmax(z_t / T, dim=1),
                          reduction="batchmean", log_target=True) * (T * T)
            total = total + self.alpha * kd
            terms["kd"] = float(self.alpha * kd.detach())
        if self.beta > 0:
            if len(feats_s) != len(feats_t) or not feats_s:
                raise VitoptError(f"beta > 0 needs matched feature lists, got {len(feats_s)} student and "
                                  f"{len(feats_t)} teacher layers")
            sums = [0.0, 0.0, 0.0]
            for f_s, f_t in zip(feats_s, feats_t):
                intra, inter, rand = relation_losses(f_s, f_t, self.K, generator)
                sums[0] = sums[0] + self.w_intra * intra
                sums[1] = sums[1] + self.w_inter * inter
                sums[2] = sums[2] + self.w_rand * rand
            n = len(feats_s)
            parts = [self.beta * s / n for s in sums]
            total = total + parts[0] + parts[1] + parts[2]
            terms.update(intra=float(parts[0].detach()), inter=float(parts[1].detach()),
                         rand=float(parts[2].detach()))
        return LossTerms(total, **terms)

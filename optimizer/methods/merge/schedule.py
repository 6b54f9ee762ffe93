"""Closed-form MACs of a merging ViT, and the static schedule that meets a MACs budget.

Per block with n tokens in, r merged, attention width w (heads x head dim h), MLP hidden f, dim d,
in fvcore's convention (``optimizer.counting``):

    norm1 5nd + qkv 3ndw + q·kᵀ and attn·v 2n²w + proj nwd
    + (r > 0) similarity ⌈n/2⌉⌊n/2⌋h + assignment MatMul ⌊n/2⌋r(d+1)
    + norm2 5(n-r)d + MLP 2(n-r)df

then the final norm on the tokens left. ``count_macs`` of the built model equals this (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ...errors import VitoptError


@dataclass(frozen=True)
class BlockShape:
    dim: int
    heads: int
    head_dim: int
    hidden: int
    norm_macs_per_elem: int      # 5 with an affine LayerNorm, 4 without


def block_shapes(model) -> list:
    """(dim, heads, head dim, MLP hidden, norm cost) of each block of a timm-style ViT."""
    import torch.nn as nn
    out = []
    for b in model.blocks:
        a = b.attn
        norm = 5 if isinstance(b.norm1, nn.LayerNorm) and b.norm1.elementwise_affine else 4
        out.append(BlockShape(a.qkv.in_features, a.num_heads, a.head_dim, b.mlp.fc1.out_features, norm))
    return out


def merged_block_macs(s: BlockShape, n: int, r: int) -> float:
    """MACs of one block (per image) with ``n`` tokens in and ``r`` merged."""
    d, w, m = s.dim, s.heads * s.head_dim, n - r
    macs = s.norm_macs_per_elem * n * d + 3 * n * d * w + 2 * n * n * w + n * w * d
    if r > 0:
        macs += ((n + 1) // 2) * (n // 2) * s.head_dim + (n // 2) * r * (d + 1)
    return float(macs + s.norm_macs_per_elem * m * d + 2 * m * d * s.hidden)


def blocks_macs(shapes: Sequence[BlockShape], num_tokens: int, schedule: Sequence[int]) -> tuple:
    """(MACs of every block, tokens left after the last block) for ``schedule``."""
    n, total = num_tokens, 0.0
    for s, r in zip(shapes, schedule):
        total += merged_block_macs(s, n, r)
        n -= r
    return total, n


@dataclass(frozen=True)
class MacsModel:
    """What the budget needs of a model: block shapes, token count and the MACs outside the blocks."""
    shapes: tuple
    num_tokens: int
    other_macs: float            # stem and head
    final_norm_per_token: float
    dense_macs: float

    @classmethod
    def of(cls, model, shapes: Optional[Sequence[BlockShape]] = None) -> "MacsModel":
        """Measure ``model``'s non-block MACs once (its blocks must not merge yet)."""
        from ...counting import count_macs
        from .block import num_tokens_of
        counts = count_macs(model)
        pm = counts.per_module
        block = sum(v for k, v in pm.items() if k.startswith("blocks."))
        n = num_tokens_of(model)
        final = pm.get("norm", 0.0)
        return cls(tuple(shapes or block_shapes(model)), n, counts.macs - block - final, final / n, counts.macs)

    def macs(self, schedule: Sequence[int], shapes: Optional[Sequence[BlockShape]] = None) -> float:
        inner, left = blocks_macs(shapes or self.shapes, self.num_tokens, schedule)
        return self.other_macs + inner + self.final_norm_per_token * left


def spread_schedule(total: float, num_blocks: int) -> list:
    """``total`` merges per block on average as integers: the extra ones go to the earliest blocks
    (a token merged early saves its cost in every later block)."""
    base = int(total)
    extra = int(round((total - base) * num_blocks))
    return [base + (1 if i < extra else 0) for i in range(num_blocks)]


def closest_by_bisection(make, cost, lo: float, hi: float, target: float, decreasing: bool, iters: int = 40):
    """Bisect a knob in [lo, hi] whose ``cost(make(knob)[0])`` moves monotonically (down when
    ``decreasing``); returns (``make(knob)[1]`` of the closest cost, that cost)."""
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        probe, value = make(mid)
        c = cost(probe)
        if best is None or abs(c - target) < abs(best[1] - target):
            best = (value, c)
        if (c > target) == decreasing:
            lo = mid
        else:
            hi = mid
    return best


def schedule_for_macs(mm: MacsModel, target_macs: float, tolerance: float,
                      shapes: Optional[Sequence[BlockShape]] = None) -> list:
    """The static schedule (``spread_schedule`` of a mean r, bisected) whose MACs are closest to
    ``target_macs``; VitoptError when even the most merging schedule stays out of ``tolerance``."""
    from .block import check_schedule
    shapes = list(shapes or mm.shapes)
    L = len(shapes)

    def feasible(sched):
        try:
            check_schedule(sched, mm.num_tokens, L)
            return True
        except VitoptError:
            return False

    lo, hi = 0.0, float((mm.num_tokens - 1) // 2)
    while not feasible(spread_schedule(hi, L)):
        hi -= 1.0 / L
    sched, macs = closest_by_bisection(lambda mid: (spread_schedule(mid, L),) * 2, lambda s: mm.macs(s, shapes),
                                       lo, hi, target_macs, decreasing=True, iters=60)
    if abs(macs - target_macs) > tolerance * target_macs:
        fewest = mm.macs(spread_schedule(hi, L), shapes)
        raise VitoptError(f"token merging cannot reach {target_macs / mm.dense_macs:.3f} of the MACs within "
                          f"{tolerance:.0%}: the closest schedule gives {macs / mm.dense_macs:.3f} (merging the most "
                          f"tokens possible gives {fewest / mm.dense_macs:.3f})")
    return sched

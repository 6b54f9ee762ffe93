"""Blocks that merge tokens (ToMe) with a static per-block count, carrying token sizes through.

A ``TokenMergeBlock`` is a ``PrunedBlock`` (same parameter names, widths may be sliced) whose
step is::

    x = x + ls1(attn(norm1(x), size))      proportional attention: log(size) added to the logits
    x, size = merge(x, size, keys)         r tokens merged into their best match (size-weighted)
    x = x + ls2(mlp(norm2(x)))

``MergeBlocks`` replaces ``model.blocks`` (an ``nn.Sequential``, so ``model.blocks[i]`` and the
parameter names stay as they were) and carries the sizes from block to block: sizes start as None
(every token is one patch) and stay None until the first merge, so a block before any merge — or
a schedule of zeros — computes exactly what the dense block computes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import VitoptError
from ...models.blocks import PrunedAttention, PrunedBlock, make_prunable
from .matching import match_tokens, merge_weighted


class MergeAttention(PrunedAttention):
    """``PrunedAttention`` with proportional attention; returns (output, keys averaged over heads)."""

    def forward(self, x: torch.Tensor, size: Optional[torch.Tensor] = None) -> tuple:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)   # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj(out), k.mean(1)


class TokenMerge(nn.Module):
    """Merges ``r`` tokens (bipartite soft matching on ``metric``); counts its matmuls as MACs."""

    def __init__(self, r: int):
        super().__init__()
        self.r = int(r)

    def forward(self, x: torch.Tensor, size: Optional[torch.Tensor], metric: torch.Tensor) -> tuple:
        if size is None:
            size = torch.ones_like(x[..., :1])
        return merge_weighted(x, size, *match_tokens(metric, self.r))

    def vitopt_macs(self, inputs, output) -> int:
        """Similarity A·Bᵀ (Na·Nb·C) and the assignment MatMul (Nb·r·(dim + 1)), per batch."""
        x, _, metric = inputs
        B, n, d = x.shape
        return B * ((n + 1) // 2) * (n // 2) * metric.shape[-1] + B * (n // 2) * self.r * (d + 1)

    def extra_repr(self) -> str:
        return f"r={self.r}"


class TokenMergeBlock(PrunedBlock):
    """A ``PrunedBlock`` that merges ``r`` tokens between attention and MLP; forward(x, size) -> (x, size)."""

    def __init__(self, block: PrunedBlock, r: int):
        a = block.attn
        attn = MergeAttention(a.dim, a.num_heads, a.head_dim, a.scale, qkv_bias=a.qkv.bias is not None,
                              proj_bias=a.proj.bias is not None)
        attn.qkv, attn.proj = a.qkv, a.proj
        if block.token_index is not None:
            raise VitoptError("a block cannot both drop tokens (token_index) and merge them: "
                              "use slim's token_mode 'drop' or 'merge', not both")
        super().__init__(block.norm1, attn, block.ls1, block.norm2, block.mlp, block.ls2)
        self.merge = TokenMerge(r)

    @property
    def r(self) -> int:
        return self.merge.r

    def forward(self, x: torch.Tensor, size: Optional[torch.Tensor] = None) -> tuple:
        out, keys = self.attn(self.norm1(x), size)
        x = x + self.ls1(out)
        if self.r > 0:
            x, size = self.merge(x, size, keys)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, size


class MergeBlocks(nn.Sequential):
    """``model.blocks`` of a merging ViT: runs ``TokenMergeBlock``s passing token sizes along."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = None
        for blk in self:
            x, size = blk(x, size)
        return x

    @property
    def schedule(self) -> list:
        return [b.r for b in self]


def check_schedule(schedule: Sequence[int], num_tokens: int, num_blocks: int) -> list:
    """The schedule as a list of ints, or a VitoptError naming the first block it cannot run in."""
    schedule = list(schedule)
    if len(schedule) != num_blocks:
        raise VitoptError(f"merge schedule has {len(schedule)} entries, the model {num_blocks} blocks")
    n = num_tokens
    for i, r in enumerate(schedule):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise VitoptError(f"merge schedule: block {i} merges {r!r} tokens; give a non-negative integer")
        most = (n - 1) // 2
        if r > most:
            raise VitoptError(f"merge schedule: block {i} merges {r} tokens but only {most} can be merged "
                              f"there ({n} tokens left, the class token protected, at most half into the other half)")
        n -= r
    return schedule


def num_tokens_of(model: nn.Module) -> int:
    """Tokens entering the first block (patches + prefix tokens)."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or getattr(pe, "num_patches", None) is None:
        raise VitoptError(f"{type(model).__name__} has no patch_embed.num_patches: not a timm ViT")
    return int(pe.num_patches) + int(getattr(model, "num_prefix_tokens", 1))


def check_mergeable(model: nn.Module) -> None:
    """Token merging needs one class token at position 0 and class-token pooling."""
    if int(getattr(model, "num_prefix_tokens", 1)) != 1 or getattr(model, "cls_token", None) is None:
        raise VitoptError("token merging needs exactly one class token (no register tokens)")
    if getattr(model, "global_pool", "token") != "token":
        raise VitoptError(f"token merging needs class-token pooling; this model pools by '{model.global_pool}'")


def merge_tokens(model: nn.Module, schedule: Sequence[int]) -> nn.Module:
    """Make ``model`` (a timm ViT, sliced or not) merge ``schedule[i]`` tokens in block i (in place).

    Raises VitoptError for a schedule the token counts cannot run, or a model without a class token.
    Example: ``merge_tokens(model, [8] * 12)``
    """
    check_mergeable(model)
    model = make_prunable(model)
    schedule = check_schedule(schedule, num_tokens_of(model), len(model.blocks))
    blocks = [b if not isinstance(b, TokenMergeBlock) else _unmerged(b) for b in model.blocks]
    model.blocks = MergeBlocks(*[TokenMergeBlock(b, r) for b, r in zip(blocks, schedule)])
    return model


def _unmerged(block: TokenMergeBlock) -> PrunedBlock:
    a = block.attn
    attn = PrunedAttention(a.dim, a.num_heads, a.head_dim, a.scale, qkv_bias=a.qkv.bias is not None,
                           proj_bias=a.proj.bias is not None)
    attn.qkv, attn.proj = a.qkv, a.proj
    return PrunedBlock(block.norm1, attn, block.ls1, block.norm2, block.mlp, block.ls2)


def merge_schedule(model: nn.Module) -> Optional[list]:
    """The per-block merge counts of a merging model, or None."""
    blocks = getattr(model, "blocks", None)
    return blocks.schedule if isinstance(blocks, MergeBlocks) else None

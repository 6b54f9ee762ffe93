"""Which original tokens each token of a merging model stands for, block by block (for distillation).

A merged token is the size-weighted average of the tokens merged into it, so it is compared with the
average of the teacher's tokens at the patches it holds. ``SourceTap`` follows that, hooks only (the
model and its exported graph are untouched): each ``TokenMerge`` step's matching is recomputed from
its inputs (``match_tokens`` is deterministic) and applied to a (B, N, N₀) share matrix whose rows
are the share of each original token in a current token (rows sum to 1; the identity before any
merge), with the same ``merge_weighted`` the model uses. ``sources[i]`` is that matrix after block i
(None while no block has merged yet).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .block import TokenMerge
from .matching import match_tokens, merge_weighted


class SourceTap:
    """Forward hooks on a merging model recording ``sources[i]`` for ``layers`` (see the module docstring)."""

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        self.sources: dict = {}
        self._share = None
        blocks = model.blocks
        self._handles = [blocks.register_forward_pre_hook(self._reset)]
        for i, block in enumerate(blocks):
            for m in block.modules():
                if isinstance(m, TokenMerge):
                    self._handles.append(m.register_forward_hook(self._merged))
        for i in layers:
            self._handles.append(blocks[int(i)].register_forward_hook(self._record(int(i))))

    def _reset(self, module, args) -> None:
        self._share = None

    @torch.no_grad()
    def _merged(self, module: TokenMerge, inputs, output) -> None:
        x, size, metric = inputs
        B, n, _ = x.shape
        share = self._share
        if share is None:
            share = torch.eye(n, dtype=torch.float32, device=x.device).expand(B, n, n)
        size = torch.ones_like(share[..., :1]) if size is None else size.detach().float()
        self._share = merge_weighted(share, size, *match_tokens(metric.detach().float(), module.r))[0]

    def _record(self, i: int):
        def fn(module, inputs, output) -> None:
            self.sources[i] = self._share
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

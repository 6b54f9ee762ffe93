"""Block outputs collected with forward hooks, reduced to matching patch tokens.

Class/distillation tokens are removed from both models (each by its own ``num_prefix_tokens``).
A student block that outputs only some tokens (``PrunedBlock.token_positions``: original token
indices, prefix included) is compared with the teacher's output at those same patches. A student
that merges tokens (ToMe, ``optimizer.methods.merge``) is compared token by token with the average
of the teacher's tokens at the patches each merged token holds (``SourceTap``; the class token is
never merged).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..errors import VitoptError


class BlockTap:
    """Forward hooks on ``model.blocks[i]`` for ``layers``; ``outputs[i]`` is the last output.

    Use as a context manager so hooks are always removed. On a token-merging model ``sources[i]``
    also holds which original tokens each output token of block i stands for (``SourceTap``).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise VitoptError(f"{type(model).__name__} has no .blocks: feature distillation needs a timm ViT")
        self.model, self.layers = model, [int(i) for i in layers]
        self.outputs: dict = {}
        self._handles = []
        for i in self.layers:
            self._handles.append(blocks[i].register_forward_hook(self._hook(i)))
        from ..methods.merge.block import merge_schedule
        from ..methods.merge.sources import SourceTap
        self._sources = SourceTap(model, self.layers) if merge_schedule(model) is not None else None
        self.sources: dict = self._sources.sources if self._sources is not None else {}

    def _hook(self, i):
        def fn(module, inputs, output):
            self.outputs[i] = output[0] if isinstance(output, (tuple, list)) else output
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._sources is not None:
            self._sources.remove()

    def __enter__(self) -> "BlockTap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def num_prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


def token_positions(model: nn.Module, layer: int, tokens: int) -> list:
    """Original token indices that block ``layer`` outputs (all ``tokens`` when it prunes none)."""
    pos = getattr(model.blocks[layer], "token_positions", None)
    if pos is None:
        return list(range(tokens))
    if len(pos) != tokens:
        raise VitoptError(f"block {layer} declares {len(pos)} token positions but outputs {tokens} tokens")
    return [int(p) for p in pos]


def patch_index_pair(student: nn.Module, s_layer: int, s_tokens: int, teacher: nn.Module, t_layer: int,
                     t_tokens: int) -> tuple:
    """Index lists (student tokens, teacher tokens) selecting the same patches, prefix tokens dropped."""
    ps, pt = num_prefix_tokens(student), num_prefix_tokens(teacher)
    s_pos = token_positions(student, s_layer, s_tokens)
    t_pos = token_positions(teacher, t_layer, t_tokens)
    t_where = {p - pt: k for k, p in enumerate(t_pos) if p >= pt}   # patch id -> teacher token index
    s_idx, t_idx = [], []
    for k, p in enumerate(s_pos):
        if p < ps:
            continue
        patch = p - ps
        if patch not in t_where:
            raise VitoptError(f"student block {s_layer} keeps patch {patch}, which teacher block {t_layer} "
                              "does not output")
        s_idx.append(k)
        t_idx.append(t_where[patch])
    if not s_idx:
        raise VitoptError(f"student block {s_layer} outputs no patch tokens to distill")
    return s_idx, t_idx


def merged_pair(a: torch.Tensor, share: torch.Tensor, b: torch.Tensor, prefix: int) -> tuple:
    """(student tokens, teacher tokens averaged by ``share``) without the prefix tokens, for a student
    block whose tokens were merged (``share``: (B, Ns, N₀) from ``SourceTap``; the teacher outputs N₀)."""
    if b.shape[1] != share.shape[-1]:
        raise VitoptError(f"a token-merging student needs a teacher that keeps every token: the teacher block "
                          f"outputs {b.shape[1]} tokens, the student merged from {share.shape[-1]}")
    return a[:, prefix:], (share.to(b.dtype) @ b)[:, prefix:]


def matched_features(student: nn.Module, s_out: dict, teacher: nn.Module, t_out: dict,
                     pairs: Sequence[tuple], cache: Optional[dict] = None, sources: Optional[dict] = None) -> tuple:
    """(student features, teacher features) lists of (B, P, C) patch tokens for each layer pair
    (``sources``: ``BlockTap.sources`` of a token-merging student)."""
    fs, ft = [], []
    cache = {} if cache is None else cache
    for s, t in pairs:
        a, b = s_out[s], t_out[t]
        share = (sources or {}).get(s)
        if share is not None:
            x, y = merged_pair(a, share, b, num_prefix_tokens(student))
            fs.append(x)
            ft.append(y)
            continue
        key = (s, t, a.shape[1], b.shape[1])
        if key not in cache:
            si, ti = patch_index_pair(student, s, a.shape[1], teacher, t, b.shape[1])
            contiguous = si == list(range(si[0], si[0] + len(si))) and ti == list(range(ti[0], ti[0] + len(ti)))
            cache[key] = (si, ti, contiguous)
        si, ti, contiguous = cache[key]
        if contiguous:  # the usual case (no pruned tokens): plain slices, no gather
            fs.append(a[:, si[0]:si[0] + len(si)])
            ft.append(b[:, ti[0]:ti[0] + len(ti)])
        else:
            fs.append(a.index_select(1, torch.as_tensor(si, device=a.device)))
            ft.append(b.index_select(1, torch.as_tensor(ti, device=b.device)))
    return fs, ft

"""ToMe's bipartite soft matching and size-weighted merge, in a form every ONNX builder takes.

Bolya et al. (ICLR 2023): tokens are split alternately into A (even positions) and B (odd
positions); each A token's best match is the B token with the highest cosine similarity of the
attention keys (mean over heads); the ``r`` A tokens with the best matches are merged into them by
a size-weighted average. The class token (position 0, in A) is protected: its score is below any
cosine, so it is never merged, and it stays at output position 0. Output order: the unmerged A
tokens in their order, then the B tokens.

Export form (established on this tree, see the package docstring): no sort, no TopK, no scatter,
no CumSum.

* The rank of each A token's best score among the A tokens is counted, not sorted:
  ``rank_i = #{j: s_j > s_i} + #{j < i: s_j == s_i}`` (Greater/Equal/And/ReduceSum). Ties are
  therefore broken by position in every backend alike (a TopK's tie order is backend-defined).
* The k-th merged A token is the one of rank k, the j-th unmerged one the one whose running count
  of unmerged tokens (a constant upper-triangular MatMul) is j: each picked by an ArgMax over an
  equality, then gathered (GatherElements).
* The merge into B is a one-hot assignment matrix ``M[b, j, k] = (dst[b, k] == j)`` (Equal + Cast)
  times the r gathered tokens ``[x·size, size]`` (a MatMul of Nb·r·(C+1) MACs), added to B, then a
  Div: TensorRT for RTX's parser rejects the ScatterElements ``reduction="add"`` that ToMe's
  ``scatter_reduce`` exports to ("Unsupported reduction type").
"""
from __future__ import annotations

import contextlib

import torch

# lists receiving per-sample decision margins while ``recording_margins`` is active (parity checks only)
_RECORDERS: list = []


@contextlib.contextmanager
def recording_margins():
    """Record how close every ``match_tokens`` call inside the block came to another decision: yields a
    list that receives one (B,) tensor per call, each sample's smallest margin — the gap between the
    r-th and (r+1)-th best A scores (which tokens merge) and, for each merged A token, between its best
    and second-best B score (where it merges). Two runtimes whose fp32 scores differ in the last bits may take
    another decision below such a margin (``optimizer.tolerances.NEAR_TIE``).
    Example: ``with recording_margins() as m: model(x)``; ``torch.stack(m).amin(0)``"""
    rec: list = []
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)


def _margins(scores: torch.Tensor, best: torch.Tensor, src: torch.Tensor, r: int) -> torch.Tensor:
    """(B,) smallest decision margin of one matching (see ``recording_margins``); inf when r == 0."""
    inf = torch.full((scores.shape[0],), float("inf"), dtype=torch.float64, device=scores.device)
    if r == 0:
        return inf
    s = best.double().sort(dim=-1, descending=True).values
    gap = s[:, r - 1] - s[:, r] if r < s.shape[1] else inf
    if scores.shape[-1] > 1:
        top2 = scores.double().topk(2, dim=-1).values                     # (B, Na, 2)
        where = (top2[..., 0] - top2[..., 1]).gather(1, src).amin(-1)    # merged tokens only
    else:
        where = inf
    return torch.minimum(gap, where)


def match_tokens(metric: torch.Tensor, r: int, protect_first: bool = True) -> tuple:
    """Bipartite soft matching: ``(unmerged, src, dst)`` int64 indices.

    Args:
        metric: (B, N, C) matching features of the N tokens in their original order (the keys).
        r: A tokens merged (0 <= r <= (N - protect_first) // 2).
        protect_first: never merge token 0 (the class token).
    Returns unmerged (B, Na - r) indices into A (ascending), src (B, r) indices into A of the merged
    tokens (best match first), dst (B, r) indices into B they merge into.
    Example: ``match_tokens(k.mean(1), 8)``
    """
    n = metric.shape[1]
    na = (n + 1) // 2
    dev, dt = metric.device, metric.dtype
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, 0::2] @ m[:, 1::2].transpose(-1, -2)                  # (B, Na, Nb)
    best, best_b = scores.max(dim=-1)                                    # (B, Na)
    if protect_first:
        first = torch.zeros(na, dtype=torch.bool, device=dev)
        first[0] = True
        best = best.masked_fill(first, -2.0)   # below any cosine; finite, so fp16 graphs keep it
    earlier = torch.ones(na, na, dtype=torch.bool, device=dev).tril(-1)  # [i, j]: j < i
    above = best[:, None, :] > best[:, :, None]                          # [b, i, j]: s_j > s_i
    tied = (best[:, None, :] == best[:, :, None]) & earlier
    rank = (above | tied).to(dt).sum(-1)                                # (B, Na), exact small integers
    kept = (rank >= r).to(dt)
    slot = kept @ torch.ones(na, na, dtype=dt, device=dev).triu() - 1.0  # running count of kept A tokens
    slot = torch.where(kept > 0, slot, torch.full_like(slot, -1.0))
    ks = torch.arange(max(na - r, r), dtype=dt, device=dev)
    unmerged = (slot[:, None, :] == ks[: na - r, None]).to(dt).argmax(-1)   # (B, Na - r)
    src = (rank[:, None, :] == ks[:r, None]).to(dt).argmax(-1)              # (B, r)
    dst = best_b.gather(1, src)
    if _RECORDERS:
        m = _margins(scores.detach(), best.detach(), src, r)
        for rec in _RECORDERS:
            rec.append(m)
    return unmerged, src, dst


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def merge_weighted(x: torch.Tensor, size: torch.Tensor, unmerged: torch.Tensor, src: torch.Tensor,
                   dst: torch.Tensor) -> tuple:
    """Size-weighted average of each B token and the A tokens merged into it: ``(x', size')``.

    x: (B, N, C) and size: (B, N, 1) in the original token order; indices from ``match_tokens``.
    """
    c = x.shape[-1]
    xs = torch.cat([x * size, size], dim=-1)
    a, b = xs[:, 0::2], xs[:, 1::2]
    nb = b.shape[1]
    assign = (dst[:, None, :] == torch.arange(nb, device=x.device)[None, :, None]).to(x.dtype)   # (B, Nb, r)
    both = torch.cat([_rows(a, unmerged), b + assign @ _rows(a, src)], dim=1)
    new_size = both[..., c:]
    return both[..., :c] / new_size, new_size

"""ToMe's bipartite soft matching and size-weighted merge, in a form every ONNX builder takes.

Bolya et al. (ICLR 2023): tokens are split alternately into A (even positions) and B (odd
positions); each A token's best match is the B token with the highest cosine similarity of the
attention keys (mean over heads); the ``r`` A tokens with the best matches are merged into them by
a size-weighted average. The class token (position 0, in A) is protected: its score is below any cosine, so it
is never merged, and it stays at output position 0.

Export form (established on this tree, see the package docstring): no sort, no TopK, no scatter.

* The rank of each A token's best score among the A tokens is counted, not sorted:
  ``rank_i = #{j: s_j > s_i} + #{j < i: s_j == s_i}`` (Greater/Equal/And/ReduceSum). Ties are
  therefore broken by position in every backend alike (a TopK's tie order is backend-defined).
* Each input token gets its destination: unmerged A tokens keep their order (a running count
  through a constant upper-triangular MatMul, no CumSum), B tokens follow them, a merged A token goes
  to its best B token.
* The merge is a one-hot assignment matrix ``M[b, j, i] = (dest[b, i] == j)`` (Equal + Cast) and one
  MatMul over ``[x·size, size]``, then a Div: TensorRT for RTX's parser rejects ScatterElements
  with ``reduction="add"`` ("Unsupported reduction type").
"""
from __future__ import annotations

import torch


def split_ab(x: torch.Tensor) -> torch.Tensor:
    """Tokens reordered as [A (even positions); B (odd positions)] along dim 1."""
    return torch.cat([x[:, 0::2], x[:, 1::2]], dim=1)


def match_destinations(metric: torch.Tensor, r: int, protect_first: bool = True) -> torch.Tensor:
    """Destination (output position) of every input token, in [A; B] order.

    Args:
        metric: (B, N, C) matching features of the N tokens in their original order (the keys).
        r: A tokens merged (0 <= r <= (N - protect_first) // 2).
        protect_first: never merge token 0 (the class token).
    Returns (B, N) int64: for the token at [A; B] position i, its output position among N - r.
    Example: ``match_destinations(k.mean(1), 8)``
    """
    n = metric.shape[1]
    na, nb = (n + 1) // 2, n // 2
    m = metric / metric.norm(dim=-1, keepdim=True)
    a, b = m[:, 0::2], m[:, 1::2]
    scores = a @ b.transpose(-1, -2)                                     # (B, Na, Nb)
    best, best_b = scores.max(dim=-1)                                    # (B, Na)
    if protect_first:
        first = torch.zeros(na, dtype=torch.bool, device=metric.device)
        first[0] = True
        best = best.masked_fill(first, -2.0)   # below any cosine; finite, so fp16 graphs keep it
    # rank of every A token's score (0 = best match), ties broken by position
    earlier = torch.ones(na, na, dtype=torch.bool, device=metric.device).tril(-1)   # [i, j]: j < i
    above = best[:, None, :] > best[:, :, None]                          # [b, i, j]: s_j > s_i
    tied = (best[:, None, :] == best[:, :, None]) & earlier
    rank = (above | tied).to(metric.dtype).sum(-1)                       # (B, Na), exact small integers
    kept = (rank >= r).to(metric.dtype)
    upper = torch.ones(na, na, dtype=metric.dtype, device=metric.device).triu()      # [j, i]: j <= i
    slot = (kept @ upper) - 1.0                                          # running count of kept A tokens
    dest_a = torch.where(kept > 0, slot, (na - r) + best_b.to(metric.dtype))
    dest_b = (na - r) + torch.arange(nb, device=metric.device, dtype=metric.dtype).expand(metric.shape[0], nb)
    return torch.cat([dest_a, dest_b], dim=1).to(torch.long)


def assignment_matrix(dest: torch.Tensor, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, n_out, N) one-hot: [b, j, i] = 1 where input token i goes to output j."""
    out = torch.arange(n_out, device=dest.device)
    return (dest[:, None, :] == out[None, :, None]).to(dtype)


def merge_weighted(x: torch.Tensor, size: torch.Tensor, dest: torch.Tensor, n_out: int) -> tuple:
    """Size-weighted average of the tokens sharing a destination: ``(x', size')``.

    x: (B, N, C) and size: (B, N, 1) in the original token order; dest from ``match_destinations``.
    """
    c = x.shape[-1]
    assign = assignment_matrix(dest, n_out, x.dtype)
    both = assign @ split_ab(torch.cat([x * size, size], dim=-1))        # (B, n_out, C + 1)
    new_size = both[..., c:]
    return both[..., :c] / new_size, new_size

"""Mixed ranks: split a global parameter (or MACs) budget across layers, greedily.

Costs are parameters, MACs, or measured milliseconds (``latency.LatencyTable``): with a table a
layer's cost at rank r is its measured time and its largest rank is also capped at the measured
break-even, so no factorised layer is slower than the dense one.

Every candidate layer starts at the smallest rank (``multiple``). Repeatedly, the step with the
largest error reduction per unit of cost that still fits the budget is taken: either raise a
layer's rank by ``multiple``, or, once the next rank would no longer save (r·(in+out) ≥ in·out),
keep the layer dense. Errors are each layer's relative (activation-weighted) output error, so the
greedy sum is over comparable, unit-free numbers. Singular values decrease, so each layer's
gains shrink with rank and greedy choices are near-optimal for the sum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ...errors import VitoptError

DENSE = -1   # rank value meaning "not factorised"


def saving_rank(in_features: int, out_features: int, multiple: int) -> int:
    """Largest multiple of ``multiple`` with r·(in + out) < in·out (a factor pair that saves); 0 when none."""
    limit = in_features * out_features / (in_features + out_features)
    r = (int(limit) // multiple) * multiple
    while r > 0 and r >= limit:
        r -= multiple
    return max(r, 0)


@dataclass
class LayerCost:
    """One candidate layer: shapes, per-rank cost, dense cost, and ``errors[r]`` for r = 0..min(in, out).

    ``rank_costs`` ({rank: cost}, e.g. measured ms) replaces ``rank * per_rank`` when given;
    ``cap`` further limits the largest rank (e.g. the measured latency break-even).
    """
    path: str
    in_features: int
    out_features: int
    per_rank: float          # cost of one unit of rank: (in + out) params, or tokens·(in + out) MACs
    dense: float             # cost of the dense weight: in·out params, or tokens·in·out MACs
    errors: torch.Tensor
    rank_costs: Optional[dict] = None
    cap: Optional[int] = None

    def max_rank(self, multiple: int) -> int:
        """Largest multiple of ``multiple`` whose factorisation strictly saves (parameters, and
        time when ``cap`` is set); 0 when none does."""
        r = saving_rank(self.in_features, self.out_features, multiple)
        if self.cap is not None:
            r = min(r, (int(self.cap) // multiple) * multiple)
        return max(r, 0)

    def cost(self, rank: int) -> float:
        if rank == DENSE:
            return self.dense
        if self.rank_costs is not None:
            if rank not in self.rank_costs:
                raise VitoptError(f"{self.path}: no cost for rank {rank} (measured: {sorted(self.rank_costs)})")
            return float(self.rank_costs[rank])
        return rank * self.per_rank

    def error(self, rank: int) -> float:
        return 0.0 if rank == DENSE else float(self.errors[min(rank, len(self.errors) - 1)])


def allocate_ranks(layers: Sequence[LayerCost], budget: float, multiple: int = 8) -> dict:
    """Ranks (``DENSE`` = keep) per path whose total cost ≤ ``budget``; greedy by error drop per cost.

    Raises VitoptError when even the smallest ranks do not fit the budget.
    """
    if multiple < 1:
        raise VitoptError(f"rank multiple must be positive, got {multiple}")
    ranks = {}
    for L in layers:
        ranks[L.path] = multiple if L.max_rank(multiple) >= multiple else DENSE
    used = sum(L.cost(ranks[L.path]) for L in layers)
    if used > budget:
        raise VitoptError(f"the budget is too small: even rank {multiple} everywhere costs {used:.0f} "
                          f"> {budget:.0f} available to the factorisable layers (ask for a larger ratio)")
    active = {L.path: L for L in layers if ranks[L.path] != DENSE}
    while active:
        best, best_score = None, -1.0
        for path, L in list(active.items()):
            r = ranks[path]
            nxt = r + multiple if r + multiple <= L.max_rank(multiple) else DENSE
            step_cost = L.cost(nxt) - L.cost(r)
            if used + step_cost > budget:
                del active[path]   # its next step will never fit: the budget only shrinks
                continue
            # a free step (measured times flat in the rank) that lowers the error is taken first
            score = (L.error(r) - L.error(nxt)) / max(step_cost, 1e-12)
            if score > best_score:
                best, best_score = (path, nxt, step_cost), score
        if best is None:
            break
        path, nxt, step_cost = best
        ranks[path] = nxt
        used += step_cost
        if nxt == DENSE:
            del active[path]
    return ranks

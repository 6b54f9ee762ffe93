"""From mask values / importance scores to a per-block structure that meets a MACs or params budget.

Units: attention (block, head, dim), MLP (block, unit), token (block, position) (prefix tokens such
as the class token are always kept). A keep fraction r in [0, 1] selects units:
  per_type  each mask type keeps its top r fraction by value (the paper's rule: one threshold per type);
  global    all units ranked together by value per MAC (per parameter for a params budget).
Then, per block (documented rule):
  tokens     kept in block l only if selected in every block <= l (monotone over depth: a token
             dropped once stays dropped; the class token is always kept);
  attention  width W = kept units rounded to ``multiple`` (min ``multiple``); among the head counts
             h that divide W with W/h <= head_dim, keep the h heads and per head the top W/h dims that
             preserve the largest total value (heads with ~0 mass drop out by this rule);
  MLP        kept units rounded to ``multiple`` (min ``multiple``), the top ones by value.
Bisection on r with the exact analytic MACs/params of the rounded structure (``plan_counts``,
equal to ``optimizer.counting.count_macs`` on the sliced model: tested) meets the target
within the tolerance after rounding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from ...counting import count_macs
from ...errors import VitoptError
from ...models.blocks import make_prunable


@dataclass
class BlockGeometry:
    dim: int
    num_heads: int
    head_dim: int
    hidden: int
    scale: float
    qkv_bias: bool
    proj_bias: bool
    fc1_bias: bool
    fc2_bias: bool
    fixed_params: int          # norms, layer scales: unchanged by slicing
    norm_macs_per_token: float  # norm1 + norm2


@dataclass
class Geometry:
    blocks: list
    num_tokens: int
    num_prefix: int
    other_macs: float           # stem, final norm excluded, head
    final_norm_macs_per_token: float
    other_params: int
    dense_macs: float
    dense_params: int

    @classmethod
    def of(cls, model) -> "Geometry":
        """Measure the dense model once (its blocks must keep every token)."""
        model = make_prunable(model)
        counts = count_macs(model)
        pm = counts.per_module
        blocks, block_macs, block_params = [], 0.0, 0
        n_tok = int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 1))
        for i, b in enumerate(model.blocks):
            a, mlp = b.attn, b.mlp
            linear = sum(p.numel() for m in (a.qkv, a.proj, mlp.fc1, mlp.fc2) for p in m.parameters())
            total = sum(p.numel() for p in b.parameters())
            norm = (pm.get(f"blocks.{i}.norm1", 0) + pm.get(f"blocks.{i}.norm2", 0)) / n_tok
            blocks.append(BlockGeometry(a.qkv.in_features, a.num_heads, a.head_dim, mlp.fc1.out_features,
                                        float(a.scale), a.qkv.bias is not None, a.proj.bias is not None,
                                        mlp.fc1.bias is not None, mlp.fc2.bias is not None, total - linear, norm))
            block_macs += sum(v for k, v in pm.items() if k.startswith(f"blocks.{i}."))
            block_params += total
        final = pm.get("norm", 0)
        return cls(blocks, n_tok, int(getattr(model, "num_prefix_tokens", 1)),
                   counts.macs - block_macs - final, final / n_tok, counts.params - block_params,
                   counts.macs, counts.params)


@dataclass
class BlockPlan:
    heads: list             # kept head indices
    dims: list              # per kept head: kept dim indices (all the same length)
    units: list             # kept MLP units
    tokens: list            # original positions this block processes (sorted, prefix included)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def head_dim(self) -> int:
        return len(self.dims[0])

    def to_dict(self) -> dict:
        return asdict(self)


def block_macs(g: BlockGeometry, n: int, width: int, hidden: int) -> float:
    d = g.dim
    return (g.norm_macs_per_token * n + n * d * 3 * width + 2 * n * n * width + n * width * d
            + 2 * n * d * hidden)


def block_params(g: BlockGeometry, width: int, hidden: int) -> int:
    d = g.dim
    return (g.fixed_params + d * 3 * width + 3 * width * g.qkv_bias + width * d + d * g.proj_bias
            + d * hidden + hidden * g.fc1_bias + hidden * d + d * g.fc2_bias)


def plan_counts(geo: Geometry, plan: list) -> dict:
    """Exact MACs (per image) and params of the sliced model described by ``plan``."""
    macs = geo.other_macs + geo.final_norm_macs_per_token * len(plan[-1].tokens)
    params = geo.other_params
    for g, p in zip(geo.blocks, plan):
        w = p.num_heads * p.head_dim
        macs += block_macs(g, len(p.tokens), w, len(p.units))
        params += block_params(g, w, len(p.units))
    return {"macs": macs, "params": params, "macs_ratio": macs / geo.dense_macs,
            "params_ratio": params / geo.dense_params}


def _round(count: int, multiple: int, full: int) -> int:
    if count >= full:
        return full
    return int(min(max(multiple, multiple * round(count / multiple)), full))


def choose_heads(values: torch.Tensor, kept: int, multiple: int) -> tuple:
    """(heads, dims) for a block: width = ``kept`` rounded; the head count preserving most value."""
    H, hd = values.shape
    full = H * hd
    if kept >= full:
        return list(range(H)), [list(range(hd))] * H
    target = _round(kept, multiple, full)
    top_sorted = values.sort(dim=1, descending=True).values          # per head, dims by value
    cums = top_sorted.cumsum(1)
    widths = [target] + [w for k in range(1, full // max(multiple, 1) + 1) for w in (target - k * multiple,
                                                                                    target + k * multiple)]
    for w in widths:
        if w < 1 or w > full:
            continue
        best = None
        for h in range(1, H + 1):
            if w % h or w // h > hd:
                continue
            d = w // h
            mass_per_head = cums[:, d - 1]
            heads = mass_per_head.topk(h).indices
            mass = float(mass_per_head[heads].sum())
            if best is None or mass > best[0]:
                best = (mass, sorted(heads.tolist()), d)
        if best is not None:
            _, heads, d = best
            dims = [sorted(values[h].topk(d).indices.tolist()) for h in heads]
            return heads, dims
    raise VitoptError(f"no head layout of width rounded to {multiple} fits {H} heads of {hd} dims")


def _top_units(values: torch.Tensor, k: int) -> list:
    return sorted(values.topk(k).indices.tolist())


@dataclass
class Ranking:
    """Per-unit values (what is kept first) and costs (MACs or params saved by removing a unit)."""
    attn: list               # per block (H, hd)
    mlp: list                # per block (F,)
    token: Optional[torch.Tensor]   # (L, N) or None; prefix columns ignored


def unit_costs(geo: Geometry, kind: str) -> tuple:
    """Cost per attention unit, MLP unit, token unit (per block), at dense shapes."""
    n = geo.num_tokens
    attn, mlp, tok = [], [], []
    for g in geo.blocks:
        w, f = g.num_heads * g.head_dim, g.hidden
        if kind == "macs":
            attn.append(n * 4 * g.dim + 2 * n * n)
            mlp.append(2 * n * g.dim)
            tok.append(block_macs(g, n, w, f) - block_macs(g, n - 1, w, f))
        else:
            attn.append(4 * g.dim + 3 * g.qkv_bias)
            mlp.append(2 * g.dim + g.fc1_bias)
            tok.append(0.0)
    # a token dropped at block l is dropped from every later block
    suffix = [sum(tok[i:]) + geo.final_norm_macs_per_token * (kind == "macs") for i in range(len(tok))]
    return attn, mlp, suffix


def select(rank: Ranking, geo: Geometry, r: float, mode: str, kind: str, enabled: dict) -> tuple:
    """Boolean keep masks per type for keep fraction ``r``."""
    L = len(geo.blocks)
    P = geo.num_prefix
    groups = []   # (type, values flat, costs flat)
    attn_cost, mlp_cost, tok_cost = unit_costs(geo, kind)
    if enabled["attn"]:
        groups.append(("attn", torch.cat([a.flatten() for a in rank.attn]),
                       torch.cat([torch.full((a.numel(),), float(c)) for a, c in zip(rank.attn, attn_cost)])))
    if enabled["mlp"]:
        groups.append(("mlp", torch.cat([m.flatten() for m in rank.mlp]),
                       torch.cat([torch.full((m.numel(),), float(c)) for m, c in zip(rank.mlp, mlp_cost)])))
    if enabled["token"] and rank.token is not None:
        t = rank.token[:, P:]
        groups.append(("token", t.flatten(), torch.tensor(tok_cost, dtype=torch.float).repeat_interleave(t.shape[1])))
    keep = {}
    if mode == "per_type":
        for name, v, _ in groups:
            k = int(math.ceil(r * v.numel()))
            m = torch.zeros(v.numel(), dtype=torch.bool)
            if k:
                m[v.topk(k).indices] = True
            keep[name] = m
    else:
        v = torch.cat([g[1] / g[2].clamp_min(1e-12) for g in groups])
        k = int(math.ceil(r * v.numel()))
        m = torch.zeros(v.numel(), dtype=torch.bool)
        if k:
            m[v.topk(k).indices] = True
        off = 0
        for name, vals, _ in groups:
            keep[name] = m[off: off + vals.numel()]
            off += vals.numel()
    out = {"attn": None, "mlp": None, "token": None}
    if "attn" in keep:
        sizes = [a.numel() for a in rank.attn]
        out["attn"] = [x.reshape(a.shape) for x, a in zip(keep["attn"].split(sizes), rank.attn)]
    if "mlp" in keep:
        sizes = [m.numel() for m in rank.mlp]
        out["mlp"] = list(keep["mlp"].split(sizes))
    if "token" in keep:
        t = keep["token"].reshape(L, -1)
        t = torch.cummin(t.int(), dim=0).values.bool()           # dropped once, dropped after
        out["token"] = torch.cat([torch.ones(L, P, dtype=torch.bool), t], 1)
    return out


def plan_from_keep(rank: Ranking, geo: Geometry, keep: dict, multiple: int) -> list:
    plan = []
    for i, g in enumerate(geo.blocks):
        if keep["attn"] is None:
            heads, dims = list(range(g.num_heads)), [list(range(g.head_dim))] * g.num_heads
        else:
            heads, dims = choose_heads(rank.attn[i], int(keep["attn"][i].sum()), multiple)
        if keep["mlp"] is None:
            units = list(range(g.hidden))
        else:
            units = _top_units(rank.mlp[i], _round(int(keep["mlp"][i].sum()), multiple, g.hidden))
        tokens = list(range(geo.num_tokens)) if keep["token"] is None else \
            torch.nonzero(keep["token"][i]).flatten().tolist()
        plan.append(BlockPlan(heads, [list(d) for d in dims], units, tokens))
    return plan


def solve_budget(rank: Ranking, geo: Geometry, kind: str, target: float, mode: str, multiple: int,
                 enabled: dict, tolerance: float = 0.02, iters: int = 40) -> tuple:
    """Bisection on the keep fraction; returns (plan, counts) with the achieved ratio within tolerance."""
    key = f"{kind}_ratio"

    def evaluate(r):
        plan = plan_from_keep(rank, geo, select(rank, geo, r, mode, kind, enabled), multiple)
        return plan, plan_counts(geo, plan)

    best = None
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        plan, counts = evaluate(mid)
        err = counts[key] - target
        if best is None or abs(err) < abs(best[1][key] - target):
            best = (plan, counts)
        if abs(err) <= tolerance * target * 0.25:
            break
        if err > 0:
            hi = mid
        else:
            lo = mid
    plan, counts = best
    if target >= 1.0 - 1e-9:
        plan, counts = evaluate(1.0)
    elif enabled["mlp"] and abs(counts[key] - target) > tolerance * target * 0.25:
        plan, counts = _refine_mlp(rank, geo, plan, key, target, multiple, tolerance)
    if abs(counts[key] - target) > tolerance * target:
        lowest = evaluate(0.0)[1][key]
        raise VitoptError(f"cannot meet {kind} ratio {target:g} within {tolerance:.0%}: closest is "
                          f"{counts[key]:.4f} (the smallest structure this config allows is {lowest:.4f}; "
                          "enable more mask types or lower 'multiple')")
    return plan, counts


def _refine_mlp(rank: Ranking, geo: Geometry, plan: list, key: str, target: float, multiple: int,
                tolerance: float, max_moves: int = 1000) -> tuple:
    """Close the gap left by coarse steps (a token, a head layout) with ``multiple``-unit width moves.

    Each move removes the least valuable granule of ``multiple`` kept MLP units (ratio above
    target) or adds the most valuable missing one (below target), anywhere in the model; when no
    MLP move is possible, the attention width of a block moves by ``multiple`` instead.
    """
    counts = plan_counts(geo, plan)
    best = (plan, counts)
    for _ in range(max_moves):
        err = counts[key] - target
        if abs(err) <= tolerance * target * 0.25:
            break
        move = _mlp_move(rank, plan, err, multiple) or _attn_move(rank, geo, plan, err, multiple)
        if move is None:
            break
        plan = list(plan)
        plan[move[0]] = move[1]
        counts = plan_counts(geo, plan)
        if abs(counts[key] - target) < abs(best[1][key] - target):
            best = (plan, counts)
        elif (counts[key] - target) * err < 0:
            break     # overshot: the previous plan was the closest
    return best


def _mlp_move(rank: Ranking, plan: list, err: float, multiple: int):
    choice = None
    for i, p in enumerate(plan):
        vals = rank.mlp[i]
        kept = torch.zeros(vals.numel(), dtype=torch.bool)
        kept[p.units] = True
        if err > 0 and len(p.units) > multiple:
            score = float(vals[kept].sort().values[:multiple].sum())
        elif err < 0 and len(p.units) + multiple <= vals.numel():
            score = -float(vals[~kept].sort(descending=True).values[:multiple].sum())
        else:
            continue
        if choice is None or score < choice[0]:
            choice = (score, i)
    if choice is None:
        return None
    i = choice[1]
    p = plan[i]
    n = len(p.units) + (-multiple if err > 0 else multiple)
    return i, BlockPlan(p.heads, p.dims, _top_units(rank.mlp[i], n), p.tokens)


def _attn_move(rank: Ranking, geo: Geometry, plan: list, err: float, multiple: int):
    choice = None
    for i, p in enumerate(plan):
        g = geo.blocks[i]
        w = p.num_heads * p.head_dim
        full = g.num_heads * g.head_dim
        nw = w - multiple if err > 0 else min(w + multiple, full)
        if nw < multiple or nw == w:
            continue
        try:
            heads, dims = choose_heads(rank.attn[i], nw, multiple)
        except VitoptError:
            continue
        mass = float(sum(rank.attn[i][h, d].sum() for h, d in zip(heads, dims)))
        now = float(sum(rank.attn[i][h, d].sum() for h, d in zip(p.heads, p.dims)))
        score = now - mass if err > 0 else now - mass   # least value lost / most value gained
        if choice is None or score < choice[0]:
            choice = (score, i, heads, dims)
    if choice is None:
        return None
    _, i, heads, dims = choice
    p = plan[i]
    return i, BlockPlan(heads, [list(d) for d in dims], p.units, p.tokens)

"""Model surgery for gates: dense blocks -> gated modules, static pruning from gate statistics,
and the JSON structure that rebuilds the exact gated architecture.

Structure (one entry per block, JSON)::

    {"blocks": [{"attn": {"static_heads": 1, "dynamic_heads": 2, "head_dim": 64, "scale": 0.125,
                          "qkv_bias": true, "proj_bias": true, "gate_hidden": 32, "threshold": 0.0,
                          "mean_active": 1.4, "kept_heads": [0, 2, 1]},
                 "mlp":  {"static_channels": 64, "dynamic_groups": 10, "group_size": 32, "bias": true,
                          "gate_hidden": 32, "threshold": 0.0, "mean_active": 6.2, "kept_channels": [...]}},
                ...]}

``kept_heads`` / ``kept_channels`` list, in the new order, the indices in the block that entered
the gates step (informational; rebuild does not need them). ``qkv``/``proj``/``fc1``/``fc2`` are
null for nn.Linear or ``{"ranks": [r1, r2]}`` when the step followed ``lowrank``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...errors import VitoptError
from ...models.blocks import PrunedAttention, PrunedBlock, make_prunable
from .modules import GatedAttention, GatedMergeAttention, GatedMlp, is_lowrank, gated_modules


def _attention_class(attn: nn.Module) -> type:
    """The gated attention that keeps ``attn``'s contract: a token-merging block's attention
    (``MergeAttention``: sizes in, merge keys out) becomes ``GatedMergeAttention``."""
    from ..merge.block import MergeAttention
    return GatedMergeAttention if isinstance(attn, (MergeAttention, GatedMergeAttention)) else GatedAttention


def _linear(m: nn.Module, what: str) -> nn.Module:
    if not isinstance(m, nn.Linear) and not is_lowrank(m):
        raise VitoptError(f"gates need an nn.Linear or a low-rank LowRankLinear for {what}, "
                          f"found {type(m).__name__}")
    return m


def _device(m: nn.Module) -> torch.device:
    return next(m.parameters()).device


def _linear_spec(m: nn.Module) -> Optional[dict]:
    """None for nn.Linear; {"ranks": [r1, r2]} for a low-rank layer (rebuild recreates it)."""
    return {"ranks": [int(r) for r in m.ranks]} if is_lowrank(m) else None


def _make_linear(in_f: int, out_f: int, bias: bool, spec: Optional[dict]) -> nn.Module:
    if spec is None:
        return nn.Linear(in_f, out_f, bias=bias)
    from ..lowrank.module import LowRankLinear
    return LowRankLinear(in_f, out_f, tuple(spec["ranks"]), bias=bias)


def _check_mlp(mlp: nn.Module, i: int) -> None:
    if isinstance(mlp, GatedMlp):
        raise VitoptError(f"block {i} is already gated: apply gates once")
    if not hasattr(mlp, "fc1") or not hasattr(mlp, "fc2"):
        raise VitoptError(f"block {i}: gates support timm Mlp (fc1/act/fc2), found {type(mlp).__name__}")
    norm = getattr(mlp, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        raise VitoptError(f"block {i}: MLPs with a hidden norm are not supported by gates")


def gate_attention(attn: PrunedAttention, gate_hidden: int, threshold: float, init_logit: float,
                   gate_heads: bool = True) -> GatedAttention:
    """Every head dynamic (or every head static when ``gate_heads`` is False); weights shared."""
    qkv, proj = _linear(attn.qkv, "attn.qkv"), _linear(attn.proj, "attn.proj")
    H = attn.num_heads
    g = _attention_class(attn)(attn.dim, 0 if gate_heads else H, H if gate_heads else 0, attn.head_dim, attn.scale,
                       qkv_bias=qkv.bias is not None, proj_bias=proj.bias is not None,
                       gate_hidden=gate_hidden, threshold=threshold, init_logit=init_logit)
    g.qkv, g.proj = qkv, proj
    g.kept = list(range(H))
    return g.to(_device(qkv))


def gate_mlp(mlp: nn.Module, group_size: int, gate_hidden: int, threshold: float, init_logit: float) -> GatedMlp:
    """Channel groups of ``group_size``; the remainder (hidden % group_size) stays static."""
    fc1, fc2 = _linear(mlp.fc1, "mlp.fc1"), _linear(mlp.fc2, "mlp.fc2")
    C = fc1.out_features
    groups = C // group_size
    rest = C - groups * group_size
    g = GatedMlp(fc1.in_features, rest, groups, group_size, act=mlp.act, bias=fc1.bias is not None,
                 gate_hidden=gate_hidden, threshold=threshold, init_logit=init_logit)
    # static remainder first: channels [groups*S, C) then the groups in order
    order = list(range(groups * group_size, C)) + list(range(groups * group_size))
    g.kept = order
    with torch.no_grad():
        idx = torch.as_tensor(order, dtype=torch.long)
        g.fc1 = _sliced_linear(fc1, rows=idx)
        g.fc2 = _sliced_linear(fc2, cols=idx)
    return g.to(_device(fc1))


def _sliced_linear(lin: nn.Module, rows: Optional[torch.Tensor] = None,
                   cols: Optional[torch.Tensor] = None) -> nn.Module:
    """A copy of ``lin`` keeping output ``rows`` and input ``cols`` (low-rank: rows of ``up``, cols of ``down``)."""
    if is_lowrank(lin):
        from ..lowrank.module import LowRankLinear
        r1, r2 = lin.ranks
        ups = [lin.up1.detach()] + ([lin.up2.detach()] if r2 else [])
        downs = [lin.down1.detach()] + ([lin.down2.detach()] if r2 else [])
        b = None if lin.bias is None else lin.bias.detach()
        if rows is not None:
            ups = [u[rows.to(u.device)] for u in ups]
            b = None if b is None else b[rows.to(b.device)]
        if cols is not None:
            downs = [d[:, cols.to(d.device)] for d in downs]
        out_f, in_f = ups[0].shape[0], downs[0].shape[1]
        if r1 + r2 > min(in_f, out_f):   # pruned below its rank: the dense product is smaller
            dense = nn.Linear(in_f, out_f, bias=b is not None).to(ups[0].device)
            with torch.no_grad():
                dense.weight.copy_(sum(u @ d for u, d in zip(ups, downs)))
                if b is not None:
                    dense.bias.copy_(b)
            return dense
        new = LowRankLinear(in_f, out_f, (r1, r2), bias=b is not None).to(ups[0].device)
        new.set_factors(ups[0], downs[0], *(ups[1:] + downs[1:]), bias=b)
        return new
    w = lin.weight.detach()
    b = None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w = w[rows.to(w.device)]
        b = None if b is None else b[rows.to(w.device)]
    if cols is not None:
        w = w[:, cols.to(w.device)]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def gate_model(model: nn.Module, group_size: int = 32, gate_hidden: int = 32, threshold: float = 0.0,
               init_logit: float = 1.0, gate_heads: bool = True, gate_mlp_channels: bool = True) -> nn.Module:
    """Replace every block's attention and MLP by gated modules (in place; outputs unchanged with gates on).

    Works on timm ViTs and on ``PrunedBlock`` models of any per-block widths (e.g. after slim).
    """
    make_prunable(model)
    for i, blk in enumerate(model.blocks):
        if isinstance(blk.attn, GatedAttention):
            raise VitoptError(f"block {i} is already gated: apply gates once")
        if not isinstance(blk.attn, PrunedAttention):
            raise VitoptError(f"block {i}: unsupported attention {type(blk.attn).__name__}")
        _check_mlp(blk.mlp, i)
        blk.attn = gate_attention(blk.attn, gate_hidden, threshold, init_logit, gate_heads)
        if gate_mlp_channels:
            blk.mlp = gate_mlp(blk.mlp, group_size, gate_hidden, threshold, init_logit)
        else:
            fc1 = _linear(blk.mlp.fc1, "mlp.fc1")
            g = GatedMlp(fc1.in_features, fc1.out_features, 0, group_size, act=blk.mlp.act,
                         bias=fc1.bias is not None, gate_hidden=gate_hidden, threshold=threshold)
            g.fc1, g.fc2, g.kept = blk.mlp.fc1, blk.mlp.fc2, list(range(fc1.out_features))
            blk.mlp = g
    return model


# ---------------------------------------------------------------------------------------------
# static pruning


def prune_attention(g: GatedAttention, always: list, never: list) -> GatedAttention:
    """New module: current static heads, then ``always`` heads (now static), then the remaining
    dynamic heads; ``never`` heads are removed. Indices are dynamic-unit indices."""
    dyn = [u for u in range(g.dynamic_units) if u not in set(always) | set(never)]
    static_old = list(range(g.static_units))
    order = static_old + [g.static_units + u for u in always] + [g.static_units + u for u in dyn]
    new = type(g)(g.dim, len(static_old) + len(always), len(dyn), g.head_dim, g.scale,
                         qkv_bias=g.qkv.bias is not None, proj_bias=g.proj.bias is not None,
                         gate_hidden=g.gate_hidden, threshold=g.threshold)
    H, hd, D = g.units, g.head_dim, g.dim
    idx = torch.as_tensor(order, dtype=torch.long)
    rows = (torch.arange(3)[:, None, None] * H * hd + idx[None, :, None] * hd + torch.arange(hd)[None, None, :]).reshape(-1)
    cols = (idx[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
    new.qkv = _sliced_linear(g.qkv, rows=rows)
    new.proj = _sliced_linear(g.proj, cols=cols)
    _carry_gate(g, new, dyn)
    new.kept = [g.kept[i] for i in order]
    return new.to(_device(g.qkv))


def prune_mlp(g: GatedMlp, always: list, never: list) -> GatedMlp:
    """Static channels, then the ``always`` groups (now static), then the remaining dynamic groups."""
    dyn = [u for u in range(g.dynamic_units) if u not in set(always) | set(never)]
    S, Cs = g.group_size, g.static_channels
    order = list(range(Cs))
    for u in always + dyn:
        order += list(range(Cs + u * S, Cs + (u + 1) * S))
    new = GatedMlp(g.dim, Cs + len(always) * S, len(dyn), S, act=g.act, bias=g.fc1.bias is not None,
                   gate_hidden=g.gate_hidden, threshold=g.threshold)
    idx = torch.as_tensor(order, dtype=torch.long)
    new.fc1 = _sliced_linear(g.fc1, rows=idx)
    new.fc2 = _sliced_linear(g.fc2, cols=idx)
    _carry_gate(g, new, dyn)
    new.kept = [g.kept[i] for i in order]
    return new.to(_device(g.fc1))


def _carry_gate(old, new, dyn: list) -> None:
    """Move the trained gate net over, keeping the output rows of the still-dynamic units."""
    if new.gate_net is None:
        return
    old.gate_net.keep_units(dyn)
    new.gate_net = old.gate_net
    new.estimator, new.gumbel_tau = old.estimator, old.gumbel_tau
    freq = getattr(old, "on_freq_mean", None)
    if freq is not None:
        new.mean_active = float(sum(freq[u] for u in dyn))


def static_prune(model: nn.Module, never_on: float, always_on: float) -> dict:
    """Use each module's recorded on-frequencies (``on_freq_min``/``on_freq_max``, set by
    calibration) to remove never-on units and make always-on units static. Returns counts."""
    removed = {"heads": 0, "mlp_groups": 0}
    made_static = {"heads": 0, "mlp_groups": 0}
    for blk in model.blocks:
        for name in ("attn", "mlp"):
            g = getattr(blk, name)
            if not g.dynamic_units:
                continue
            fmax, fmin = g.on_freq_max, g.on_freq_min
            never = [u for u in range(g.dynamic_units) if fmax[u] <= never_on]
            always = [u for u in range(g.dynamic_units) if fmin[u] >= always_on and u not in never]
            if isinstance(g, GatedAttention) and len(never) == g.units:
                never = never[1:]  # keep at least one head
            key = "heads" if name == "attn" else "mlp_groups"
            removed[key] += len(never)
            made_static[key] += len(always)
            new = prune_attention(g, always, never) if name == "attn" else prune_mlp(g, always, never)
            setattr(blk, name, new)
    return {"removed": removed, "made_static": made_static}


# ---------------------------------------------------------------------------------------------
# structure <-> architecture


def structure_of(model: nn.Module) -> dict:
    blocks = []
    for blk in model.blocks:
        a, m = blk.attn, blk.mlp
        blocks.append({
            "attn": {"static_heads": a.static_units, "dynamic_heads": a.dynamic_units, "head_dim": a.head_dim,
                     "scale": a.scale, "qkv_bias": a.qkv.bias is not None, "proj_bias": a.proj.bias is not None,
                     "gate_hidden": a.gate_hidden, "threshold": a.threshold, "mean_active": a.mean_active,
                     "kept_heads": list(getattr(a, "kept", [])),
                     "qkv": _linear_spec(a.qkv), "proj": _linear_spec(a.proj)},
            "mlp": {"static_channels": m.static_channels, "dynamic_groups": m.dynamic_units,
                    "group_size": m.group_size, "bias": m.fc1.bias is not None, "gate_hidden": m.gate_hidden,
                    "threshold": m.threshold, "mean_active": m.mean_active,
                    "kept_channels": list(getattr(m, "kept", [])),
                    "fc1": _linear_spec(m.fc1), "fc2": _linear_spec(m.fc2)},
        })
    return {"blocks": blocks}


_ATTN_KEYS = {"static_heads", "dynamic_heads", "head_dim", "scale", "qkv_bias", "proj_bias", "gate_hidden",
              "threshold"}
_MLP_KEYS = {"static_channels", "dynamic_groups", "group_size", "bias", "gate_hidden", "threshold"}


def rebuild_gated(model: nn.Module, structure: dict) -> nn.Module:
    """The gated architecture of ``structure`` on ``model`` (weights arbitrary; load them afterwards)."""
    blocks = structure.get("blocks") if isinstance(structure, dict) else None
    if not isinstance(blocks, list):
        raise VitoptError("gates structure has no 'blocks' list")
    make_prunable(model)
    if len(blocks) != len(model.blocks):
        raise VitoptError(f"gates structure describes {len(blocks)} blocks, the model has {len(model.blocks)}")
    for i, (blk, s) in enumerate(zip(model.blocks, blocks)):
        try:
            a, m = s["attn"], s["mlp"]
            missing = (_ATTN_KEYS - set(a)) | (_MLP_KEYS - set(m))
            if missing:
                raise KeyError(", ".join(sorted(missing)))
        except (KeyError, TypeError) as e:
            raise VitoptError(f"gates structure of block {i} is incomplete: {e}") from None
        dim = blk.attn.qkv.in_features if hasattr(blk.attn, "qkv") else blk.norm1.normalized_shape[0]
        ga = _attention_class(blk.attn)(dim, int(a["static_heads"]), int(a["dynamic_heads"]), int(a["head_dim"]), float(a["scale"]),
                            qkv_bias=bool(a["qkv_bias"]), proj_bias=bool(a["proj_bias"]),
                            gate_hidden=int(a["gate_hidden"]), threshold=float(a["threshold"]))
        ga.mean_active, ga.kept = a.get("mean_active"), list(a.get("kept_heads") or [])
        H, hd = ga.units, ga.head_dim
        ga.qkv = _make_linear(dim, 3 * H * hd, bool(a["qkv_bias"]), a.get("qkv"))
        ga.proj = _make_linear(H * hd, dim, bool(a["proj_bias"]), a.get("proj"))
        act = getattr(blk.mlp, "act", None)
        gm = GatedMlp(dim, int(m["static_channels"]), int(m["dynamic_groups"]), int(m["group_size"]), act=act,
                      bias=bool(m["bias"]), gate_hidden=int(m["gate_hidden"]), threshold=float(m["threshold"]))
        gm.mean_active, gm.kept = m.get("mean_active"), list(m.get("kept_channels") or [])
        gm.fc1 = _make_linear(dim, gm.hidden, bool(m["bias"]), m.get("fc1"))
        gm.fc2 = _make_linear(gm.hidden, dim, bool(m["bias"]), m.get("fc2"))
        blk.attn, blk.mlp = ga, gm
    return model


def gate_summary(model: nn.Module) -> dict:
    heads = [(b.attn.static_units, b.attn.dynamic_units) for b in model.blocks]
    mlp = [(b.mlp.static_channels, b.mlp.dynamic_units, b.mlp.group_size) for b in model.blocks]
    return {"static_heads": sum(h[0] for h in heads), "dynamic_heads": sum(h[1] for h in heads),
            "static_mlp_channels": sum(m[0] for m in mlp), "dynamic_mlp_groups": sum(m[1] for m in mlp),
            "gates": sum(1 for g in gated_modules(model) if g.dynamic_units)}

"""Physically smaller ViT from a plan: sliced ``PrunedBlock``s with per-block widths and token sets.

Every block keeps the attention scale of the *original* head dim (``PrunedAttention.scale``,
passed to SDPA explicitly). Mask values of kept units are folded into the weights (the attention
mask scales the q, k and v rows alike, the MLP mask the fc2 columns), so the sliced model equals
the hard-masked search model. Token sets become a static ``token_index`` gather per block.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...errors import VitoptError
from ...models.blocks import PrunedAttention, PrunedBlock, make_prunable


def structure_from_plan(plan: list, geo) -> dict:
    """JSON structure (what ``rebuild`` needs): per-block widths, scale and token gathers."""
    blocks, prev = [], list(range(geo.num_tokens))
    for g, p in zip(geo.blocks, plan):
        index = None
        if p.tokens != prev:
            pos = {t: i for i, t in enumerate(prev)}
            missing = [t for t in p.tokens if t not in pos]
            if missing:
                raise VitoptError(f"token plan is not monotone over depth: {missing[:5]} reappear")
            index = [pos[t] for t in p.tokens]
        blocks.append({"num_heads": p.num_heads, "head_dim": p.head_dim, "scale": g.scale,
                       "mlp_hidden": len(p.units), "token_index": index,
                       "token_positions": None if p.tokens == list(range(geo.num_tokens)) else list(p.tokens)})
        prev = p.tokens
    return {"format": "slim-structure", "version": 1, "blocks": blocks}


def _shape_block(block: PrunedBlock, spec: dict) -> None:
    """Give ``block`` the widths in ``spec`` (new Linear layers; weights arbitrary)."""
    a = block.attn
    dim = a.qkv.in_features
    new = PrunedAttention(dim, int(spec["num_heads"]), int(spec["head_dim"]), float(spec["scale"]),
                          qkv_bias=a.qkv.bias is not None, proj_bias=a.proj.bias is not None)
    block.attn = new
    mlp = block.mlp
    hidden = int(spec["mlp_hidden"])
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise VitoptError("MLPs with a hidden-layer norm cannot be sliced")
    mlp.fc1 = nn.Linear(mlp.fc1.in_features, hidden, bias=mlp.fc1.bias is not None)
    mlp.fc2 = nn.Linear(hidden, mlp.fc2.out_features, bias=mlp.fc2.bias is not None)
    idx = spec.get("token_index")
    block.token_index = None if idx is None else torch.as_tensor(idx, dtype=torch.long)
    pos = spec.get("token_positions")
    block.token_positions = None if pos is None else [int(t) for t in pos]


def rebuild(model: nn.Module, structure: dict) -> nn.Module:
    """The sliced architecture of ``structure`` on a base timm ViT (weights arbitrary)."""
    if not isinstance(structure, dict) or structure.get("format") != "slim-structure":
        raise VitoptError("not a slim structure (expected format 'slim-structure')")
    model = make_prunable(model)
    specs = structure["blocks"]
    if len(specs) != len(model.blocks):
        raise VitoptError(f"slim structure has {len(specs)} blocks, the model {len(model.blocks)}")
    for b, spec in zip(model.blocks, specs):
        _shape_block(b, spec)
    if structure.get("merge") is not None:   # token_mode merge
        from ..merge import rebuild as rebuild_merge
        model = rebuild_merge(model, structure["merge"])
    return model


@torch.no_grad()
def slice_model(model: nn.Module, plan: list, geo, attn_scale: Optional[list] = None,
                mlp_scale: Optional[list] = None) -> nn.Module:
    """Slice ``model`` (in place) to ``plan``, folding mask values of the kept units.

    attn_scale[i] (heads, head_dim) and mlp_scale[i] (hidden,) are the search's mask values; None = 1.
    """
    model = make_prunable(model)
    structure = structure_from_plan(plan, geo)
    for i, (b, p, spec) in enumerate(zip(model.blocks, plan, structure["blocks"])):
        a, mlp = b.attn, b.mlp
        H, hd = a.num_heads, a.head_dim
        A = H * hd
        heads = torch.as_tensor(p.heads)
        dims = torch.as_tensor(p.dims)                                  # (h', d)
        flat = (heads[:, None] * hd + dims).flatten()                     # kept columns of the attention width
        rows = torch.cat([flat + part * A for part in range(3)])
        s = torch.ones(H, hd) if attn_scale is None else attn_scale[i].detach().float().cpu()
        s_flat = s[heads[:, None], dims].flatten().to(a.qkv.weight.dtype)
        s_rows = s_flat.repeat(3)
        qkv_w = a.qkv.weight[rows] * s_rows[:, None]
        qkv_b = None if a.qkv.bias is None else a.qkv.bias[rows] * s_rows
        proj_w, proj_b = a.proj.weight[:, flat], a.proj.bias
        units = torch.as_tensor(p.units)
        m = torch.ones(mlp.fc1.out_features) if mlp_scale is None else mlp_scale[i].detach().float().cpu()
        fc1_w = mlp.fc1.weight[units]
        fc1_b = None if mlp.fc1.bias is None else mlp.fc1.bias[units]
        fc2_w = mlp.fc2.weight[:, units] * m[units].to(mlp.fc2.weight.dtype)[None, :]
        fc2_b = mlp.fc2.bias
        _shape_block(b, spec)
        na, nm = b.attn, b.mlp
        na.qkv.weight.copy_(qkv_w)
        if qkv_b is not None:
            na.qkv.bias.copy_(qkv_b)
        na.proj.weight.copy_(proj_w)
        if proj_b is not None:
            na.proj.bias.copy_(proj_b)
        nm.fc1.weight.copy_(fc1_w)
        if fc1_b is not None:
            nm.fc1.bias.copy_(fc1_b)
        nm.fc2.weight.copy_(fc2_w)
        if fc2_b is not None:
            nm.fc2.bias.copy_(fc2_b)
        dev = a.qkv.weight.device
        b.to(dev)
    return model

"""A timm-compatible ViT block whose attention and MLP widths and token set are explicit.

timm's ``Attention`` derives the softmax scale from the head dim and its fused path always uses
1/sqrt(head_dim); a block whose head dim was sliced must keep the scale of the *original* head
dim, so the scale is a stored attribute here and passed to SDPA explicitly.

Parameter names equal timm's ``Block`` (norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2,
ls2), so a state_dict moves between the two unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import VitoptError


class PrunedAttention(nn.Module):
    """Multi-head self-attention with explicit ``num_heads``, ``head_dim`` and ``scale``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, scale: float,
                 qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if num_heads < 1 or head_dim < 1:
            raise VitoptError(f"attention needs at least one head of one dim, got {num_heads}x{head_dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = float(scale)
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj(x)

    def vitopt_macs(self, inputs, output) -> int:
        """q·kᵀ and attn·v (the Linears count themselves)."""
        B, N, _ = inputs[0].shape
        return 2 * B * self.num_heads * N * N * self.head_dim

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, scale={self.scale:.6g}"


class PrunedBlock(nn.Module):
    """timm ``Block`` with explicit widths and an optional static token selection.

    ``token_index`` (positions among this block's *input* tokens) is applied before the block:
    ViT-Slim token masks are per position, so pruning is a static gather that ONNX and TensorRT
    lower to one Gather. ``token_positions`` records which original tokens the block outputs,
    for distillation against the dense teacher.
    """

    def __init__(self, norm1: nn.Module, attn: nn.Module, ls1: nn.Module, norm2: nn.Module,
                 mlp: nn.Module, ls2: nn.Module,
                 token_index: Optional[Sequence[int]] = None,
                 token_positions: Optional[Sequence[int]] = None):
        super().__init__()
        self.norm1, self.attn, self.ls1 = norm1, attn, ls1
        self.drop_path1 = nn.Identity()
        self.norm2, self.mlp, self.ls2 = norm2, mlp, ls2
        self.drop_path2 = nn.Identity()
        self.register_buffer("token_index",
                             None if token_index is None else torch.as_tensor(list(token_index), dtype=torch.long),
                             persistent=False)
        self.token_positions = None if token_positions is None else [int(i) for i in token_positions]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.token_index is not None:
            x = x.index_select(1, self.token_index)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def to_pruned_block(block: nn.Module) -> PrunedBlock:
    """Wrap a timm ``Block`` (sharing its submodules) as a ``PrunedBlock`` with identical output."""
    if isinstance(block, PrunedBlock):
        return block
    attn = block.attn
    for flag in ("q_norm", "k_norm", "norm"):
        m = getattr(attn, flag, None)
        if m is not None and not isinstance(m, nn.Identity):
            raise VitoptError(f"blocks with attention {flag} are not supported for structural edits")
    if getattr(attn, "gate", None) is not None:
        raise VitoptError("gated attention blocks are not supported for structural edits")
    if not hasattr(attn, "qkv") or not hasattr(block, "mlp") or not hasattr(block.mlp, "fc1"):
        raise VitoptError(f"unsupported block type {type(block).__name__}: expected timm ViT blocks "
                          "with attn.qkv and mlp.fc1/fc2")
    new_attn = PrunedAttention(attn.qkv.in_features, attn.num_heads, attn.head_dim, attn.scale,
                               qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None)
    new_attn.qkv, new_attn.proj = attn.qkv, attn.proj
    return PrunedBlock(block.norm1, new_attn, block.ls1, block.norm2, block.mlp, block.ls2)


def make_prunable(model: nn.Module) -> nn.Module:
    """Replace every block of a timm ViT by an equivalent ``PrunedBlock`` (in place)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise VitoptError(f"{type(model).__name__} has no .blocks: only timm VisionTransformer-style models are supported")
    for i in range(len(blocks)):
        blocks[i] = to_pruned_block(blocks[i])
    return model

"""Backward formulas of the ops, in plain PyTorch (the kernels are forward-only; gradients run as
ordinary GEMMs, so a fine-tune with kernels enabled trains the same weights as without)."""
import torch
import torch.nn.functional as F


def _rows2(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3])   # x / h, the weight(s), the index or the second factor
    ctx.has_bias = inputs[3] is not None


def lowrank_backward(ctx, gy):
    x, down, up = ctx.saved_tensors
    t = F.linear(x, down)                 # recomputed: the forward never wrote it
    gt = gy @ up
    gx = gt @ down
    gdown = _rows2(gt).t() @ _rows2(x)
    gup = _rows2(gy).t() @ _rows2(t)
    return gx, gdown, gup, (_rows2(gy).sum(0) if ctx.has_bias else None)


def rows_backward(ctx, gy):
    x, weight, index = ctx.saved_tensors
    gx = gy @ weight.index_select(0, index)
    gw = torch.zeros_like(weight).index_add_(0, index, _rows2(gy).t() @ _rows2(x))
    gb = None
    if ctx.has_bias:
        gb = torch.zeros(weight.shape[0], dtype=gy.dtype, device=gy.device).index_add_(0, index, _rows2(gy).sum(0))
    return gx, gw, None, gb, None


def cols_backward(ctx, gy):
    h, weight, index = ctx.saved_tensors
    gh = gy @ weight.index_select(1, index)
    gw = torch.zeros_like(weight).index_add_(1, index, _rows2(gy).t() @ _rows2(h))
    return gh, gw, None, (_rows2(gy).sum(0) if ctx.has_bias else None), None

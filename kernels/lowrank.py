"""Fused low-rank linear ``y = (x·downᵀ)·upᵀ + bias`` as the custom op ``vitopt::lowrank_linear``.

The rank-r intermediate stays on chip (r ≤ ``MAX_RANK``): one read of x, the factors and the bias,
one write of y, where the two-GEMM path also writes and reads tokens × r values.

How it reaches ONNX / TensorRT: it does not, as an op. A module with kernels enabled calls
``kernels.reference.lowrank_linear_reference`` while an exporter traces it (``kernels.dispatch``),
so the graph holds the plain MatMul → MatMul (+ Add) that ``optimizer/graph`` rules and the
TensorRT builders already handle. ``torch.compile`` and ``torch.export`` see the op itself (its
fake implementation gives the shapes) and treat it as one opaque call. Gradients: plain-PyTorch
formulas (``kernels/_autograd.py``).
"""
import math
from typing import Optional

import torch

from optimizer.errors import VitoptError

from ._autograd import lowrank_backward, save_inputs
from ._checks import check_bias, check_floats, check_launchable, check_matrix

MAX_RANK = 256   # the FP32 intermediate tile (block rows × next power of two ≥ r) must fit in registers
_OP = "lowrank_linear"


def _check(x, down, up, bias) -> None:
    check_floats(_OP, x=x, down=down, up=up, bias=bias)
    check_matrix(_OP, "down", down)
    check_matrix(_OP, "up", up)
    r, k = down.shape
    n, r_up = up.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise VitoptError(f"{_OP}: x has {x.shape[-1] if x.dim() else 0} features but down is {r}x{k}")
    if r_up != r:
        raise VitoptError(f"{_OP}: down has rank {r} but up is {n}x{r_up}")
    if not 1 <= r <= MAX_RANK:
        raise VitoptError(f"{_OP}: rank {r} is outside 1..{MAX_RANK} (the fused kernel keeps the "
                          "intermediate on chip); use lowrank_linear_reference")
    check_bias(_OP, bias, n)


@torch.library.custom_op("vitopt::lowrank_linear", mutates_args=())
def _lowrank_linear_op(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                       bias: Optional[torch.Tensor]) -> torch.Tensor:
    _check(x, down, up, bias)
    check_launchable(_OP, x)
    n, k = up.shape[0], down.shape[1]
    # a view when the leading dims allow it (else a copy); the kernel takes any 2-D strides
    x2 = x.reshape(math.prod(x.shape[:-1]), k)
    y2 = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        from . import _triton_lowrank
        _triton_lowrank.run(x2, down, up, bias, y2)
    return y2.reshape(*x.shape[:-1], n)


@_lowrank_linear_op.register_fake
def _lowrank_linear_fake(x, down, up, bias):
    _check(x, down, up, bias)
    return x.new_empty((*x.shape[:-1], up.shape[0]))


_lowrank_linear_op.register_autograd(lowrank_backward, setup_context=save_inputs)


def lowrank_linear(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x·downᵀ)·upᵀ + bias`` in one Triton kernel (FP32 accumulation, output in x's dtype).

    Args:
        x: (..., in) float16 / bfloat16 / float32, CUDA (or CPU under TRITON_INTERPRET=1); any strides.
        down: (r × in) with 1 ≤ r ≤ 256; up: (out × r); bias: (out,) or None — same dtype and device.
    Returns: (..., out).
    Raises VitoptError (before launch) on other dtypes, mixed devices, mismatched shapes or r > 256.
    Example: ``lowrank_linear(x, layer.down1, layer.up1, layer.bias)``
    """
    return torch.ops.vitopt.lowrank_linear(x, down, up, bias)

"""Pure-PyTorch references of the kernels, and the tolerances the kernels are held to.

These are also what the exporters see: a module with kernels enabled calls them while exporting,
so ONNX graphs keep plain MatMul / Gather (TensorRT builds them as before).
"""
import torch
import torch.nn.functional as F

# (atol, rtol) per input dtype for kernel vs reference on outputs of unit scale: the kernels
# accumulate in FP32 like cuBLAS, but sum in another order and round the low-rank intermediate
# at a different point, so half precisions differ by a few ulps of the output.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 2e-2),
}


def lowrank_linear_reference(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias=None) -> torch.Tensor:
    """``(x·downᵀ)·upᵀ + bias``: two GEMMs, the rank-r intermediate written to memory."""
    return F.linear(F.linear(x, down), up, bias)


def gathered_rows_linear_reference(x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
                                   bias=None) -> torch.Tensor:
    """``x·weight[index]ᵀ + bias[index]``: a Gather of the rows, then a GEMM."""
    return F.linear(x, weight.index_select(0, index), None if bias is None else bias.index_select(0, index))


def gathered_cols_linear_reference(h: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
                                   bias=None) -> torch.Tensor:
    """``h·weight[:, index]ᵀ + bias``: a Gather of the columns, then a GEMM."""
    return F.linear(h, weight.index_select(1, index), bias)

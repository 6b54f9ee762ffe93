"""Gathered-group GEMMs of gated modules as custom ops ``vitopt::gathered_rows_linear`` and
``vitopt::gathered_cols_linear``.

    rows:     y = x·W[idx]ᵀ + b[idx]      (the first matmul: only the active output units)
    columns:  y = h·W[:, idx]ᵀ + b        (the second matmul: only the active input units)

The kernels read the active rows / columns of W in place: no gathered copy of the weights is
written and read back.

How they reach ONNX / TensorRT: not as ops. A module with kernels enabled calls the references in
``kernels.reference`` while an exporter traces it (``kernels.dispatch``), so the graph keeps the
Gather → MatMul that ``optimizer/methods/gates/export.py`` emits and TensorRT builds.
``torch.compile`` / ``torch.export`` see the ops (fake implementations give the shapes). Gradients:
plain-PyTorch formulas (``kernels/_autograd.py``).
"""
import math
from typing import Optional

import torch

from optimizer.errors import VitoptError

from ._autograd import cols_backward, rows_backward, save_inputs
from ._checks import check_bias, check_floats, check_index_range, check_index_tensor, check_launchable, check_matrix

_ROWS, _COLS = "gathered_rows_linear", "gathered_cols_linear"


# per op: (name of the activation argument, weight dimension the index selects, what that is)
_SPEC = {_ROWS: ("x", 0, "weight rows"), _COLS: ("h", 1, "weight columns")}


def _check(op: str, a, weight, index, bias) -> None:
    """Checks shared by both ops, real and fake; the index range is checked (on data) in ``_run``."""
    a_name, dim, _ = _SPEC[op]
    check_floats(op, **{a_name: a}, weight=weight, bias=bias)
    check_matrix(op, "weight", weight)
    check_index_tensor(op, index, a.device)
    features = weight.shape[1] if op == _ROWS else index.shape[0]
    if a.dim() < 1 or a.shape[-1] != features:
        what = f"weight is {weight.shape[0]}x{weight.shape[1]}" if op == _ROWS else \
            f"the index selects {index.shape[0]} columns"
        raise VitoptError(f"{op}: {a_name} has {a.shape[-1] if a.dim() else 0} features but {what}")
    check_bias(op, bias, weight.shape[0])


def _out_features(op: str, weight, index) -> int:
    return index.shape[0] if op == _ROWS else weight.shape[0]


def _run(op: str, a, weight, index, bias, check_index: bool):
    _check(op, a, weight, index, bias)
    check_launchable(op, a)
    _, dim, what = _SPEC[op]
    if check_index:
        check_index_range(op, index, weight.shape[dim], what)
    n = _out_features(op, weight, index)
    a2 = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])   # -1 would be ambiguous for an empty index
    y2 = torch.empty((a2.shape[0], n), dtype=a.dtype, device=a.device)
    if y2.numel():   # an empty column index still launches: the output is then the bias (or zeros)
        from . import _triton_gathered
        (_triton_gathered.run_rows if op == _ROWS else _triton_gathered.run_cols)(a2, weight, index, bias, y2)
    return y2.reshape(*a.shape[:-1], n)


def _fake(op: str, a, weight, index, bias):
    _check(op, a, weight, index, bias)
    return a.new_empty((*a.shape[:-1], _out_features(op, weight, index)))


@torch.library.custom_op("vitopt::gathered_rows_linear", mutates_args=())
def _rows_op(x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, bias: Optional[torch.Tensor],
             check_index: bool) -> torch.Tensor:
    return _run(_ROWS, x, weight, index, bias, check_index)


@torch.library.custom_op("vitopt::gathered_cols_linear", mutates_args=())
def _cols_op(h: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, bias: Optional[torch.Tensor],
             check_index: bool) -> torch.Tensor:
    return _run(_COLS, h, weight, index, bias, check_index)


_rows_op.register_fake(lambda x, weight, index, bias, check_index: _fake(_ROWS, x, weight, index, bias))
_cols_op.register_fake(lambda h, weight, index, bias, check_index: _fake(_COLS, h, weight, index, bias))
_rows_op.register_autograd(rows_backward, setup_context=save_inputs)
_cols_op.register_autograd(cols_backward, setup_context=save_inputs)


def gathered_rows_linear(x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, *, check_index: bool = True) -> torch.Tensor:
    """``x·weight[index]ᵀ + bias[index]`` without a gathered copy of ``weight``.

    Args:
        x: (..., in) float16 / bfloat16 / float32, CUDA (or CPU under TRITON_INTERPRET=1); any strides.
        weight: (units × in); bias: (units,) or None; index: 1-D int32/int64 rows to use (may be empty).
        check_index: check every index is in [0, units) before launch (one host sync); callers whose
            indices are valid by construction pass False — the kernel never reads outside ``weight``.
    Returns: (..., len(index)).
    Raises VitoptError (before launch) on bad dtypes, devices, shapes or an index out of range.
    Example: ``gathered_rows_linear(x, fc1.weight, active_rows, fc1.bias)``
    """
    return torch.ops.vitopt.gathered_rows_linear(x, weight, index, bias, check_index)


def gathered_cols_linear(h: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, *, check_index: bool = True) -> torch.Tensor:
    """``h·weight[:, index]ᵀ + bias`` without a gathered copy of ``weight``.

    Args:
        h: (..., len(index)) float16 / bfloat16 / float32 on the kernels' device; any strides.
        weight: (out × units); bias: (out,) or None; index: 1-D int32/int64 columns h's features map to.
        check_index: as in ``gathered_rows_linear``.
    Returns: (..., out); with an empty index, the bias (zeros without one).
    Raises VitoptError (before launch) on bad dtypes, devices, shapes or an index out of range.
    Example: ``gathered_cols_linear(h, fc2.weight, active_rows, fc2.bias)``
    """
    return torch.ops.vitopt.gathered_cols_linear(h, weight, index, bias, check_index)

"""Triton kernels of the gathered-group GEMMs (see ``kernels.gathered_linear``).

Rows: ``y = x·W[idx]ᵀ + b[idx]`` — each program loads the BLOCK_N indices of its output columns once
and reads those rows of W in place. Columns: ``y = h·W[:, idx]ᵀ + b`` — the reduction runs over the
index, BLOCK_K indices per step. Neither writes a gathered copy of W. Indices outside the weight are
masked (never read): the op rejects them before launch unless its caller vouches for them.
"""
import triton
import triton.language as tl

from ._triton_common import launch, precision_flags, tile_dot

_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3),
        (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (32, 64, 64, 4, 4),
    ]
]
_SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's output rows / columns, the K offsets of one step, and the bounds masks."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rm, rn, tl.arange(0, BLOCK_K), rm < M, rn < N


@triton.jit
def _store(y_ptr, acc, bias_ptr, bias_offs, bias_ok, rm, rn, m_ok, n_ok, sym, syn, HAS_BIAS: tl.constexpr):
    """acc (+ the bias at ``bias_offs``) cast to y's dtype and stored inside the bounds."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + bias_offs, mask=bias_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _rows_kernel(x_ptr, w_ptr, idx_ptr, bias_ptr, y_ptr, M, N, K, NW,
                 sxm, sxk, swn, swk, si, sb, sym, syn,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, rk, m_ok, n_ok = _tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K)
    rows = tl.load(idx_ptr + rn * si, mask=n_ok, other=0).to(tl.int64)
    row_ok = n_ok & (rows >= 0) & (rows < NW)
    rows = tl.where(row_ok, rows, 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        xt = tl.load(x_ptr + rm[:, None] * sxm + kk[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + rows[None, :] * swn + kk[:, None] * swk, mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        acc = tile_dot(xt, wt, acc, UPCAST, IEEE)
    _store(y_ptr, acc, bias_ptr, rows * sb, row_ok, rm, rn, m_ok, n_ok, sym, syn, HAS_BIAS)


@triton.jit
def _cols_kernel(h_ptr, w_ptr, idx_ptr, bias_ptr, y_ptr, M, N, KG, KW,
                 shm, shk, swn, swk, si, sb, sym, syn,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, rk, m_ok, n_ok = _tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KG, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < KG
        cols = tl.load(idx_ptr + kk * si, mask=k_ok, other=0).to(tl.int64)
        col_ok = k_ok & (cols >= 0) & (cols < KW)
        cols = tl.where(col_ok, cols, 0)
        ht = tl.load(h_ptr + rm[:, None] * shm + kk[None, :] * shk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + cols[:, None] * swk + rn[None, :] * swn, mask=col_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tile_dot(ht, wt, acc, UPCAST, IEEE)
    _store(y_ptr, acc, bias_ptr, rn * sb, n_ok, rm, rn, m_ok, n_ok, sym, syn, HAS_BIAS)


_rows_tuned = triton.autotune(configs=_CONFIGS, key=["M", "N", "K"])(_rows_kernel)
_cols_tuned = triton.autotune(configs=_CONFIGS, key=["M", "N", "KG"])(_cols_kernel)


def _grid(M, N):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))


def run_rows(x2, weight, index, bias, y2) -> None:
    """``y2 = x2·weight[index]ᵀ (+ bias[index])`` for 2-D ``x2``; inputs already checked."""
    M, K = x2.shape
    N = index.shape[0]
    b = bias if bias is not None else y2   # never read when HAS_BIAS is False
    args = (x2, weight, index, b, y2, M, N, K, weight.shape[0], x2.stride(0), x2.stride(1),
            weight.stride(0), weight.stride(1), index.stride(0), b.stride(0), y2.stride(0), y2.stride(1))
    launch(_rows_kernel, _rows_tuned, _grid(M, N), args, _SMALL, HAS_BIAS=bias is not None,
           **precision_flags(x2.dtype, x2.is_cuda))


def run_cols(h2, weight, index, bias, y2) -> None:
    """``y2 = h2·weight[:, index]ᵀ (+ bias)`` for 2-D ``h2``; inputs already checked."""
    M, KG = h2.shape
    N = weight.shape[0]
    b = bias if bias is not None else y2
    args = (h2, weight, index, b, y2, M, N, KG, weight.shape[1], h2.stride(0), h2.stride(1),
            weight.stride(0), weight.stride(1), index.stride(0), b.stride(0), y2.stride(0), y2.stride(1))
    launch(_cols_kernel, _cols_tuned, _grid(M, N), args, _SMALL, HAS_BIAS=bias is not None,
           **precision_flags(h2.dtype, h2.is_cuda))

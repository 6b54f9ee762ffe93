"""Triton kernel of the fused low-rank linear ``y = (x·Bᵀ)·Aᵀ + bias`` (see ``kernels.lowrank_linear``).

One program owns a BLOCK_M × (GROUP_N·BLOCK_N) output panel: it computes the rank-r intermediate
``t = x_tile·Bᵀ`` (BLOCK_M × R_PAD, FP32 accumulation) once, keeps it in registers, and multiplies it
by GROUP_N column tiles of Aᵀ. The intermediate never goes to memory; a panel narrower than N
recomputes it once per panel, which autotuning trades against parallelism (few tokens → many panels).
"""
import triton
import triton.language as tl

from ._triton_common import launch, precision_flags, tile_dot

_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_N": g}, num_warps=w, num_stages=s)
    for bm, bn, bk, g, w, s in [
        (64, 64, 32, 1, 4, 3), (64, 128, 32, 2, 4, 3), (128, 64, 32, 2, 8, 3),
        (128, 128, 32, 4, 8, 3), (32, 64, 64, 1, 4, 4), (64, 64, 64, 4, 4, 3),
    ]
]
# the interpreter's single configuration: small tiles so that tiny test shapes still span several
_SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_N": 2}


@triton.jit
def _lowrank_kernel(x_ptr, down_ptr, up_ptr, bias_ptr, y_ptr, M, N, K, R,
                    sxm, sxk, sdr, sdk, sun, sur, sb, sym, syn,
                    HAS_BIAS: tl.constexpr, R_PAD: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = tl.arange(0, R_PAD)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    r_ok = rr < R
    t = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        xt = tl.load(x_ptr + rm[:, None] * sxm + kk[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        bt = tl.load(down_ptr + kk[:, None] * sdk + rr[None, :] * sdr, mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        t = tile_dot(xt, bt, t, UPCAST, IEEE)
    # rounded to the input dtype like the two-matmul reference, so the second product runs on tensor cores
    t = t.to(x_ptr.dtype.element_ty)
    for g in range(GROUP_N):
        rn = (pid_n * GROUP_N + g) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        at = tl.load(up_ptr + rr[:, None] * sur + rn[None, :] * sun, mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        y = tile_dot(t, at, y, UPCAST, IEEE)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rn * sb, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, y.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


_tuned = triton.autotune(configs=_CONFIGS, key=["M", "N", "K", "R_PAD"])(_lowrank_kernel)


def run(x2, down, up, bias, y2) -> None:
    """Launch on 2-D ``x2`` (M × K) into the preallocated ``y2`` (M × N); inputs already checked."""
    M, K = x2.shape
    N, R = up.shape
    r_pad = max(16, triton.next_power_of_2(R))

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"] * meta["GROUP_N"]))

    b = bias if bias is not None else y2   # never read when HAS_BIAS is False
    args = (x2, down, up, b, y2, M, N, K, R, x2.stride(0), x2.stride(1), down.stride(0), down.stride(1),
            up.stride(0), up.stride(1), b.stride(0), y2.stride(0), y2.stride(1))
    launch(_lowrank_kernel, _tuned, grid, args, _SMALL, HAS_BIAS=bias is not None, R_PAD=r_pad,
           **precision_flags(x2.dtype, x2.is_cuda))

"""Pieces every Triton kernel here shares: the tile product and the launch rule for the interpreter.

Imported only when an op launches, so ``import kernels`` never imports Triton.
"""
import triton
import triton.language as tl

# Decided when the kernels are decorated: ``triton.jit`` returns interpreted functions when
# TRITON_INTERPRET=1 at that moment, and they then run on CPU tensors (tests); otherwise CUDA only.
INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def tile_dot(a, b, acc, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc += a @ b with FP32 accumulation.

    UPCAST: multiply in FP32 (the CPU interpreter's tl.dot mishandles bf16, since numpy has no bf16).
    IEEE: full-precision FP32 products (FP32 inputs without TF32, as cuBLAS does by default).
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


def launch(kernel, tuned, grid, args: tuple, small: dict, **flags) -> None:
    """Run ``tuned`` (triton.autotune'd) on a GPU; in the interpreter run ``kernel`` once with the
    ``small`` block sizes (autotuning there would time every config through numpy)."""
    if INTERPRETED:
        kernel[grid(small)](*args, **flags, **small)
    else:
        tuned[grid](*args, **flags)


def precision_flags(dtype, device_is_cuda: bool) -> dict:
    """UPCAST / IEEE for the inputs' dtype (see ``tile_dot``)."""
    import torch
    upcast = INTERPRETED and dtype == torch.bfloat16
    ieee = dtype == torch.float32 and not (device_is_cuda and torch.backends.cuda.matmul.allow_tf32)
    return {"UPCAST": upcast, "IEEE": ieee}

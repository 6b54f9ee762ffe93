"""Refuse work that cannot fit the machine before it starts, with the numbers, instead of
allocating until the kernel kills the process (e.g. ``vitopt bench --batch 100000``)."""
from __future__ import annotations

import math
from typing import Optional

from .errors import VitoptError

# peak bytes per input byte: the float32 input, its copy in the runtime, and a ViT's largest
# activations (attention scores heads x N x N and the 4x-wide MLP hidden) are a few inputs each
ACTIVATION_FACTOR = 6


def available_bytes(device: str = "cpu") -> Optional[int]:
    """Free memory where the batch will live: the GPU's for cuda, else the machine's RAM."""
    if device == "cuda":
        import torch
        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
        return None
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_batch_memory(batch: int, sample_shape, device: str = "cpu", bytes_per_value: int = 4,
                       what: str = "--batch") -> None:
    """Refuse ``batch`` when batch x input bytes x ``ACTIVATION_FACTOR`` exceeds the free memory."""
    per_image = math.prod(int(d) for d in sample_shape) * bytes_per_value
    need = batch * per_image * ACTIVATION_FACTOR
    free = available_bytes(device)
    if free is not None and need > free:
        where = "GPU memory" if device == "cuda" else "RAM"
        raise VitoptError(f"{what} {batch} needs about {need / 2**30:.1f} GiB ({batch} x {per_image / 2**20:.2f} MiB "
                          f"input x {ACTIVATION_FACTOR} for copies and activations) but only {free / 2**30:.1f} GiB "
                          f"of {where} is free; the largest batch that fits is about "
                          f"{max(1, free // (per_image * ACTIVATION_FACTOR))}")


def sample_shape_of(kind: str, target: str, loaded=None, default=(3, 224, 224)) -> tuple:
    """The (C, H, W) of one input: from the model, or an ONNX file's fixed input dims, else ``default``."""
    if loaded is not None:
        from .counting import model_input_size
        return tuple(model_input_size(loaded.model))
    if kind == "onnx":
        try:
            import onnx
            graph = onnx.load(target, load_external_data=False).graph
            dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:]
        except Exception:  # an unreadable file is reported by the runner that opens it
            return tuple(default)
        if dims and all(d > 0 for d in dims):
            return tuple(dims)
    return tuple(default)


def resolve_device(device: str, flag: str = "--device") -> str:
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cuda' without one is refused up front."""
    if device not in ("auto", "cpu", "cuda"):
        raise VitoptError(f"{flag} must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return device
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise VitoptError(f"{flag} cuda: torch sees no CUDA device on this machine (use cpu or auto)")
    return "cpu"

"""Input checks run before any launch: a clear VitoptError instead of a wrong result or a bad access."""
import torch

from optimizer.errors import MissingDependency, VitoptError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_floats(op: str, **tensors) -> None:
    """Every given tensor (None skipped) has one supported float dtype and lives on one device."""
    given = {k: t for k, t in tensors.items() if t is not None}
    for name, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise VitoptError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise VitoptError(f"{op}: {name} is {t.dtype}; the kernels take float16, bfloat16 or float32")
    dtypes = {t.dtype for t in given.values()}
    if len(dtypes) > 1:
        raise VitoptError(f"{op}: inputs mix dtypes " + ", ".join(f"{k}={t.dtype}" for k, t in given.items()))
    devices = {t.device for t in given.values()}
    if len(devices) > 1:
        raise VitoptError(f"{op}: inputs are on different devices " + ", ".join(f"{k}={t.device}"
                                                                              for k, t in given.items()))


def check_matrix(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() != 2:
        raise VitoptError(f"{op}: {name} must be 2-D, got shape {tuple(t.shape)}")


def check_bias(op: str, bias, n: int) -> None:
    if bias is not None and tuple(bias.shape) != (n,):
        raise VitoptError(f"{op}: bias has shape {tuple(bias.shape)}, expected ({n},)")


def check_index_tensor(op: str, index: torch.Tensor, device: torch.device) -> None:
    """Dtype, rank and device of an index tensor (its range is checked separately: that reads it)."""
    if not isinstance(index, torch.Tensor) or index.dtype not in INDEX_DTYPES:
        kind = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
        raise VitoptError(f"{op}: index must be an int32 or int64 tensor, got {kind}")
    if index.dim() != 1:
        raise VitoptError(f"{op}: index must be 1-D, got shape {tuple(index.shape)}")
    if index.device != device:
        raise VitoptError(f"{op}: index is on {index.device} but the inputs are on {device}")


def check_index_range(op: str, index: torch.Tensor, size: int, what: str) -> None:
    """Every index in [0, size): one reduction and one host sync."""
    if index.numel() and bool(((index < 0) | (index >= size)).any()):
        lo, hi = int(index.min()), int(index.max())
        raise VitoptError(f"{op}: index out of range for {size} {what} (min {lo}, max {hi})")


def check_launchable(op: str, t: torch.Tensor) -> None:
    """CUDA tensors always; CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1)."""
    try:
        from . import _triton_common
    except ImportError as e:
        raise MissingDependency(f"{op}: the kernels need the 'triton' package ({e}); "
                                "install the CUDA build of torch, which brings it") from None
    if not (t.is_cuda or (t.device.type == "cpu" and _triton_common.INTERPRETED)):
        raise VitoptError(f"{op}: the Triton kernel runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1 "
                          f"set before triton is imported), got a {t.device} tensor; "
                          "kernels.reference has the same op in plain PyTorch")

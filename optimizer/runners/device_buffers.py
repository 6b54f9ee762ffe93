"""Device memory, streams and events for ``TrtRunner``, from whichever CUDA binding is installed.

An edge board (a Jetson, an embedded x86 with a GPU) often has TensorRT but cannot install PyTorch,
so the engine runner must not need torch. Three bindings give it what it needs — device buffers,
host<->device copies on a stream, and CUDA events for device-side timing:

  torch        torch CUDA tensors (byte buffers) and ``torch.cuda.Stream`` / ``Event``;
  cuda-python  the CUDA runtime API of NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``, older
               releases ``cuda.cudart``);
  pycuda       ``pycuda.driver`` (where a wheel or a system package exists: none on PyPI for every
               platform).

``device_buffers()`` takes the first of them that imports *and* sees a GPU, in that order;
``VITOPT_CUDA_BUFFERS=torch|cuda-python|pycuda`` forces one (an unknown name, or one that does not
import or sees no GPU, is a one-line VitoptError). Every binding exposes the same small interface
(``CudaBuffers``), so the runner's code is one path whatever is installed.

Host arrays are numpy. bfloat16 engine tensors are carried as their 16-bit patterns (numpy has no
bfloat16): ``to_bfloat16_bits`` / ``from_bfloat16_bits`` convert with round-to-nearest-even, as
CUDA's ``__float2bfloat16`` does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import VitoptError

ENV = "VITOPT_CUDA_BUFFERS"
ORDER = ("torch", "cuda-python", "pycuda")


@dataclass
class DeviceArray:
    """A device allocation seen as an array: its address, shape and numpy dtype (``handle`` keeps the
    binding's own object alive)."""
    ptr: int
    shape: Tuple[int, ...]
    dtype: np.dtype
    handle: object = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class CudaBuffers:
    """The interface every binding implements (one stream per runner, made by ``stream()``)."""

    name = "base"

    def stream(self) -> object: ...
    def stream_handle(self, stream) -> int: ...
    def empty(self, shape, dtype) -> DeviceArray: ...
    def to_device(self, host: np.ndarray, dst: DeviceArray, stream) -> None: ...
    def to_host(self, src: DeviceArray, stream) -> np.ndarray: ...
    def synchronize(self, stream) -> None: ...
    def event(self) -> object: ...
    def record(self, event, stream) -> None: ...
    def elapsed_ms(self, start, end) -> float: ...

    def upload(self, host: np.ndarray, stream) -> DeviceArray:
        """A new device array holding ``host`` (C-contiguous copy)."""
        host = np.ascontiguousarray(host)
        dst = self.empty(host.shape, host.dtype)
        self.to_device(host, dst, stream)
        return dst


# ---------------------------------------------------------------- torch

class _TorchBuffers(CudaBuffers):
    name = "torch"

    def __init__(self):
        import torch
        self.torch = torch

    def stream(self):
        return self.torch.cuda.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream.cuda_stream)

    def empty(self, shape, dtype) -> DeviceArray:
        a = DeviceArray(0, tuple(int(d) for d in shape), np.dtype(dtype))
        t = self.torch.empty(max(a.nbytes, 1), dtype=self.torch.uint8, device="cuda")
        a.ptr, a.handle = int(t.data_ptr()), t
        return a

    def to_device(self, host, dst, stream) -> None:
        src = self.torch.from_numpy(np.ascontiguousarray(host).reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(stream):
            dst.handle[: src.numel()].copy_(src)   # pageable host memory: the copy is synchronous

    def to_host(self, src, stream) -> np.ndarray:
        with self.torch.cuda.stream(stream):
            raw = src.handle[: src.nbytes].cpu().numpy()
        return raw.view(src.dtype).reshape(src.shape)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event, stream) -> None:
        event.record(stream)

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))


# ---------------------------------------------------------------- cuda-python

def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart   # cuda-python < 12.6
    return cudart


class _CudaPythonBuffers(CudaBuffers):
    name = "cuda-python"

    def __init__(self):
        self.rt = _cudart()

    def _call(self, what: str, result):
        """cuda-python returns (error, *values): raise on an error, else the values."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            raise VitoptError(f"CUDA {what} failed: {text.decode() if isinstance(text, bytes) else text}")
        return values[0] if len(values) == 1 else values

    def stream(self):
        return self._call("stream creation", self.rt.cudaStreamCreate())

    def stream_handle(self, stream) -> int:
        return int(stream)

    def empty(self, shape, dtype) -> DeviceArray:
        a = DeviceArray(0, tuple(int(d) for d in shape), np.dtype(dtype))
        ptr = self._call("allocation", self.rt.cudaMalloc(max(a.nbytes, 1)))
        a.ptr, a.handle = int(ptr), _Freed(self.rt, int(ptr))
        return a

    def to_device(self, host, dst, stream) -> None:
        host = np.ascontiguousarray(host)
        self._call("copy to device", self.rt.cudaMemcpyAsync(dst.ptr, host.ctypes.data, host.nbytes,
                                                             self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        self.synchronize(stream)   # the host array may be freed by the caller once this returns

    def to_host(self, src, stream) -> np.ndarray:
        out = np.empty(src.shape, src.dtype)
        self._call("copy to host", self.rt.cudaMemcpyAsync(out.ctypes.data, src.ptr, src.nbytes,
                                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        self.synchronize(stream)
        return out

    def synchronize(self, stream) -> None:
        self._call("stream synchronize", self.rt.cudaStreamSynchronize(stream))

    def event(self):
        return self._call("event creation", self.rt.cudaEventCreate())

    def record(self, event, stream) -> None:
        self._call("event record", self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start, end) -> float:
        self._call("event synchronize", self.rt.cudaEventSynchronize(end))
        return float(self._call("event timing", self.rt.cudaEventElapsedTime(start, end)))


class _Freed:
    """Frees a cudaMalloc'd pointer when the DeviceArray holding it is collected."""

    def __init__(self, rt, ptr: int):
        self.rt, self.ptr = rt, ptr

    def __del__(self):
        try:
            self.rt.cudaFree(self.ptr)
        except Exception:   # interpreter shutdown: the context is going away anyway
            pass


# ---------------------------------------------------------------- pycuda

class _PyCudaBuffers(CudaBuffers):
    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates and pushes a context on device 0)
        import pycuda.driver as drv
        self.drv = drv

    def stream(self):
        return self.drv.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream.handle)

    def empty(self, shape, dtype) -> DeviceArray:
        a = DeviceArray(0, tuple(int(d) for d in shape), np.dtype(dtype))
        mem = self.drv.mem_alloc(max(a.nbytes, 1))
        a.ptr, a.handle = int(mem), mem
        return a

    def to_device(self, host, dst, stream) -> None:
        self.drv.memcpy_htod_async(dst.handle, np.ascontiguousarray(host), stream)
        stream.synchronize()

    def to_host(self, src, stream) -> np.ndarray:
        out = np.empty(src.shape, src.dtype)
        self.drv.memcpy_dtoh_async(out, src.handle, stream)
        stream.synchronize()
        return out

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def event(self):
        return self.drv.Event()

    def record(self, event, stream) -> None:
        event.record(stream)

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(end.time_since(start))


_BINDINGS = {"torch": _TorchBuffers, "cuda-python": _CudaPythonBuffers, "pycuda": _PyCudaBuffers}


def sees_gpu(name: str) -> bool:
    """Whether binding ``name`` imports and reports at least one CUDA device (no context is created
    for torch and cuda-python; pycuda's check initialises its driver API only)."""
    try:
        if name == "torch":
            import torch
            return bool(torch.cuda.is_available())
        if name == "cuda-python":
            rt = _cudart()
            err, count = rt.cudaGetDeviceCount()
            return int(err) == 0 and count > 0
        import pycuda.driver as drv
        drv.init()
        return drv.Device.count() > 0
    except Exception:   # not installed, no driver, or a broken install: this binding cannot serve
        return False


def available_bindings() -> list:
    """The bindings, in preference order, that import and see a GPU here."""
    return [n for n in ORDER if sees_gpu(n)]


def device_buffers(name: Optional[str] = None) -> CudaBuffers:
    """The binding to use: ``name``, else ``$VITOPT_CUDA_BUFFERS``, else the first of ``ORDER`` that
    sees a GPU. Raises VitoptError naming what was tried."""
    name = name or os.environ.get(ENV) or None
    if name is not None:
        if name not in _BINDINGS:
            raise VitoptError(f"{ENV}={name!r} is not a CUDA binding vitopt knows; use one of {', '.join(ORDER)}")
        if not sees_gpu(name):
            raise VitoptError(f"the {name} CUDA binding does not import or sees no GPU here")
        return _BINDINGS[name]()
    for n in ORDER:
        if sees_gpu(n):
            return _BINDINGS[n]()
    raise VitoptError("no CUDA binding sees a GPU here (tried torch, cuda-python, pycuda): TensorRT engines "
                      "need an NVIDIA GPU and one of them (`pip install cuda-python` on a board without PyTorch)")


# ---------------------------------------------------------------- bfloat16 on the host

def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values -> their bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(x)
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)   # keep it a (quiet) NaN
    return out


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values (exact)."""
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)

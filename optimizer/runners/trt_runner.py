"""``TrtRunner``: execute a serialized TensorRT (or TensorRT for RTX) engine on an NVIDIA GPU.

Device buffers, the stream and the timing events come from whichever CUDA binding is installed —
torch, cuda-python or pycuda (``device_buffers``) — so an edge board with TensorRT and no PyTorch
runs engines too. The engine runs with ``execute_async_v3`` on that stream and is timed with CUDA
events recorded on it. Engines can be *built* without a GPU (TensorRT for RTX does that), but never
*run* without one: construction fails with a one-line VitoptError on such a machine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..engine.builders import BUILDERS, import_builder
from ..errors import VitoptError
from ..fileio import require_file
from .base import BaseRunner

NO_GPU = "TensorRT engines need an NVIDIA GPU to run; none found"


def gpu_available() -> bool:
    """True when a CUDA binding (torch, cuda-python, pycuda) sees a device (a driver query, no context)."""
    from .device_buffers import ORDER, sees_gpu
    return any(sees_gpu(n) for n in ORDER)


def engine_sidecar(engine_path: str | os.PathLike) -> Optional[dict]:
    """The JSON written beside an engine by ``optimizer.engine.save_engine`` (``<engine>.json``), or None."""
    p = Path(engine_path)
    for cand in (p.with_name(p.name + ".json"), p.with_suffix(".json")):
        if cand.is_file() and cand != p:
            try:
                return json.loads(cand.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def sidecar_memory_bytes(meta: Optional[dict]) -> Optional[int]:
    """Weights + activation bytes recorded in an engine sidecar, if it has them."""
    if not meta:
        return None
    flat = dict(meta)
    for k in ("memory", "memory_bytes"):
        if isinstance(meta.get(k), dict):
            flat.update(meta[k])
    w = next((flat[k] for k in ("weights_bytes", "weights_memory_bytes", "weight_bytes", "weights_memory",
                                "weights") if isinstance(flat.get(k), (int, float))), None)
    a = next((flat[k] for k in ("activation_bytes", "activation_memory_bytes", "activations_bytes",
                                "activation_memory", "device_memory_bytes", "activations")
              if isinstance(flat.get(k), (int, float))), None)
    if w is None and a is None:
        return None
    return int((w or 0) + (a or 0))


# TensorRT tensor types -> numpy (bfloat16 travels as its uint16 bit patterns: numpy has no bfloat16)
_NP_TYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int32": np.int32,
             "int64": np.int64, "int8": np.int8, "bool": np.bool_, "uint8": np.uint8}


def _np_dtype(trt, dt) -> np.dtype:
    for name, t in _NP_TYPES.items():
        if hasattr(trt, name) and dt == getattr(trt, name):
            return np.dtype(t)
    raise VitoptError(f"engine tensor type {dt} is not supported by TrtRunner")


class TrtRunner(BaseRunner):
    """Run a serialized engine (``.engine``) on the current CUDA device.

    Args:
        engine_path: the engine file; its ``<engine>.json`` sidecar (if present) names the builder.
        builder: "tensorrt" or "tensorrt_rtx" (default: the sidecar's, else whichever imports).
    Raises VitoptError when there is no NVIDIA GPU, the file is missing, or the engine does not
    deserialize (other TensorRT version, other GPU); MissingDependency without a TensorRT module.
    Example: ``with TrtRunner("deit.engine") as r: r.infer({r.input_name: x})``
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | os.PathLike, builder: Optional[str] = None, name: Optional[str] = None):
        super().__init__(name)
        self.path = require_file(engine_path, "TensorRT engine")
        if not gpu_available():
            raise VitoptError(f"{NO_GPU} (no CUDA binding — torch, cuda-python, pycuda — sees a device); "
                              f"build engines here, run {self.path.name} on a machine with one")
        self.meta = engine_sidecar(self.path) or {}
        recorded = self.meta.get("builder")
        if isinstance(recorded, dict):  # optimizer.engine writes {"package": ..., "version": ...}
            recorded = recorded.get("package")
        self.builder = builder or (recorded if recorded in BUILDERS else None)
        self.precision = str(self.meta.get("precision", "unknown"))
        self.engine = self.context = None

    def _activate(self) -> None:
        from .device_buffers import device_buffers
        trt, _ = import_builder(self.builder)
        self.builder = trt.__name__
        self._trt = trt
        self._cuda = device_buffers()
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise VitoptError(f"cannot deserialize {self.path} with {self.builder} {trt.__version__} "
                              "(built by another TensorRT version, or for another GPU?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise VitoptError(f"cannot create an execution context for {self.path} (out of GPU memory?)")
        self._stream = self._cuda.stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_in[n]]
        self.output_names = [n for n in names if not is_in[n]]
        self._dtypes = {n: _np_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._bf16 = {n for n in names if self.engine.get_tensor_dtype(n) == getattr(trt, "bfloat16", None)}
        self._start, self._end = self._cuda.event(), self._cuda.event()
        self._buffers = {}

    def _deactivate(self) -> None:
        self._buffers = {}
        self.context = self.engine = None
        self._runtime = None

    @property
    def sample_shape(self) -> Optional[Tuple[int, ...]]:
        if self.engine is None:
            return None
        shape = tuple(self.engine.get_tensor_shape(self.input_names[0]))[1:]
        return shape if all(d > 0 for d in shape) else None

    @property
    def input_dtype(self):
        dt = self._dtypes.get(self.input_names[0]) if self.engine is not None else None
        return np.float16 if dt == np.float16 else np.float32

    def info(self) -> dict:
        return {"builder": self.builder, "engine": str(self.path),
                "engine_memory_bytes": sidecar_memory_bytes(self.meta),
                "cuda_binding": getattr(getattr(self, "_cuda", None), "name", None)}

    def _host_input(self, name: str, x: np.ndarray) -> np.ndarray:
        """``x`` in the engine's type for input ``name`` (bfloat16 as bit patterns)."""
        from .device_buffers import to_bfloat16_bits
        if name in self._bf16:
            return to_bfloat16_bits(np.asarray(x, dtype=np.float32))
        return np.ascontiguousarray(x, dtype=self._dtypes[name])

    def _bind(self, inputs: dict) -> dict:
        """Set shapes and addresses for device arrays ``inputs``; allocate and bind the outputs."""
        for n, a in inputs.items():
            if not self.context.set_input_shape(n, a.shape):
                raise VitoptError(f"engine {self.path.name} does not accept {n} of shape {a.shape} "
                                  "(outside its optimization profile)")
            self.context.set_tensor_address(n, a.ptr)
        outs = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise VitoptError(f"engine output {n} has unresolved shape {shape}")
            outs[n] = self._cuda.empty(shape, self._dtypes[n])
            self.context.set_tensor_address(n, outs[n].ptr)
        return outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._cuda.stream_handle(self._stream)):
            raise VitoptError(f"TensorRT failed to execute {self.path.name}")

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from .device_buffers import from_bfloat16_bits
        ins = {n: self._cuda.upload(self._host_input(n, feed[n]), self._stream) for n in self.input_names}
        outs = self._bind(ins)
        self._execute()
        res = {}
        for n, a in outs.items():
            host = self._cuda.to_host(a, self._stream)
            res[n] = from_bfloat16_bits(host) if n in self._bf16 else host
        self._cuda.synchronize(self._stream)
        self._prepared_batch = None  # bindings now point at this call's buffers
        return res

    def _prepare(self, data: np.ndarray) -> None:
        for n in self.input_names[1:]:
            raise VitoptError(f"timing needs a single-input engine; {self.path.name} also has {n}")
        name = self.input_names[0]
        ins = {name: self._cuda.upload(self._host_input(name, data), self._stream)}
        self._buffers = {**ins, **self._bind(ins)}
        self._cuda.synchronize(self._stream)

    def _run_prepared(self) -> None:
        self._execute()

    def _synchronize(self) -> None:
        self._cuda.synchronize(self._stream)

    def infer_timed(self, batch: int) -> float:
        """Milliseconds of device time for one inference, from CUDA events on the engine's stream."""
        if self._prepared_batch != batch:
            self._reprepare(batch)
        self._cuda.record(self._start, self._stream)
        self._execute()
        self._cuda.record(self._end, self._stream)
        return self._cuda.elapsed_ms(self._start, self._end)

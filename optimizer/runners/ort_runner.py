"""``OrtRunner``: ONNX Runtime inference behind the shared runner interface.

Thread settings are always explicit, because ORT's defaults make latency numbers hard to compare:
intra-op threads default to the physical core count, inter-op threads to 1 (sequential execution),
and ``session.intra_op.allow_spinning`` to "0" — spinning workers burn the cores between runs,
which flatters single-model latency and hurts anything else sharing the machine. Pass
``allow_spinning=True`` to measure ORT's default behaviour.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import MissingDependency, VitoptError
from ..fileio import require_file
from .base import BaseRunner, physical_cores

_SHORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def resolve_providers(providers: Union[None, str, Sequence[str]]) -> List[str]:
    """None -> CPU; "cuda" or full provider names -> that list with CPU appended as the fallback.

    Raises VitoptError when a requested provider is not in this onnxruntime build.
    """
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    names = [_SHORT_PROVIDERS.get(p.strip().lower(), p.strip()) for p in providers]
    available = _ort().get_available_providers()
    for n in names:
        if n not in available:
            raise VitoptError(f"onnxruntime provider {n} is not available in this build "
                              f"(available: {', '.join(available)})")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


def onnx_precision(path: str | os.PathLike) -> str:
    """The precision the deployment chain recorded (``vitopt.precision``: an int8 graph's remaining float
    weights would read fp32), else 'fp16' when the floating-point weights are mostly float16, else 'fp32'."""
    try:
        import onnx
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return "fp32"
    recorded = {p.key: p.value for p in m.metadata_props}.get("vitopt.precision")
    if recorded:
        return recorded
    from onnx import TensorProto
    count = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0, TensorProto.BFLOAT16: 0}
    for init in m.graph.initializer:
        if init.data_type in count:
            n = 1
            for d in init.dims:
                n *= d
            count[init.data_type] += n
    best = max(count, key=count.get)
    return {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}[best] \
        if count[best] else "fp32"


def ort_session(onnx_path: str | os.PathLike, threads: int, allow_spinning: bool = False,
                providers: Optional[Sequence] = None):
    """The one place an ``onnxruntime.InferenceSession`` is created (runners, parity, probes).

    Args:
        onnx_path: ONNX file, or a serialized model as ``bytes``.
        threads: intra-op threads (explicit: ORT's default is every physical core); inter-op is 1.
        allow_spinning: let idle workers spin (off: spinning burns the cores between runs).
        providers: provider names or (name, options) pairs; default CPU.
    Raises VitoptError (one line) for a missing file or a model ONNX Runtime cannot load.
    Example: ``sess = ort_session("m.onnx", threads=2)``
    """
    ort = _ort()
    if threads is None or int(threads) < 1:
        raise VitoptError(f"threads must be a positive integer, got {threads!r}")
    source = onnx_path if isinstance(onnx_path, bytes) else str(require_file(onnx_path, "ONNX model"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    flag = "1" if allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", flag)
    so.add_session_config_entry("session.inter_op.allow_spinning", flag)
    so.log_severity_level = 3  # warnings about unused initializers are noise here
    where = "the given model" if isinstance(onnx_path, bytes) else str(onnx_path)
    try:
        return ort.InferenceSession(source, sess_options=so, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # ORT raises its own exception types for invalid graphs
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitoptError(f"cannot load ONNX model {where}: {msg[:300]}") from None


class OrtRunner(BaseRunner):
    """Run an ONNX file with onnxruntime.

    Args:
        onnx_path: the model file.
        threads: intra-op threads (default: physical cores).
        allow_spinning: let idle intra-op workers spin (ORT's default is to spin; ours is not to).
        providers: None (CPU), "cuda", or a list of provider names; CPU is always the fallback.
        precision: label for reports; default read from the graph's weights.
    Raises VitoptError for a missing or unloadable ONNX file, or an unavailable provider.
    Example: ``with OrtRunner("deit.onnx", threads=2) as r: r.infer({r.input_name: x})``
    """

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, threads: Optional[int] = None, allow_spinning: bool = False,
                 providers: Union[None, str, Sequence[str]] = None, precision: Optional[str] = None,
                 name: Optional[str] = None):
        super().__init__(name)
        self.path = require_file(onnx_path, "ONNX model")
        if threads is not None and threads < 1:
            raise VitoptError(f"threads must be positive, got {threads}")
        self.threads = threads or physical_cores()
        self.allow_spinning = bool(allow_spinning)
        self.providers = resolve_providers(providers)
        self.device = "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self._precision_label = precision
        self.session = None

    def _activate(self) -> None:
        providers = list(self.providers)
        self._stream = None
        if self.device == "cuda":
            # ORT runs on our stream, so CUDA events recorded on it time the device work.
            import torch
            self._stream = torch.cuda.Stream()
            providers = [(p, {"has_user_compute_stream": "1", "user_compute_stream": str(self._stream.cuda_stream)})
                         if p == "CUDAExecutionProvider" else p for p in providers]
        self.session = ort_session(self.path, threads=self.threads, allow_spinning=self.allow_spinning,
                                   providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._in_type = _ORT_TYPES.get(self.session.get_inputs()[0].type, np.float32)
        self.precision = self._precision_label or onnx_precision(self.path)

    def _deactivate(self) -> None:
        self.session = None
        self._binding = None

    @property
    def sample_shape(self) -> Optional[Tuple[int, ...]]:
        if self.session is None:
            return None
        shape = self.session.get_inputs()[0].shape[1:]
        if all(isinstance(d, int) and d > 0 for d in shape):
            return tuple(shape)
        return None

    @property
    def input_dtype(self):
        return getattr(self, "_in_type", np.float32)

    def info(self) -> dict:
        return {"threads": self.threads, "inter_op_threads": 1, "allow_spinning": self.allow_spinning,
                "providers": [p for p in self.providers]}

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        types = {i.name: _ORT_TYPES.get(i.type, None) for i in self.session.get_inputs()}
        feed = {k: (v.astype(types[k]) if types.get(k) is not None and v.dtype != types[k] else v)
                for k, v in feed.items()}
        try:
            outs = self.session.run(self.output_names, feed)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VitoptError(f"onnxruntime failed on {self.path.name}: {msg[:300]}") from None
        return dict(zip(self.output_names, outs))

    def _prepare(self, data: np.ndarray) -> None:
        # IOBinding with preallocated outputs: the timed run neither allocates nor copies results.
        ort = _ort()
        dev, dev_id = ("cuda", 0) if self.device == "cuda" else ("cpu", 0)
        self._x_ort = ort.OrtValue.ortvalue_from_numpy(data, dev, dev_id)
        probe = self.session.run(self.output_names, {self.input_names[0]: data})
        self._y_ort = [ort.OrtValue.ortvalue_from_numpy(np.empty_like(o), dev, dev_id) for o in probe]
        b = self.session.io_binding()
        b.bind_ortvalue_input(self.input_names[0], self._x_ort)
        for name, v in zip(self.output_names, self._y_ort):
            b.bind_ortvalue_output(name, v)
        self._binding = b

    def _run_prepared(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def infer_timed(self, batch: int) -> float:
        """Milliseconds for one inference; CUDA events on the session's stream with the CUDA provider."""
        if self.device != "cuda":
            return super().infer_timed(batch)
        import torch
        if self._prepared_batch != batch:
            self._reprepare(batch)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        self._run_prepared()
        end.record(self._stream)
        end.synchronize()
        return float(start.elapsed_time(end))

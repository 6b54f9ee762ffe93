"""``ServeConfig`` (what the user chooses) and the Triton ``config.pbtxt`` built from it and the model.

The config is built as Triton's own ``ModelConfig`` protobuf (shipped by ``tritonclient``) and
printed with ``text_format``, so every field name and enum is one Triton knows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..errors import MissingDependency, VitoptError
from .signature import ModelSignature

# --platform -> (config platform, config backend, file in the version folder)
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "", "model.plan"),
             "python-ort": ("", "python", "model.py")}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# Triton takes the model name from the folder and uses it in URLs (/v2/models/NAME): keep it to
# characters that need no escaping in a path or a URL.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
LABELS_FILE = "labels.txt"


def check_model_name(name: str) -> str:
    """``name`` if Triton can serve a model under it, else VitoptError saying why."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise VitoptError(f"model name {name!r} is not valid for Triton: use 1-128 letters, digits, '_', '-' or "
                          "'.', not starting with '.' or '-'")
    return name


def model_config_pb2():
    """Triton's model-config protobuf module (from tritonclient)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise MissingDependency("Triton's model-config schema comes with tritonclient: "
                                "pip install 'vitopt[serve]' (or tritonclient[grpc])") from None
    return model_config_pb2


@dataclass(frozen=True)
class ServeConfig:
    """How a model is served.

    Args:
        name: Triton model name (the folder under the repository).
        platform: onnxruntime (onnxruntime_onnx), tensorrt (tensorrt_plan) or python-ort (Python
            backend running ONNX Runtime, for servers without the ONNX Runtime backend).
        max_batch: Triton ``max_batch_size``; 0 for a model with a static batch; None: resolved from
            the model (engine profile) or the benchmark by ``prepare_repository``.
        instances / kind: ``instance_group`` count and KIND_CPU / KIND_GPU.
        dynamic_batching: add a ``dynamic_batching`` block (only when max_batch > 0).
        preferred: ``preferred_batch_size`` list (each <= max_batch); None: from the benchmark's knee.
        max_queue_delay_us: ``max_queue_delay_microseconds``.
        threads: CPU threads per instance (ONNX Runtime intra-op); None leaves the backend's default.
        trt_accelerator: ONNX Runtime on GPU only: run through the TensorRT execution accelerator.
        fp16: with ``trt_accelerator``, its precision_mode FP16 (the variant was validated in FP16).
        warmup: add a ``model_warmup`` request (random data, batch 1) so the first client is not slow.
    """
    name: str
    platform: str = "onnxruntime"
    max_batch: Optional[int] = None
    instances: int = 1
    kind: str = "cpu"
    dynamic_batching: bool = True
    preferred: Optional[Tuple[int, ...]] = None
    max_queue_delay_us: int = 1000
    threads: Optional[int] = None
    trt_accelerator: bool = False
    fp16: bool = False
    warmup: bool = True
    parameters: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        check_model_name(self.name)
        if self.platform not in PLATFORMS:
            raise VitoptError(f"platform must be one of {', '.join(PLATFORMS)}, got {self.platform!r}")
        if self.kind not in KINDS:
            raise VitoptError(f"instance kind must be cpu or gpu, got {self.kind!r}")
        if self.platform == "tensorrt" and self.kind != "gpu":
            raise VitoptError("a TensorRT plan runs on the GPU: use --kind gpu with --platform tensorrt")
        for what, v, lo in (("max batch", self.max_batch, 0), ("instances", self.instances, 1),
                            ("max queue delay (us)", self.max_queue_delay_us, 0)):
            if v is None and what == "max batch":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise VitoptError(f"{what} must be an integer >= {lo}, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise VitoptError(f"threads must be a positive integer, got {self.threads!r}")
        bad = [b for b in (self.preferred or ()) if not isinstance(b, int) or b < 1
               or (self.max_batch is not None and b > self.max_batch)]
        if bad:
            raise VitoptError(f"preferred batch sizes {list(bad)} are not in 1..max_batch_size {self.max_batch}")
        if self.trt_accelerator and not (self.platform == "onnxruntime" and self.kind == "gpu"):
            raise VitoptError("the TensorRT execution accelerator applies to --platform onnxruntime --kind gpu only")

    @property
    def model_file(self) -> str:
        return PLATFORMS[self.platform][2]


def build_model_config(sig: ModelSignature, cfg: ServeConfig, label_output: Optional[str] = None):
    """Triton ``ModelConfig`` protobuf for ``sig`` served as ``cfg``.

    ``label_output``: the output whose last axis indexes ``labels.txt`` (gets ``label_filename``).
    Example: ``text_format.MessageToString(build_model_config(sig, ServeConfig("deit", max_batch=32)))``
    """
    if cfg.max_batch is None or cfg.preferred is None:
        raise VitoptError("build_model_config needs a resolved ServeConfig (max_batch and preferred set)")
    pb = model_config_pb2()
    platform, backend, _ = PLATFORMS[cfg.platform]
    batched = cfg.max_batch > 0
    c = pb.ModelConfig(name=cfg.name, max_batch_size=cfg.max_batch)
    if platform:
        c.platform = platform
    if backend:
        c.backend = backend
    for spec in sig.inputs:
        c.input.add(name=spec.name, data_type=pb.DataType.Value(spec.dtype), dims=sig.dims(spec, batched))
    for spec in sig.outputs:
        o = c.output.add(name=spec.name, data_type=pb.DataType.Value(spec.dtype), dims=sig.dims(spec, batched))
        if spec.name == label_output:
            o.label_filename = LABELS_FILE
    if batched and cfg.dynamic_batching:
        c.dynamic_batching.preferred_batch_size.extend(cfg.preferred)
        c.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    c.instance_group.add(count=cfg.instances, kind=pb.ModelInstanceGroup.Kind.Value(KINDS[cfg.kind]))
    if cfg.trt_accelerator:
        acc = c.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16" if cfg.fp16 else "FP32"
    if cfg.threads is not None:
        if cfg.platform == "onnxruntime":      # the ONNX Runtime backend's own parameter names
            c.parameters["intra_op_thread_count"].string_value = str(cfg.threads)
            c.parameters["inter_op_thread_count"].string_value = "1"
        elif cfg.platform == "python-ort":
            c.parameters["intra_op_threads"].string_value = str(cfg.threads)
    for k, v in cfg.parameters.items():
        c.parameters[k].string_value = str(v)
    if cfg.warmup and all(d > 0 for s in sig.inputs for d in sig.dims(s, batched)):
        w = c.model_warmup.add(name="random_batch_1", batch_size=1)
        for spec in sig.inputs:
            w.inputs[spec.name].data_type = pb.DataType.Value(spec.dtype)
            w.inputs[spec.name].dims.extend(sig.dims(spec, batched))
            w.inputs[spec.name].random_data = True
    return c


def config_text(config) -> str:
    """``config.pbtxt`` text of a ``ModelConfig``."""
    from google.protobuf import text_format
    return text_format.MessageToString(config)


def parse_config_text(text: str, where: str = "config.pbtxt"):
    """Parse ``config.pbtxt`` text with Triton's schema; VitoptError naming the bad line otherwise."""
    from google.protobuf import text_format
    pb = model_config_pb2()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as e:
        raise VitoptError(f"{where} does not parse as a Triton model config: {e}") from None

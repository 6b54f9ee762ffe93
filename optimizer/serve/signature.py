"""What a served model file declares: input/output names, Triton dtypes, dims and its batch range.

Read from the file itself (an ONNX graph's inputs/outputs, or an engine's JSON sidecar written by
``optimizer.engine.save_engine``), never assumed, so the config Triton gets matches what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from ..errors import VitoptError
from ..fileio import require_file

# numpy dtype name -> Triton config TYPE_* (model_config.proto DataType)
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# ONNX TensorProto element type -> numpy dtype name
_ONNX_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 7: "int64", 6: "int32", 5: "int16",
               3: "int8", 2: "uint8", 9: "bool"}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; ``shape`` includes the batch axis, -1 where dynamic."""
    name: str
    dtype: str          # Triton TYPE_* name
    shape: Tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    """I/O of a model file and how it batches.

    ``dynamic_batch``: every input and output has a dynamic first axis (Triton can batch it).
    ``profile_max``: the largest batch an engine's optimisation profile accepts (None for ONNX).
    """
    kind: str                                  # "onnx" or "engine"
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    dynamic_batch: bool
    profile_max: Optional[int] = None
    precision: str = "fp32"
    metadata: dict = field(default_factory=dict)

    def dims(self, spec: TensorSpec, batched: bool) -> Tuple[int, ...]:
        """Config dims of ``spec``: without the batch axis when Triton batches, else the full shape."""
        return tuple(spec.shape[1:]) if batched else tuple(spec.shape)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs], "dynamic_batch": self.dynamic_batch,
                "profile_max": self.profile_max, "precision": self.precision}


def _triton_type(np_name: str, where: str) -> str:
    if np_name not in TRITON_TYPES:
        raise VitoptError(f"{where}: dtype {np_name} has no Triton equivalent")
    return TRITON_TYPES[np_name]


def _onnx_specs(values, initializers, where: str) -> Tuple[Tuple[TensorSpec, ...], bool]:
    specs, dynamic = [], True
    for v in values:
        if v.name in initializers:         # old exporters list weights as graph inputs
            continue
        tt = v.type.tensor_type
        np_name = _ONNX_TYPES.get(tt.elem_type)
        if np_name is None:
            raise VitoptError(f"{where}: {v.name!r} has ONNX element type {tt.elem_type}, which Triton cannot serve")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim)
        if not dims:
            raise VitoptError(f"{where}: {v.name!r} is a scalar; a served tensor needs at least a batch axis")
        dynamic = dynamic and dims[0] == -1
        specs.append(TensorSpec(v.name, _triton_type(np_name, f"{where} {v.name!r}"), dims))
    return tuple(specs), dynamic


def signature_from_onnx(path) -> ModelSignature:
    """Signature of an ONNX file (weights are not loaded)."""
    import onnx
    p = require_file(path, "ONNX model")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise VitoptError(f"cannot read ONNX model {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    inits = {i.name for i in m.graph.initializer}
    ins, din = _onnx_specs(m.graph.input, inits, str(p))
    outs, dout = _onnx_specs(m.graph.output, set(), str(p))
    if not ins or not outs:
        raise VitoptError(f"{p}: the graph has no inputs or no outputs")
    meta = {q.key: q.value for q in m.metadata_props}
    from ..runners.ort_runner import onnx_precision
    return ModelSignature("onnx", ins, outs, din and dout, None,
                          meta.get("vitopt.precision") or onnx_precision(p), meta)


def signature_from_engine(path) -> ModelSignature:
    """Signature of a TensorRT engine from its sidecar JSON (``save_engine``): I/O and the batch profile.

    Raises VitoptError for an engine without a sidecar or without a batch profile.
    """
    from ..engine.build import read_sidecar, sidecar_path
    p = require_file(path, "TensorRT engine")
    info = read_sidecar(p)
    prof = info.get("profile") or {}
    if not prof.get("max") or not prof.get("min"):
        raise VitoptError(f"engine {p} has no batch profile in {sidecar_path(p)}: rebuild it with "
                          "`vitopt build --batch ...`")
    io = info.get("io") or []
    ins = [t for t in io if t.get("mode") == "input"]
    outs = [t for t in io if t.get("mode") == "output"]
    if not ins or not outs:
        raise VitoptError(f"{sidecar_path(p)} records no engine inputs/outputs")

    def spec(t):
        return TensorSpec(t["name"], _triton_type(t["dtype"], f"{p} {t['name']!r}"),
                          tuple(int(d) for d in t["shape"]))
    ins_s, outs_s = tuple(map(spec, ins)), tuple(map(spec, outs))
    dynamic = all(t.shape and t.shape[0] == -1 for t in ins_s + outs_s)
    return ModelSignature("engine", ins_s, outs_s, dynamic, int(prof["max"][0]), info.get("precision", "fp32"),
                          {"builder": info.get("builder")})


def signature_of(path) -> ModelSignature:
    """``signature_from_onnx`` or ``signature_from_engine`` by file suffix."""
    s = str(path)
    if s.endswith(ENGINE_SUFFIXES):
        return signature_from_engine(path)
    if s.endswith(".onnx"):
        return signature_from_onnx(path)
    raise VitoptError(f"{Path(s).name}: expected an .onnx file or a TensorRT engine (.engine/.plan)")

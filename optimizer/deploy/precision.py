"""The precision step: a small registry of graph precisions (fp32, fp16; int8 plugs in the same way).

A precision converts the rule-cleaned fp32 graph and says how the parity gate judges the result:
lossless ones at ``DeployOptions.atol``, lossy ones by their worst per-sample cosine to PyTorch.
Adding one (e.g. ``int8``, converted with calibration images) is one ``register_precision`` call;
no caller of the chain changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import VitoptError
from ..tolerances import tolerance_for


@dataclass(frozen=True)
class Precision:
    """name: the option value; convert: (fp32 proto, calibration ParityInputs) -> (proto, report dict);
    min_cosine: None for a lossless precision (parity at atol), else the lossy gate; help: one line;
    own_accuracy: the graph's accuracy differs enough from its model's to be measured on its own (a
    recipe's export step evaluates it on the eval images; sweeps report it as a variant of its own)."""
    name: str
    convert: Callable
    min_cosine: Optional[float]
    help: str
    own_accuracy: bool = False


_PRECISIONS: dict = {}


def register_precision(precision: Precision) -> Precision:
    if precision.min_cosine is not None and not 0 < precision.min_cosine <= 1:
        raise ValueError(f"min_cosine of precision {precision.name} must be in (0, 1], got {precision.min_cosine}")
    _PRECISIONS[precision.name] = precision
    return precision


def get_precision(name: str) -> Precision:
    if name not in _PRECISIONS:
        raise VitoptError(f"unknown precision {name!r} (known: {', '.join(precision_names())})")
    return _PRECISIONS[name]


def precision_names() -> tuple:
    return tuple(_PRECISIONS)


def _fp32(proto, calib):
    return proto, {}


def _fp16(proto, calib):
    from ..graph import convert_to_fp16, op_histogram
    out = convert_to_fp16(proto, keep_io_types=True)
    return out, {"ops": op_histogram(out)}


register_precision(Precision("fp32", _fp32, None, "the exported graph's float32"))
# the gate is the shared tolerance table's fp16 row (optimizer/tolerances.py says why)
register_precision(Precision("fp16", _fp16, tolerance_for("fp16").min_cosine,
                             "weights and compute in fp16 (LayerNorm/Softmax and graph I/O stay fp32)"))


def _int8(mode: str):
    def convert(proto, calib):
        from ..quant.config import QuantConfig
        from ..quant.quantize import quantize_onnx
        # 7-bit weights: ONNX Runtime's u8 x s8 kernels saturate with full-range weights on CPUs
        # without VNNI (benchmarks/results/quant.md); the Q/DQ placement is the same either way
        cfg = QuantConfig(mode=mode, calibrator="max", calib_images=len(calib.images), reduce_range=True)
        out, report = quantize_onnx(proto, calib.images.detach().cpu().float().numpy(), cfg)
        return out, report.to_dict()
    return convert


# int8: static Q/DQ (per-channel weights, per-tensor activations calibrated with the max calibrator on
# the chain's images) -- the graph TensorRT builds INT8 engines from; int8_dynamic: activations
# quantized per batch (ONNX Runtime CPU's fastest form). `vitopt quantize` has every calibrator and
# the sensitivity fallback.
register_precision(Precision("int8", _int8("static"), tolerance_for("int8").min_cosine,
                             "static INT8 Q/DQ calibrated on the parity images (TensorRT, ONNX Runtime)",
                             own_accuracy=True))
register_precision(Precision("int8_dynamic", _int8("dynamic"), tolerance_for("int8").min_cosine,
                             "INT8 weights, activations quantized per batch (ONNX Runtime CPU)", own_accuracy=True))

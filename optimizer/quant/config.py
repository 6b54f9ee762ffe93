"""QuantConfig: what ``quantize_onnx`` does, validated on construction; INT8 thresholds in one table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

from ..errors import VitoptError

CALIBRATORS = ("max", "percentile", "entropy", "mse")
MODES = ("static", "dynamic")
DTYPES = ("int8", "fp8")
OP_TYPES = ("MatMul", "Gemm", "Conv")

# Fewest calibration images per calibrator. max needs any; histogram calibrators read the tail of the
# distribution, and with fewer images one image's outliers decide the clip.
MIN_CALIB_IMAGES = {"max": 1, "percentile": 16, "entropy": 16, "mse": 16}

# Per-channel Q/DQ (DequantizeLinear's ``axis``) exists from opset 13; fp8 Q/DQ from opset 19.
MIN_OPSET = {"int8": 13, "fp8": 19}

# The INT8 thresholds, in one place (until optimizer/tolerances.py holds them):
#   fake_quant_atol_rel: Q/DQ graph in ONNX Runtime vs the same scales applied in PyTorch
#     (torch.fake_quantize_*), as a fraction of the reference's max |logit|; rounding ties may flip one
#     quantization step of a few activations, nothing more.
#   fp32_min_agreement / fp32_min_cosine: what an INT8 graph must keep vs FP32 before it is reported
#     as parity-passing (the target is >= 0.99 agreement on DeiT-Tiny).
INT8_TOLERANCES = {"fake_quant_atol_rel": 2e-2, "fake_quant_min_cosine": 0.9995,
                   "fp32_min_agreement": 0.99, "fp32_min_cosine": 0.98}


@dataclass(frozen=True)
class QuantConfig:
    """Post-training quantization of an ONNX graph.

    Args:
        calibrator: how static activation ranges are chosen: max | percentile | entropy | mse.
        percentile: the percentile of |x| the ``percentile`` calibrator clips at.
        mode: static (calibrated Q/DQ, for TensorRT and ORT) | dynamic (ORT CPU: activations
            quantized per batch with DynamicQuantizeLinear + MatMulInteger; MatMul/Gemm only).
        dtype: int8 (symmetric, zero point 0) | fp8 (float8e4m3fn Q/DQ, for builders that take it).
        calib_images: how many calibration images are used (the first ones given).
        calib_batch: images per ONNX Runtime calibration pass.
        bins: histogram bins per tensor (fixed memory).
        min_agreement: top-1 agreement with FP32 on the held-out images below which the layer whose
            quantization costs the most goes back to FP32, repeatedly; 0 disables the fallback.
        max_fallback: most layers the fallback may return to FP32.
        rank_images: the fallback ranks layers (each quantized alone: one evaluation per layer) on the
            first this-many held-out images, then re-measures on all of them after each layer it returns;
            None ranks on all. Ranking by mean cosine needs fewer images than judging a 99 % agreement.
        reduce_range: int8 weights in [-63, 63] instead of [-127, 127]. ONNX Runtime's int8 kernels on
            x86 CPUs without VNNI (AVX2) add pairs of u8 x s8 products in int16, which saturates with
            full-range weights (measured: a one-layer output off by 0.6 where unfused Q/DQ is exact);
            7-bit weights cannot saturate. TensorRT does not need it.
        op_types: node types whose weight and activation inputs are quantized.
        exclude: node names kept in FP32.
    Raises ValueError naming the bad field.
    Example: ``QuantConfig(calibrator="entropy", min_agreement=0.99)``
    """
    calibrator: str = "max"         # measured best of the four on DeiT-Tiny (benchmarks/results/quant.md)
    percentile: float = 99.99
    mode: str = "static"
    dtype: str = "int8"
    calib_images: int = 128
    calib_batch: int = 16
    bins: int = 2048
    min_agreement: float = 0.0
    max_fallback: int = 8
    rank_images: Optional[int] = None
    reduce_range: bool = False
    op_types: Tuple[str, ...] = OP_TYPES
    exclude: Tuple[str, ...] = field(default_factory=tuple)
    version: int = 1

    def __post_init__(self):
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"calibrator must be one of {', '.join(CALIBRATORS)}, got {self.calibrator!r}")
        if not 50.0 < float(self.percentile) < 100.0:
            raise ValueError(f"percentile must be in (50, 100), got {self.percentile}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.reduce_range and self.dtype != "int8":
            raise ValueError("reduce_range applies to int8 weights only")
        if self.mode == "dynamic" and self.dtype != "int8":
            raise ValueError("dynamic mode quantizes activations to uint8 per batch: use dtype='int8'")
        for name in ("calib_images", "calib_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.bins < 128 or self.bins % 2:
            raise ValueError(f"bins must be an even number >= 128, got {self.bins}")
        if not 0.0 <= float(self.min_agreement) <= 1.0:
            raise ValueError(f"min_agreement is a fraction in [0, 1], got {self.min_agreement}")
        if self.max_fallback < 0:
            raise ValueError(f"max_fallback must be >= 0, got {self.max_fallback}")
        if self.rank_images is not None and (isinstance(self.rank_images, bool) or int(self.rank_images) < 1):
            raise ValueError(f"rank_images must be a positive number of images, got {self.rank_images!r}")
        bad = [t for t in self.op_types if t not in OP_TYPES]
        if bad or not self.op_types:
            raise ValueError(f"op_types must be a non-empty subset of {', '.join(OP_TYPES)}, got {list(self.op_types)}")
        if self.mode == "static" and self.calib_images < MIN_CALIB_IMAGES[self.calibrator]:
            raise ValueError(f"the {self.calibrator} calibrator needs at least {MIN_CALIB_IMAGES[self.calibrator]} "
                             f"calibration images, calib_images is {self.calib_images}")

    @property
    def qmax(self) -> float:
        """Largest activation magnitude of the quantized type."""
        return 127.0 if self.dtype == "int8" else 448.0

    @property
    def weight_qmax(self) -> float:
        """Largest weight magnitude of the quantized type (63 with ``reduce_range``)."""
        return 63.0 if (self.reduce_range and self.dtype == "int8") else self.qmax

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_types"], d["exclude"] = list(self.op_types), list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise VitoptError(f"unknown quantization option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

"""Post-training quantization of ONNX graphs: per-channel INT8 (or FP8) weights, calibrated static
or dynamic activations, Q/DQ placed where TensorRT and ONNX Runtime run 8-bit kernels, and a
sensitivity fallback that returns the costliest layers to FP32.

Chain: ``onnx_from_torch -> cleanup_graph -> quantize_onnx -> save_onnx`` (``int8_onnx_from_model``).
Heavy imports (onnx, onnxruntime, torch) happen inside the functions.
"""
from .config import INT8_TOLERANCES, QuantConfig

__all__ = ["QuantConfig", "INT8_TOLERANCES", "quantize_onnx", "QuantReport", "int8_onnx_from_model"]


def __getattr__(name):
    if name in ("quantize_onnx", "QuantReport"):
        from . import quantize
        return getattr(quantize, name)
    if name == "int8_onnx_from_model":
        from .chain import int8_onnx_from_model
        return int8_onnx_from_model
    raise AttributeError(name)

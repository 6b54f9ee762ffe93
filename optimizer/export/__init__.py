"""PyTorch -> ONNX export with a dynamic batch axis, and parity checks in ONNX Runtime.

These are steps; the chain that composes them (method export form -> export -> graph rules ->
precision -> parity gate -> metadata -> atomic write), called by every entry point, is
``optimizer.deploy``.
"""
from .parity import ParityResult, check_parity, compare_outputs, ort_session
from .torch_to_onnx import (ExportInfo, get_metadata, onnx_from_torch, proto_from_torch, save_onnx,
                            set_metadata)

__all__ = ["ExportInfo", "onnx_from_torch", "proto_from_torch", "save_onnx", "set_metadata", "get_metadata",
           "ParityResult", "check_parity", "compare_outputs", "ort_session"]

"""PyTorch -> ONNX export with a dynamic batch axis, and parity checks in ONNX Runtime.

Build chain (each step usable alone)::

    onnx_from_torch -> optimizer.graph.cleanup_graph -> optimizer.graph.convert_to_fp16
                    -> optimizer.engine.engine_from_onnx -> optimizer.engine.save_engine
"""
from .parity import ParityResult, check_parity, compare_outputs, ort_session
from .torch_to_onnx import ExportInfo, get_metadata, input_shape_of, onnx_from_torch, save_onnx, set_metadata

__all__ = ["ExportInfo", "onnx_from_torch", "save_onnx", "set_metadata", "get_metadata", "input_shape_of",
           "ParityResult", "check_parity", "compare_outputs", "ort_session"]

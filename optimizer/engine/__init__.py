"""TensorRT engine building over ``tensorrt`` or ``tensorrt_rtx`` (one interface).

``engine_from_onnx(path, batch_sizes, fp16) -> BuiltEngine``; ``save_engine(built, path)`` writes
the engine and ``<path>.json`` (builder, version, profile, precision, size, memory, I/O).
"""
from .build import (BuiltEngine, choose_opt, engine_from_onnx, read_sidecar, save_engine, sidecar_path,
                    validate_batches)
from .builders import BUILDERS, INSTALL_HINT, available_builder, import_builder, parse_builder_log, parse_layer_info

__all__ = ["BuiltEngine", "engine_from_onnx", "save_engine", "read_sidecar", "sidecar_path", "available_builder",
           "import_builder", "parse_builder_log", "parse_layer_info", "BUILDERS", "INSTALL_HINT", "choose_opt",
           "validate_batches"]

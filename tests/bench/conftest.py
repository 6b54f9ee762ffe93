"""Reuse the runners' tiny ONNX fixture."""
from tests.runners.conftest import export_tiny_onnx, tiny_onnx  # noqa: F401

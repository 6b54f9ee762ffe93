"""Tiny ONNX models for serving tests, and a skip when the bundled Triton server is not installed."""
from __future__ import annotations

import importlib.util

import pytest

from tests.runners.conftest import export_tiny_onnx, tiny_onnx  # noqa: F401

SKIP_SERVER = ("the Triton server comes with nvidia-pytriton, which is not installed here "
               "(pip install 'vitopt[serve]' to run this test)")


def has_server() -> bool:
    if importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None:
        return False
    from optimizer.serve.server import bundled_server
    try:
        bundled_server()
    except Exception:
        return False
    return True


needs_server = pytest.mark.skipif(not has_server(), reason=SKIP_SERVER)
needs_schema = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                  reason="Triton's model-config schema comes with tritonclient "
                                         "(pip install 'vitopt[serve]')")


@pytest.fixture(scope="session")
def static_onnx(tmp_path_factory):
    """The tiny ViT exported with a fixed batch of 2 (no dynamic axis)."""
    import warnings
    import torch
    from tests.conftest import tiny_vit
    path = tmp_path_factory.mktemp("static") / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_vit(), torch.randn(2, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return str(path)


@pytest.fixture(scope="session")
def other_onnx(tmp_path_factory):
    """A tiny ViT with another class count (a different model interface)."""
    from tests.conftest import tiny_vit
    return export_tiny_onnx(tiny_vit(num_classes=7), tmp_path_factory.mktemp("other") / "other.onnx")

"""A tiny ViT exported to ONNX once per test session (legacy exporter: fast and dependency-free)."""
from __future__ import annotations

import warnings

import pytest

from tests.conftest import tiny_vit


def export_tiny_onnx(model, path) -> str:
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(2, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(model, onnx_path) for a tiny timm ViT with a dynamic batch axis."""
    model = tiny_vit()
    return model, export_tiny_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")

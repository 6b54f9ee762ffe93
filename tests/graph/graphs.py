"""Small hand-built ONNX graphs and exported tiny ViTs for rule tests."""
from __future__ import annotations

import numpy as np


def make_model(nodes, inputs, outputs, initializers=(), opset=18):
    import onnx
    from onnx import helper
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def f32(name, shape):
    from onnx import TensorProto, helper
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name, value):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(value), name)


def exported_tiny(tmp_path, dynamo=True, depth=3, model=None):
    """(model, ModelProto) of a tiny timm ViT exported with the given exporter."""
    import onnx
    from optimizer.export import onnx_from_torch
    from tests.conftest import tiny_vit
    model = tiny_vit(depth=depth) if model is None else model
    path = tmp_path / f"vit_{'dynamo' if dynamo else 'ts'}.onnx"
    onnx_from_torch(model, path, dynamo=dynamo)
    return model, onnx.load(str(path))

"""The INT8 build chain in one function, so the deployment chain can take it over whole."""
from __future__ import annotations

import os
from typing import Optional

from .config import QuantConfig


def fp32_onnx_from_model(model, opset: int = 18):
    """The FP32 graph ``vitopt export`` ships: the deployment chain (``optimizer.deploy``) at its defaults."""
    from ..deploy import DeployOptions, deploy_model
    return deploy_model(model, DeployOptions(opset=opset)).proto


def int8_onnx_from_model(model, calib_inputs, config: QuantConfig = QuantConfig(), eval_inputs=None,
                         path: Optional[str | os.PathLike] = None, opset: int = 18):
    """PyTorch model -> ONNX (``onnx_from_torch``) -> ``cleanup_graph`` -> ``quantize_onnx`` [-> file].

    Returns ``(fp32_proto, quantized_proto, QuantReport)``; with ``path`` the quantized graph is
    also written there atomically. Example:
    ``_, q, rep = int8_onnx_from_model(model, calib, QuantConfig(), eval_inputs=held, path="m.int8.onnx")``
    """
    from ..export import save_onnx
    from .quantize import quantize_onnx
    fp32 = fp32_onnx_from_model(model, opset=opset)
    q, report = quantize_onnx(fp32, calib_inputs, config, eval_inputs=eval_inputs)
    if path is not None:
        save_onnx(q, path)
    return fp32, q, report

"""The INT8 build chain in one function, so the deployment chain can take it over whole."""
from __future__ import annotations

import os
from typing import Optional

from ..fileio import temp_dir
from .config import QuantConfig


def fp32_onnx_from_model(model, opset: int = 18):
    """PyTorch model -> ``onnx_from_torch`` -> ``cleanup_graph``: the FP32 graph ``vitopt export`` ships."""
    import onnx
    from ..export import onnx_from_torch
    from ..graph import cleanup_graph
    with temp_dir("vitopt-int8-") as d:
        fp32_path = os.path.join(d, "fp32.onnx")
        onnx_from_torch(model, fp32_path, opset=opset)
        fp32, _ = cleanup_graph(onnx.load(fp32_path))
    return fp32


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

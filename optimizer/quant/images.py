"""The image size an ONNX graph takes; the image arrays themselves come from ``optimizer.data.arrays``."""
from __future__ import annotations

from typing import Tuple

from ..errors import VitoptError


def onnx_input_shape(proto) -> Tuple[int, int, int]:
    """(C, H, W) of the graph's first input; VitoptError when any of them is not a fixed number."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
    if len(shape) != 3 or any(d <= 0 for d in shape):
        raise VitoptError(f"cannot tell the image size of input {proto.graph.input[0].name!r} "
                          f"(shape {shape}); it needs fixed channel/height/width dimensions")
    return shape


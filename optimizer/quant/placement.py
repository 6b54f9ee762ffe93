"""Where Q/DQ goes: the MatMul/Gemm/Conv nodes with a constant weight, and why others are skipped.

TensorRT fuses Q/DQ on both inputs of MatMul/Gemm/Conv into INT8 kernels, and ONNX Runtime's CPU
graph optimiser turns ``DQ -> MatMul`` into ``MatMulIntegerToFloat`` / ``QLinearMatMul``; LayerNorm,
Softmax and GELU have no INT8 kernel in either and stay FP32 (modelopt's default placement too).
Attention's activation x activation MatMuls are left FP32: neither runtime gains from them on CPU,
and they carry the softmax's dynamic range.

Index arithmetic stays FP32 too: a MatMul whose activation is a boolean mask cast to float (token
merging's running count of kept tokens, ``kept @ triu(ones)``, see methods/merge/matching.py) has a
constant weight but computes integers that are then compared for equality. INT8 scales make them
3.0000002 instead of 3, the equality picks no token, and a merged model's output collapses (measured:
min cosine 0.05 vs FP32 on slim 0.5 with token merging, int8_dynamic, before this rule).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import VitoptError
from .config import MIN_OPSET, QuantConfig

# ops whose output is boolean: a Cast of one to float is a 0/1 mask
BOOLEAN_OPS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Not", "IsNaN",
               "IsInf"}

# ops that mean the graph is already quantized
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv",
             "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
             "QAttention", "QLinearAdd", "QLinearMul", "MatMulNBits"}


@dataclass(frozen=True)
class Target:
    """One quantizable node: its activation input, its weight initializer and the weight's channel axis."""
    node: str
    op_type: str
    activation: str
    weight: str              # the float initializer that is quantized per channel
    axis: int                # output-channel axis of ``weight``
    channels: int
    gathered_by: Optional[str] = None   # a Gather node between the initializer and ``node``

    def to_dict(self) -> dict:
        return asdict(self)


def default_opset(proto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def check_quantizable(proto, config: QuantConfig) -> None:
    """VitoptError when the graph is already quantized or its opset is too old for the Q/DQ needed."""
    import onnx
    ops = sorted({n.op_type for n in proto.graph.node if n.op_type in QUANT_OPS})
    if ops:
        raise VitoptError(f"the model is already quantized ({', '.join(ops)} present): quantize the FP32 export")
    low = [i.name for i in proto.graph.initializer
           if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) >= 2]
    if low:
        raise VitoptError(f"the model is already quantized (8-bit weight {low[0]!r}): quantize the FP32 export")
    need = MIN_OPSET[config.dtype] if config.mode == "static" else 11
    have = default_opset(proto)
    if have < need:
        raise VitoptError(f"opset {have} is too old for per-channel {config.dtype} Q/DQ (needs >= {need}): "
                          f"re-export with --opset {max(need, 17)}")


def _initializers(proto) -> Dict[str, object]:
    return {i.name: i for i in proto.graph.initializer}


def is_mask(name: str, producer: Dict[str, object]) -> bool:
    """True when tensor ``name`` is a boolean comparison cast to a number (a 0/1 mask)."""
    n = producer.get(name)
    if n is None or n.op_type != "Cast" or not n.input:
        return False
    src = producer.get(n.input[0])
    return src is not None and src.op_type in BOOLEAN_OPS


def find_targets(proto, config: QuantConfig) -> Tuple[List[Target], Dict[str, str]]:
    """The nodes to quantize and, for every other node of ``config.op_types``, why it is skipped."""
    import onnx
    inits = _initializers(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    targets, skipped = [], {}
    for i, n in enumerate(proto.graph.node):
        if n.op_type not in config.op_types:
            continue
        name = n.name or f"{n.op_type}_{i}"
        if name in config.exclude:
            skipped[name] = "excluded by the configuration"
            continue
        if n.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("transA", 0):
                skipped[name] = "Gemm with transA=1"
                continue
            w_axis = 0 if attrs.get("transB", 0) else 1
        elif n.op_type == "Conv":
            w_axis = 0
        else:
            w_axis = -1
        if len(n.input) < 2:
            continue
        w_name, gather = n.input[1], None
        if w_name not in inits and w_name in producer and producer[w_name].op_type == "Gather":
            g = producer[w_name]
            if g.input[0] in inits:
                gather, w_name = g.name, g.input[0]
        if w_name not in inits:
            skipped[name] = "activation x activation (no constant weight): kept FP32"
            continue
        if is_mask(n.input[0], producer):
            skipped[name] = "index arithmetic (its activation is a boolean mask): kept FP32, exact"
            continue
        w = inits[w_name]
        if w.data_type != onnx.TensorProto.FLOAT:
            skipped[name] = f"weight {w_name!r} is not float32"
            continue
        dims = list(w.dims)
        if n.op_type == "MatMul" and len(dims) != 2:
            skipped[name] = f"MatMul weight of rank {len(dims)} (per-channel needs a 2-D weight)"
            continue
        axis = w_axis % len(dims)
        if gather is not None:
            # the DQ sits before the Gather, so per-channel scales follow the initializer's own axes;
            # 1-D indices keep the rank, so the output-channel axis is the same axis of the initializer
            idx = inits.get(producer[n.input[1]].input[1])
            if idx is not None and len(idx.dims) != 1:
                skipped[name] = "Gather with multi-dimensional indices before the weight"
                continue
        targets.append(Target(name, n.op_type, n.input[0], w_name, axis, int(dims[axis]), gather))
    return targets, skipped

"""Write the quantized graph: static Q/DQ (int8 or fp8) or dynamic MatMulInteger, from a plan.

Static, per quantized node (TensorRT's and ORT's QDQ form)::

    X ──QuantizeLinear(s_x)──DequantizeLinear(s_x)──┐
    W_int8 ──DequantizeLinear(s_w[c], axis)─────────┴── MatMul / Gemm / Conv

Dynamic (what ONNX Runtime's CPU kernels fuse into DynamicQuantizeMatMul)::

    X ──DynamicQuantizeLinear──(X_u8, s_x, zp_x)──MatMulInteger(W_int8)──Cast──Mul(s_x * s_w[c])
                                                                          ──(+ bias)
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .config import QuantConfig
from .placement import Target


def weight_scales(w: np.ndarray, axis: int, qmax: float = 127.0) -> np.ndarray:
    """Per-output-channel symmetric scales max|w| / qmax along ``axis`` (1 where a channel is all zero)."""
    red = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.max(np.abs(w), axis=red).astype(np.float32)
    return np.where(amax > 0, amax / np.float32(qmax), np.float32(1.0)).astype(np.float32)


def quantize_weight(w: np.ndarray, scales: np.ndarray, axis: int, qmax: float = 127.0) -> np.ndarray:
    """int8 weights round(w / s) (half to even, as QuantizeLinear), clipped to [-qmax, qmax]."""
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.rint(w / scales.reshape(shape)), -qmax, qmax).astype(np.int8)


def activation_scale(amax: float, qmax: float = 127.0) -> np.float32:
    return np.float32(amax / qmax) if amax > 0 else np.float32(1.0)


def _unique(name: str, taken: set) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def build_quantized(proto, targets: List[Target], act_amax: Dict[str, float], config: QuantConfig):
    """A copy of ``proto`` with ``targets`` quantized (static Q/DQ, or dynamic for ``config.mode``).

    ``act_amax``: calibrated |x| range per activation tensor (static mode only).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    taken = {o for n in g.node for o in n.output} | {i.name for i in g.initializer} | {i.name for i in g.input}
    inits = {i.name: i for i in g.initializer}
    by_node = {t.node: t for t in targets}
    node_names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node)]
    gather_of = {t.gathered_by: t for t in targets if t.gathered_by}
    fp8 = config.dtype == "fp8"
    qtype = TensorProto.FLOAT8E4M3FN if fp8 else TensorProto.INT8
    new_inits: list = []
    act_out: Dict[str, str] = {}    # activation tensor -> its dequantized name (shared by consumers)
    w_out: Dict[str, str] = {}      # weight initializer -> its dequantized name
    w_quant: Dict[str, tuple] = {}  # weight initializer -> (int8 name, scale name, zp name, scales)
    used_float = set()              # float weights still read by an unquantized node

    def zero_point(name_hint, n):
        zp_name = _unique(name_hint, taken)
        if fp8:
            new_inits.append(helper.make_tensor(zp_name, qtype, [n] if n else [], [0.0] * max(n, 1)))
        else:
            arr = np.zeros(n if n else (), dtype=np.int8)
            new_inits.append(numpy_helper.from_array(arr, zp_name))
        return zp_name

    def weight_dq(t: Target, nodes: list) -> str:
        if t.weight in w_out:
            return w_out[t.weight]
        w = numpy_helper.to_array(inits[t.weight]).astype(np.float32)
        s = weight_scales(w, t.axis, config.weight_qmax)
        s_name = _unique(t.weight + "_scale", taken)
        new_inits.append(numpy_helper.from_array(s, s_name))
        zp = zero_point(t.weight + "_zero_point", t.channels)
        dq = _unique(t.weight + "_dequantized", taken)
        if fp8:
            # fp8 rounding is left to QuantizeLinear on the constant (builders fold it)
            q = _unique(t.weight + "_quantized", taken)
            nodes.append(helper.make_node("QuantizeLinear", [t.weight, s_name, zp], [q], name=q, axis=t.axis))
            used_float.add(t.weight)
        else:
            q = _unique(t.weight + "_int8", taken)
            new_inits.append(numpy_helper.from_array(quantize_weight(w, s, t.axis, config.weight_qmax), q))
        nodes.append(helper.make_node("DequantizeLinear", [q, s_name, zp], [dq], name=dq, axis=t.axis))
        w_out[t.weight] = dq
        w_quant[t.weight] = (q, s_name, zp, s)
        return dq

    def act_qdq(x: str, nodes: list) -> str:
        if x in act_out:
            return act_out[x]
        s_name = _unique(x + "_scale", taken)
        new_inits.append(numpy_helper.from_array(activation_scale(act_amax[x], config.qmax), s_name))
        zp = zero_point(x + "_zero_point", 0)
        q, dq = _unique(x + "_quantized", taken), _unique(x + "_dequantized", taken)
        nodes.append(helper.make_node("QuantizeLinear", [x, s_name, zp], [q], name=q))
        nodes.append(helper.make_node("DequantizeLinear", [q, s_name, zp], [dq], name=dq))
        act_out[x] = dq
        return dq

    dyn_act: Dict[str, tuple] = {}

    def dynamic(n, t: Target, nodes: list) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = numpy_helper.to_array(inits[t.weight]).astype(np.float32)
        if n.op_type == "Gemm" and attrs.get("transB", 0):
            w = w.T
        axis = 1
        s = weight_scales(w, axis, config.weight_qmax)
        wq = _unique(t.weight + "_int8", taken)
        new_inits.append(numpy_helper.from_array(quantize_weight(w, s, axis, config.weight_qmax), wq))
        s_name = _unique(t.weight + "_scale", taken)
        new_inits.append(numpy_helper.from_array(s, s_name))
        zp = zero_point(t.weight + "_zero_point", t.channels)
        if t.activation not in dyn_act:
            names = tuple(_unique(t.activation + sfx, taken) for sfx in ("_uint8", "_scale", "_zero_point"))
            nodes.append(helper.make_node("DynamicQuantizeLinear", [t.activation], list(names), name=names[0]))
            dyn_act[t.activation] = names
        xq, xs, xzp = dyn_act[t.activation]
        base = t.node
        y32, yf, sc = (_unique(base + sfx, taken) for sfx in ("_int32", "_float", "_scales"))
        nodes.append(helper.make_node("MatMulInteger", [xq, wq, xzp, zp], [y32], name=y32))
        nodes.append(helper.make_node("Cast", [y32], [yf], name=yf, to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [xs, s_name], [sc], name=sc))
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
            ym = _unique(base + "_unbiased", taken)
            nodes.append(helper.make_node("Mul", [yf, sc], [ym], name=ym))
            nodes.append(helper.make_node("Add", [ym, n.input[2]], [n.output[0]], name=base + "_bias"))
        else:
            nodes.append(helper.make_node("Mul", [yf, sc], [n.output[0]], name=base + "_rescale"))

    nodes = []
    for name, n in zip(node_names, g.node):
        t = by_node.get(name)
        if config.mode == "dynamic" and t is not None:
            dynamic(n, t, nodes)
            continue
        if n.name in gather_of:
            gt = gather_of[n.name]
            if gt.node in by_node:
                n.input[0] = weight_dq(gt, nodes)
        if t is not None:
            n.input[0] = act_qdq(t.activation, nodes)
            if not t.gathered_by:
                n.input[1] = weight_dq(t, nodes)
        else:
            used_float.update(i for i in n.input if i in inits)
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    quantized_weights = set(w_quant) | ({t.weight for t in targets} if config.mode == "dynamic" else set())
    keep = [i for i in g.initializer if i.name not in quantized_weights or i.name in used_float]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    return out

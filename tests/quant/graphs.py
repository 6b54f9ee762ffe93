"""Small hand-built ONNX graphs with known weights, and numpy fake-quant references for them."""
import numpy as np


def fq_tensor(x, amax):
    """Per-tensor symmetric int8 fake quantization as ONNX Q/DQ does it (saturating to [-128, 127])."""
    s = np.float32(amax / 127)
    return (np.clip(np.rint(x / s), -128, 127) * s).astype(np.float32)


def fq_channels(w, axis):
    """Per-output-channel symmetric int8 weights: scale max|w| / 127, values in [-127, 127]."""
    red = tuple(d for d in range(w.ndim) if d != axis)
    s = (np.max(np.abs(w), axis=red) / np.float32(127)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    s = s.reshape(shape)
    return (np.clip(np.rint(w / s), -127, 127) * s).astype(np.float32)


def mlp_graph(weights, opset=18, gemm_last=False, gather=None):
    """x (N, 1, 1, D) -> MatMul W0 -> [Relu -> MatMul Wi]... -> logits; node names mm0, mm1, ...

    ``gemm_last``: the last layer is a Gemm with transB=1 on a 2-D input (weight stored (out, in)).
    ``gather``: (layer, indices): that layer's weight is Gather(W, indices, axis=1), as gates exports.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    d_in = weights[0].shape[0]
    cur = "x"
    for i, w in enumerate(weights):
        last = i == len(weights) - 1
        wname = f"w{i}"
        if last and gemm_last:
            flat = f"flat{i}"
            nodes.append(helper.make_node("Flatten", [cur], [flat], name=f"flatten{i}", axis=1))
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), wname))
            nodes.append(helper.make_node("Gemm", [flat, wname], ["logits"], name=f"mm{i}", transB=1))
            cur = "logits"
            break
        inits.append(numpy_helper.from_array(w, wname))
        wsrc = wname
        if gather is not None and gather[0] == i:
            inits.append(numpy_helper.from_array(np.asarray(gather[1], dtype=np.int64), f"idx{i}"))
            wsrc = f"wg{i}"
            nodes.append(helper.make_node("Gather", [wname, f"idx{i}"], [wsrc], name=f"gather{i}", axis=1))
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [cur, wsrc], [out], name=f"mm{i}"))
        cur = out
        if not last:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    out_shape = ["n", 10] if gemm_last else ["n", 1, 1, None]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 1, d_in])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def run(proto, x, fused=False):
    """Outputs in ONNX Runtime. Unfused (the default) runs Q/DQ as written, which is what a numpy
    reference can match exactly; ``fused=True`` lets ORT turn it into its int8 kernels."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(x, dtype=np.float32)})[0]

"""INT8 parity: the Q/DQ graph in ONNX Runtime against the same scales applied in PyTorch
(``torch.fake_quantize_*`` on the matching Linear/Conv inputs and weights: tight), and against FP32
(top-1 agreement, cosine: loose, thresholds in ``INT8_TOLERANCES``)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator

import numpy as np

from ..errors import VitoptError
from .config import INT8_TOLERANCES
from .qdq import activation_scale, weight_scales


def _module_for_weights(model, fp32_proto, report) -> Dict[str, object]:
    """Quantized node -> the torch Linear/Conv2d whose weight the node's initializer holds (transposed
    for MatMul): the exporter copies weights, so equal values identify the module."""
    import torch
    from onnx import numpy_helper
    inits = {i.name: i for i in fp32_proto.graph.initializer}
    mods = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    found = {}
    for layer in report.layers:
        if not layer.quantized:
            continue
        if layer.gathered_by:
            raise VitoptError(f"{layer.node}: a gathered weight has no single PyTorch module to fake-quantize")
        w = numpy_helper.to_array(inits[layer.weight])
        cands = [w.T, w] if w.ndim == 2 else [w]
        hit = None
        for m in mods:
            mw = m.weight.detach().cpu().numpy()
            if any(c.shape == mw.shape and np.array_equal(c, mw) for c in cands):
                hit = m
                break
        if hit is None:
            raise VitoptError(f"{layer.node}: no PyTorch Linear/Conv2d holds weight {layer.weight!r}")
        found[layer.node] = hit
    return found


@contextlib.contextmanager
def fake_quantized(model, fp32_proto, report) -> Iterator[object]:
    """``model`` with every layer ``report`` quantized fake-quantized with the same scales (restored after).

    Inputs: per tensor, symmetric, [-128, 127] (ONNX QuantizeLinear saturation); weights: per output
    channel, max|w| / 127, [-127, 127]. Static int8 reports only.
    """
    import torch
    if report.config["mode"] != "static" or report.config["dtype"] != "int8":
        raise VitoptError("fake-quantized parity is defined for static int8 graphs")
    mods = _module_for_weights(model, fp32_proto, report)
    wq_max = 63 if report.config.get("reduce_range") else 127
    saved, hooks = [], []
    try:
        for layer in report.layers:
            if not layer.quantized:
                continue
            m = mods[layer.node]
            w = m.weight.detach()
            s = torch.from_numpy(weight_scales(w.cpu().numpy(), 0, wq_max))
            wq = torch.fake_quantize_per_channel_affine(w.float(), s, torch.zeros(len(s), dtype=torch.int32),
                                                        0, -wq_max, wq_max)
            saved.append((m, w.clone()))
            with torch.no_grad():
                m.weight.copy_(wq)
            sx = float(activation_scale(layer.activation_amax))

            def pre(mod, args, sx=sx):
                return (torch.fake_quantize_per_tensor_affine(args[0], sx, 0, -128, 127),) + tuple(args[1:])
            hooks.append(m.register_forward_pre_hook(pre))
        yield model
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for m, w in saved:
                m.weight.copy_(w)


@dataclass(frozen=True)
class Int8Parity:
    fake_quant: object     # ParityResult: ORT Q/DQ graph vs PyTorch fake-quant
    fp32: object           # ParityResult: ORT Q/DQ graph vs PyTorch FP32
    passed: bool

    def to_dict(self) -> dict:
        return {"fake_quant": self.fake_quant.to_dict(), "fp32": self.fp32.to_dict(), "passed": self.passed}

    def __str__(self) -> str:
        return f"vs fake-quant PyTorch: {self.fake_quant}\nvs FP32 PyTorch: {self.fp32}"


def check_int8_parity(model, fp32_proto, qproto, report, inputs) -> Int8Parity:
    """Run ``qproto`` in ONNX Runtime and ``model`` in PyTorch (FP32 and fake-quantized) on ``inputs``.

    Passes when the fake-quant difference is within ``fake_quant_atol_rel`` of the largest |logit| with
    cosine >= ``fake_quant_min_cosine``, and FP32 agreement/cosine meet ``fp32_min_*``.
    Example: ``print(check_int8_parity(model, fp32, q, rep, torch.randn(8, 3, 224, 224)))``
    """
    import torch
    from ..export import compare_outputs
    from .calibrate import ort_session_from_proto, run_batches
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    model = model.eval()
    with torch.no_grad():
        ref = model(x).float().numpy()
        with fake_quantized(model, fp32_proto, report):
            fq = model(x).float().numpy()
    sess = ort_session_from_proto(qproto)
    out = np.concatenate([o[0] for o in run_batches(sess, x.numpy(), 16)], axis=0)
    tol = INT8_TOLERANCES
    fake = compare_outputs(fq, out, atol=tol["fake_quant_atol_rel"] * float(np.max(np.abs(fq))))
    fp32 = compare_outputs(ref, out, atol=float("inf"))
    ok = (fake.passed and fake.cosine >= tol["fake_quant_min_cosine"]
          and fp32.top1_agreement >= tol["fp32_min_agreement"] and fp32.cosine >= tol["fp32_min_cosine"])
    return Int8Parity(fake, fp32, bool(ok))

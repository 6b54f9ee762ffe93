"""``quantize_onnx``: calibrate, place Q/DQ, check agreement with FP32, fall back layer by layer."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..errors import VitoptError
from .calibrate import calibrate, ort_session_from_proto, run_batches
from .config import MIN_CALIB_IMAGES, QuantConfig
from .placement import Target, check_quantizable, find_targets
from .qdq import build_quantized


@dataclass
class LayerReport:
    node: str
    op_type: str
    quantized: bool
    reason: str = ""                      # why a layer stays FP32
    activation: str = ""
    activation_amax: Optional[float] = None
    weight: str = ""
    weight_axis: Optional[int] = None
    channels: Optional[int] = None
    gathered_by: Optional[str] = None
    # with only this layer quantized (measured when the fallback runs): its cost in agreement and cosine
    alone_agreement: Optional[float] = None
    alone_cosine: Optional[float] = None


@dataclass
class QuantReport:
    """What ``quantize_onnx`` did: per layer, the calibration, the agreement with FP32, the fallback."""
    config: dict
    layers: List[LayerReport]
    calib_images: int
    eval_images: int = 0
    rank_images: Optional[int] = None       # held-out images the fallback ranked layers on
    agreement: Optional[float] = None       # top-1 agreement with FP32 on the held-out images
    min_cosine: Optional[float] = None
    agreement_before_fallback: Optional[float] = None
    fallback: List[dict] = field(default_factory=list)  # [{node, agreement_after}] in order
    seconds: float = 0.0

    @property
    def quantized(self) -> List[str]:
        return [l.node for l in self.layers if l.quantized]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantized_layers"] = len(self.quantized)
        return d

    def __str__(self) -> str:
        s = (f"{len(self.quantized)}/{len(self.layers)} layers quantized ({self.config['mode']} "
             f"{self.config['dtype']}, {self.config['calibrator'] if self.config['mode'] == 'static' else 'per batch'}"
             f", {self.calib_images} calibration images)")
        if self.agreement is not None:
            s += (f"; top-1 agreement with FP32 {100 * self.agreement:.1f} %, min cosine {self.min_cosine:.4f} "
                  f"on {self.eval_images} held-out images")
        if self.fallback:
            s += f"; back to FP32: {', '.join(f['node'] for f in self.fallback)}"
        return s


def _outputs(proto, images: np.ndarray, batch: int) -> np.ndarray:
    sess = ort_session_from_proto(proto)
    return np.concatenate([o[0] for o in run_batches(sess, images, batch)], axis=0)


def _agreement(ref: np.ndarray, out: np.ndarray):
    from ..export import compare_outputs
    r = compare_outputs(ref, out, atol=np.inf)
    return r.top1_agreement, r.cosine


def _mean_cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return float(np.mean(np.sum(a * b, axis=1) / den))


def _as_images(x, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4:
        raise VitoptError(f"{what} must be an (N, C, H, W) array of images, got shape {arr.shape}")
    return arr


def quantize_onnx(proto, calib_inputs, config: QuantConfig = QuantConfig(), eval_inputs=None):
    """Quantize an FP32 ONNX graph (MatMul/Gemm/Conv weights per channel, activations per tensor).

    Args:
        proto: ``onnx.ModelProto`` with one image input (not modified).
        calib_inputs: (N, C, H, W) float images for the activation ranges (static mode); the first
            ``config.calib_images`` are used.
        config: QuantConfig.
        eval_inputs: held-out (N, C, H, W) images: agreement with FP32 is measured on them, and the
            sensitivity fallback (``config.min_agreement``) needs them.
    Returns: ``(quantized_proto, QuantReport)``.
    Raises: VitoptError for a graph already quantized, an opset too old, too few calibration images,
        a fallback without held-out images, or nothing to quantize.
    Example: ``q, rep = quantize_onnx(onnx.load("m.onnx"), calib, QuantConfig(calibrator="entropy"))``
    """
    t0 = time.perf_counter()
    check_quantizable(proto, config)
    images = _as_images(calib_inputs, "calibration inputs")[: config.calib_images]
    need = MIN_CALIB_IMAGES[config.calibrator] if config.mode == "static" else 0
    if len(images) < need:
        raise VitoptError(f"the {config.calibrator} calibrator needs at least {need} calibration images, "
                          f"got {len(images)}")
    if config.min_agreement > 0 and eval_inputs is None:
        raise VitoptError("--min-agreement needs held-out images to measure agreement on")
    targets, skipped = find_targets(proto, config)
    layers = {n: LayerReport(n, next(x.op_type for x in proto.graph.node if x.name == n), False, why)
              for n, why in skipped.items()}
    if config.mode == "dynamic":
        keep = []
        for t in targets:
            if t.op_type == "Conv" or t.gathered_by:
                why = ("dynamic mode: Conv kept FP32 (ORT's ConvInteger is slower than FP32 Conv on CPU)"
                       if t.op_type == "Conv" else "dynamic mode: gathered weight kept FP32 (MatMulInteger "
                       "needs per-channel zero points of the gathered width)")
                layers[t.node] = LayerReport(t.node, t.op_type, False, why)
            else:
                keep.append(t)
        targets = keep
    if not targets:
        raise VitoptError("nothing to quantize: no MatMul/Gemm/Conv with a constant float weight "
                          f"(skipped: {'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3])})")
    amax: Dict[str, float] = {}
    if config.mode == "static":
        amax = calibrate(proto, [t.activation for t in targets], images, config)
    for t in targets:
        layers[t.node] = LayerReport(t.node, t.op_type, True, "", t.activation, amax.get(t.activation),
                                     t.weight, t.axis, t.channels, t.gathered_by)
    order = [n.name for n in proto.graph.node if n.name in layers]
    report = QuantReport(config.to_dict(), [layers[n] for n in order], int(len(images)))
    active: List[Target] = list(targets)
    qproto = build_quantized(proto, active, amax, config)
    if eval_inputs is not None:
        ev = _as_images(eval_inputs, "held-out inputs")
        ref = _outputs(proto, ev, config.calib_batch)
        out = _outputs(qproto, ev, config.calib_batch)
        agree, cos = _agreement(ref, out)
        report.eval_images = int(len(ev))
        report.agreement_before_fallback = agree
        if agree < config.min_agreement:
            # rank once: each layer quantized alone, its cost = lost agreement, then lost mean cosine;
            # then return layers to FP32 most costly first, re-measuring after each
            costs = []
            k = len(ev) if config.rank_images is None else min(config.rank_images, len(ev))
            report.rank_images = int(k)
            for t in active:
                o = _outputs(build_quantized(proto, [t], amax, config), ev[:k], config.calib_batch)
                a, _ = _agreement(ref[:k], o)
                c = _mean_cosine(ref[:k], o)
                layers[t.node].alone_agreement, layers[t.node].alone_cosine = a, c
                costs.append((a, c, t))
            costs.sort(key=lambda x: (x[0], x[1]))
            for _, _, worst in costs:
                if agree >= config.min_agreement or len(report.fallback) >= config.max_fallback:
                    break
                active.remove(worst)
                out = _outputs(build_quantized(proto, active, amax, config), ev, config.calib_batch)
                a, _ = _agreement(ref, out)
                layers[worst.node].quantized = False
                layers[worst.node].reason = (f"sensitivity fallback: agreement {100 * agree:.1f} % -> "
                                             f"{100 * a:.1f} % with this layer back in FP32")
                report.fallback.append({"node": worst.node, "agreement_before": agree, "agreement_after": a})
                agree = a
        if report.fallback:
            qproto = build_quantized(proto, active, amax, config)
            _, cos = _agreement(ref, out)
        report.agreement, report.min_cosine = agree, cos
    from ..export import set_metadata
    set_metadata(qproto, {"vitopt.precision": config.dtype, "vitopt.quant.mode": config.mode,
                          "vitopt.quant.calibrator": config.calibrator if config.mode == "static" else None,
                          "vitopt.quant.calib_images": len(images),
                          "vitopt.quant.layers": f"{len(report.quantized)}/{len(report.layers)}"})
    report.seconds = round(time.perf_counter() - t0, 3)
    return qproto, report

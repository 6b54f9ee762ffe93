"""Static activation ranges: expose the Q/DQ-candidate tensors as extra graph outputs and stream
every calibration batch through ONNX Runtime once, feeding one histogram per tensor."""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional

import numpy as np

from ..fileio import temp_dir
from ..errors import VitoptError
from .config import QuantConfig
from .histogram import StreamingHistogram, amax_entropy, amax_max, amax_mse, amax_percentile


def ort_session_from_proto(proto, threads: Optional[int] = None):
    """An ONNX Runtime CPU session (``optimizer.export.ort_session``) for an in-memory model."""
    import onnx
    from ..export import ort_session
    with temp_dir("vitopt-quant-") as d:
        path = os.path.join(d, "model.onnx")
        onnx.save_model(proto, path)
        return ort_session(path, threads=threads)


def run_batches(session, inputs: np.ndarray, batch: int, outputs: Optional[List[str]] = None) -> Iterable[list]:
    name = session.get_inputs()[0].name
    for i in range(0, len(inputs), batch):
        yield session.run(outputs, {name: np.ascontiguousarray(inputs[i:i + batch], dtype=np.float32)})


def with_outputs(proto, names: List[str]):
    """A copy of ``proto`` whose graph also outputs ``names`` (float tensors of any shape)."""
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    have = {o.name for o in out.graph.output}
    for n in names:
        if n not in have:
            out.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return out


def amax_from_histogram(h: StreamingHistogram, config: QuantConfig) -> float:
    if config.calibrator == "max":
        return amax_max(h)
    if config.calibrator == "percentile":
        return amax_percentile(h, config.percentile)
    if config.calibrator == "entropy":
        return amax_entropy(h, levels=int(config.qmax) + 1)
    return amax_mse(h, qmax=int(config.qmax))


def calibrate(proto, tensors: List[str], images: np.ndarray, config: QuantConfig,
              threads: Optional[int] = None) -> Dict[str, float]:
    """amax per tensor in ``tensors`` from ``images`` (N, C, H, W), one ORT pass per ``config.calib_batch``."""
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    sess = ort_session_from_proto(with_outputs(proto, tensors), threads=threads)
    hists = {t: StreamingHistogram(config.bins) for t in tensors}
    for outs in run_batches(sess, images, config.calib_batch, tensors):
        for t, a in zip(tensors, outs):
            hists[t].update(a)
    amax = {t: amax_from_histogram(h, config) for t, h in hists.items()}
    dead = [t for t, a in amax.items() if a == 0.0]
    if len(dead) == len(amax):
        raise VitoptError("every calibrated activation is zero: the calibration images do not reach the model")
    return amax

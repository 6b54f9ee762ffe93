"""Numerical parity between a PyTorch model and its ONNX export, run in ONNX Runtime."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import VitoptError


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    cosine: float          # worst per-sample cosine similarity of the output rows
    passed: bool
    atol: float
    batch: int
    top1_agreement: float  # fraction of samples whose argmax agrees

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"max |diff| {self.max_abs_diff:.3g} (atol {self.atol:g}), min cosine {self.cosine:.6f}, "
                f"top-1 agreement {100 * self.top1_agreement:.1f} % on {self.batch} inputs: "
                + ("PASS" if self.passed else "FAIL"))


def ort_session(onnx_path, threads: Optional[int] = None, allow_spinning: bool = False):
    """CPU ONNX Runtime session with explicit threads and (by default) no spin-waiting.

    Spinning threads burn the CPU between runs and distort timings on shared machines.
    """
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads is None:
        import torch
        threads = torch.get_num_threads()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
    so.log_severity_level = 3
    if not os.path.isfile(onnx_path):
        raise VitoptError(f"ONNX file not found: {onnx_path}")
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for invalid graphs
        msg = str(e).strip().splitlines()
        raise VitoptError(f"ONNX Runtime cannot load {onnx_path}: {msg[0] if msg else type(e).__name__}") from None


def compare_outputs(ref, out, atol: float) -> ParityResult:
    """Max abs diff, worst per-sample cosine and argmax agreement of two (N, ...) arrays."""
    import numpy as np
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise VitoptError(f"output shapes differ: PyTorch {ref.shape} vs ONNX {out.shape}")
    n = ref.shape[0]
    a, b = ref.reshape(n, -1), out.reshape(n, -1)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, np.sum(a * b, axis=1) / np.maximum(den, 1e-300), 1.0)
    agree = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))) if a.size else 1.0
    finite = bool(np.all(np.isfinite(b)))
    return ParityResult(diff if finite else float("inf"), float(np.min(cos)) if finite else float("nan"),
                        finite and diff <= atol, float(atol), int(n), agree)


def check_parity(model, onnx_path, inputs, atol: float = 1e-4, raise_on_fail: bool = True,
                 threads: Optional[int] = None) -> ParityResult:
    """Run ``model`` (PyTorch, eval mode) and ``onnx_path`` (ONNX Runtime CPU) on ``inputs``; compare.

    Args:
        model: the module that was exported.
        onnx_path: the exported file (single graph input, first output compared).
        inputs: a float tensor (N, C, H, W); the same values go to both runtimes.
        atol: largest allowed absolute difference of any output element.
        raise_on_fail: raise VitoptError past tolerance (default) instead of returning passed=False.
        threads: ORT intra-op threads (default: torch's thread count).

    Example: ``check_parity(model, "m.onnx", torch.randn(4, 3, 224, 224))``
    """
    import numpy as np
    import torch
    if atol <= 0:
        raise VitoptError(f"atol must be positive, got {atol}")
    sess = ort_session(onnx_path, threads=threads)
    x = inputs.detach().float().cpu().contiguous()
    feed_name = sess.get_inputs()[0].name
    with torch.no_grad():
        p = next(iter(model.parameters()), None)
        ref = model.eval()(x.to(p.device) if p is not None else x)
    ref = ref.detach().float().cpu().numpy()
    out = sess.run(None, {feed_name: x.numpy().astype(np.float32)})[0]
    res = compare_outputs(ref, out, atol)
    if not res.passed and raise_on_fail:
        raise VitoptError(f"ONNX output differs from PyTorch: {res} ({onnx_path})")
    return res

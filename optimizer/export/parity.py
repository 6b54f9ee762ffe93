"""Numerical parity between a PyTorch model and its ONNX export, run in ONNX Runtime.

Thin on purpose: sessions come from ``optimizer.runners.ort_runner.ort_session`` (through
``OrtRunner``) and the figures from ``optimizer.runners.compare.compare_arrays``; this module
only shapes them into the ``ParityResult`` the export chain records.
"""
from __future__ import annotations

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


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def ort_session(onnx_path, threads: Optional[int] = None, allow_spinning: bool = False):
    """CPU ONNX Runtime session (``ort_runner.ort_session``) with torch's thread count by default."""
    from ..runners.ort_runner import ort_session as _session
    return _session(onnx_path, threads=threads or _torch_threads(), allow_spinning=allow_spinning)


def compare_outputs(ref, out, atol: float) -> ParityResult:
    """Max abs diff, worst per-sample cosine and argmax agreement of two (N, ...) arrays.

    ``passed``: every value finite and max |diff| <= ``atol`` (the export gate's lossless check).
    """
    from ..runners.compare import compare_arrays
    from ..tolerances import Tolerance
    try:
        r = compare_arrays(ref, out, Tolerance("parity", atol=atol, rtol=0.0, check_error_stat="max"))
    except VitoptError as e:
        raise VitoptError(f"output shapes differ: PyTorch vs ONNX {e}") from None
    finite = r["finite"]
    return ParityResult(r["max_abs"] if finite else float("inf"), r["min_sample_cosine"], r["passed"],
                        float(atol), int(r["shape"][0]) if r["shape"] else 1,
                        r["top1_agreement"] if r["top1_agreement"] is not None else 1.0)


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
    from ..runners.ort_runner import OrtRunner
    if atol <= 0:
        raise VitoptError(f"atol must be positive, got {atol}")
    x = inputs.detach().float().cpu().contiguous()
    with OrtRunner(onnx_path, threads=threads or _torch_threads()) as runner:
        out = runner.infer({runner.input_name: x.numpy().astype(np.float32)})[runner.output_names[0]]
    with torch.no_grad():
        p = next(iter(model.parameters()), None)
        ref = model.eval()(x.to(p.device) if p is not None else x)
    ref = ref.detach().float().cpu().numpy()
    res = compare_outputs(ref, out, atol)
    if not res.passed and raise_on_fail:
        raise VitoptError(f"ONNX output differs from PyTorch: {res} ({onnx_path})")
    return res

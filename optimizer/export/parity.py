"""Numerical parity between a PyTorch model and its ONNX export, run in ONNX Runtime.

Thin on purpose: sessions come from ``optimizer.runners.ort_runner.ort_session`` (through
``OrtRunner``) and the figures from ``optimizer.runners.compare.compare_arrays``; this module
only shapes them into the ``ParityResult`` the export chain records.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
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
    # samples outside atol whose discrete decisions were at a near-tie (tolerances.NEAR_TIE), judged by
    # cosine instead; their smallest margin
    near_ties: int = 0
    near_tie_margin: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        tie = (f" ({self.near_ties} at a near-tie of a discrete decision, margin {self.near_tie_margin:.1g}: "
               f"judged by cosine)" if self.near_ties else "")
        return (f"max |diff| {self.max_abs_diff:.3g} (atol {self.atol:g}), min cosine {self.cosine:.6f}, "
                f"top-1 agreement {100 * self.top1_agreement:.1f} % on {self.batch} inputs{tie}: "
                + ("PASS" if self.passed else "FAIL"))


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def ort_session(onnx_path, threads: Optional[int] = None, allow_spinning: bool = False):
    """CPU ONNX Runtime session (``ort_runner.ort_session``) with torch's thread count by default."""
    from ..runners.ort_runner import ort_session as _session
    return _session(onnx_path, threads=threads or _torch_threads(), allow_spinning=allow_spinning)


def _judge_near_ties(ref, out, res: ParityResult, margin) -> ParityResult:
    """``res`` re-judged per sample: outside atol passes only at a near-tie with the cosine NEAR_TIE asks."""
    import numpy as np
    from ..runners.compare import row_cosines
    from ..tolerances import NEAR_TIE
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = out.reshape(out.shape[0], -1).astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or margin.shape[0] != a.shape[0]:
        return res
    bad = np.abs(a - b).max(1) > res.atol
    cos = row_cosines(a, b)
    tie = bad & (margin < NEAR_TIE["margin"])
    ok = not (bad & ~tie).any() and bool((cos[tie] >= NEAR_TIE["min_cosine"]).all())
    return replace(res, passed=ok, near_ties=int(tie.sum()),
                   near_tie_margin=float(margin[tie].min()) if tie.any() else None)


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
                 threads: Optional[int] = None, margins=None) -> ParityResult:
    """Run ``model`` (PyTorch, eval mode) and ``onnx_path`` (ONNX Runtime CPU) on ``inputs``; compare.

    Args:
        model: the module that was exported.
        onnx_path: the exported file (single graph input, first output compared).
        inputs: a float tensor (N, C, H, W); the same values go to both runtimes.
        atol: largest allowed absolute difference of any output element.
        raise_on_fail: raise VitoptError past tolerance (default) instead of returning passed=False.
        threads: ORT intra-op threads (default: torch's thread count).
        margins: a context manager factory yielding lists that receive per-sample decision margins
            during the PyTorch run (``optimizer.deploy.chain.decision_margins``): a sample outside
            ``atol`` whose margin is below ``tolerances.NEAR_TIE["margin"]`` passes when its output
            cosine reaches ``NEAR_TIE["min_cosine"]`` (the runtimes may decide a near-tie differently).

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
    with torch.no_grad(), (margins() if margins is not None else contextlib.nullcontext()) as lists:
        p = next(iter(model.parameters()), None)
        ref = model.eval()(x.to(p.device) if p is not None else x)
        recorded = [t for lst in (lists or []) for t in lst]
    ref = ref.detach().float().cpu().numpy()
    res = compare_outputs(ref, out, atol)
    if not res.passed and recorded:
        res = _judge_near_ties(ref, out, res, torch.stack([t.double().cpu() for t in recorded]).amin(0).numpy())
    if not res.passed and raise_on_fail:
        raise VitoptError(f"ONNX output differs from PyTorch: {res} ({onnx_path})")
    return res

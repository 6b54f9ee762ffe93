"""``compare_outputs``: check two runners' outputs against tolerances, output by output."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..errors import VitoptError


def _pair_names(a: Mapping, b: Mapping) -> Dict[str, str]:
    common = [k for k in a if k in b]
    if common:
        return {k: k for k in common}
    if len(a) == 1 and len(b) == 1:  # e.g. torch "logits" vs an ONNX file's "output"
        return {next(iter(a)): next(iter(b))}
    raise VitoptError(f"no outputs in common to compare: {sorted(a)} vs {sorted(b)}")


def compare_outputs(outputs_a: Mapping[str, np.ndarray], outputs_b: Mapping[str, np.ndarray],
                    atol: float = 1e-4, rtol: float = 1e-3) -> Dict[str, dict]:
    """Compare outputs of two runners, keyed by output name (a lone output pairs with a lone output).

    Per output: ``max_abs`` difference, ``max_rel`` difference, ``cosine`` similarity of the
    flattened arrays, ``top1_agreement`` (fraction of rows whose argmax over the last axis agrees;
    None for 1-D outputs), ``passed`` (``|a - b| <= atol + rtol * |b|`` everywhere) and the
    tolerances used. Computed in float64.
    Raises VitoptError when shapes differ or no output names match.
    Example: ``compare_outputs(torch_out, ort_out, atol=1e-4)["logits"]["passed"]``
    """
    if atol < 0 or rtol < 0:
        raise VitoptError(f"tolerances must be non-negative, got atol={atol} rtol={rtol}")
    result = {}
    for na, nb in _pair_names(outputs_a, outputs_b).items():
        x = np.asarray(outputs_a[na], dtype=np.float64)
        y = np.asarray(outputs_b[nb], dtype=np.float64)
        if x.shape != y.shape:
            raise VitoptError(f"output {na}: shape {x.shape} vs {y.shape}")
        diff = np.abs(x - y)
        finite = bool(np.isfinite(x).all() and np.isfinite(y).all())
        denom = float(np.linalg.norm(x) * np.linalg.norm(y))
        cosine = float(np.dot(x.ravel(), y.ravel()) / denom) if denom > 0 else (1.0 if not x.any() and not y.any()
                                                                               else 0.0)
        top1: Optional[float] = None
        if x.ndim >= 2 and x.shape[-1] > 1:
            top1 = float(np.mean(x.argmax(-1) == y.argmax(-1)))
        result[na] = {
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "max_rel": float((diff / np.maximum(np.abs(y), 1e-12)).max()) if diff.size else 0.0,
            "cosine": cosine,
            "top1_agreement": top1,
            "passed": finite and bool(np.all(diff <= atol + rtol * np.abs(y))),
            "atol": atol,
            "rtol": rtol,
        }
    return result


def outputs_match(comparison: Dict[str, dict]) -> bool:
    """True when every output in a ``compare_outputs`` result passed."""
    return all(v["passed"] for v in comparison.values())

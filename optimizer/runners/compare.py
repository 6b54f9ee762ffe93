"""The one output comparator: per-output error figures of two runs and a verdict against a ``Tolerance``.

``compare_arrays(a, b, tolerance)`` measures one pair of arrays (axis 0 = samples):

* ``max_abs`` / ``mean_abs`` / ``median_abs``: statistics of ``|a - b|``;
* ``max_rel`` / ``mean_rel`` / ``median_rel``: of ``|a - b| / |b|`` (``b`` is the reference side's
  partner, as in Polygraphy: the second run is the one being checked);
* ``cosine``: of the flattened arrays; ``min_sample_cosine``: the worst sample's row;
* ``top1_agreement``: share of samples whose argmax over the flattened row agrees (None for a
  1-D output);
* ``passed`` and ``failures`` (one phrase per failed check, empty when passed).

``compare_outputs(outputs_a, outputs_b, ...)`` does that for every output of two runners (named
dicts; a lone output pairs with a lone output). All arithmetic in float64; a NaN or Inf on
either side never passes.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..errors import VitoptError
from ..tolerances import Tolerance, tolerance_for


def _pair_names(a: Mapping, b: Mapping) -> Dict[str, str]:
    common = [k for k in a if k in b]
    if common:
        return {k: k for k in common}
    if len(a) == 1 and len(b) == 1:  # e.g. torch "logits" vs an ONNX file's "output"
        return {next(iter(a)): next(iter(b))}
    raise VitoptError(f"no outputs in common to compare: {sorted(a)} vs {sorted(b)}")


def row_cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, D) arrays; two all-zero rows count as identical."""
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    dot = np.sum(x * y, axis=1)
    both_zero = ~x.any(axis=1) & ~y.any(axis=1)
    return np.where(den > 0, dot / np.where(den > 0, den, 1.0), np.where(both_zero, 1.0, 0.0))


def _stat_passes(abs_d: np.ndarray, rel_d: np.ndarray, ref: np.ndarray, tol: Tolerance) -> bool:
    if tol.check_error_stat == "elemwise":
        return bool(np.all(abs_d <= tol.atol + tol.rtol * np.abs(ref)))
    stat = {"max": np.max, "mean": np.mean, "median": np.median}[tol.check_error_stat]
    return bool(stat(abs_d) <= tol.atol or stat(rel_d) <= tol.rtol)


def compare_arrays(a, b, tolerance: Optional[Tolerance] = None) -> dict:
    """Error figures of ``b`` against ``a`` (same shape, axis 0 = samples) and the verdict.

    Args:
        a: reference array (e.g. PyTorch logits).
        b: the array checked against it (e.g. ONNX Runtime logits).
        tolerance: the thresholds (default: the fp32 row of ``optimizer.tolerances``).
    Returns: a dict of plain floats (see the module docstring), with ``tolerance`` as a dict.
    Raises VitoptError when the shapes differ.
    Example: ``compare_arrays(ref, out, tolerance_for("fp16"))["passed"]``
    """
    tol = tolerance or tolerance_for("fp32")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise VitoptError(f"shape {x.shape} vs {y.shape}")
    finite = bool(np.isfinite(x).all() and np.isfinite(y).all())
    n = x.shape[0] if x.ndim >= 1 else 1
    xs, ys = x.reshape(n, -1), y.reshape(n, -1)
    abs_d = np.abs(x - y).ravel()
    rel_d = abs_d / np.maximum(np.abs(y).ravel(), 1e-12)
    empty = abs_d.size == 0
    with np.errstate(invalid="ignore", over="ignore"):
        sample_cos = row_cosines(xs, ys) if not empty else np.ones(1)
        overall = float(row_cosines(x.reshape(1, -1), y.reshape(1, -1))[0]) if not empty else 1.0
    top1 = None
    if x.ndim >= 2 and xs.shape[1] > 1:
        top1 = float(np.mean(xs.argmax(1) == ys.argmax(1)))
    res = {
        "shape": list(x.shape),
        "max_abs": float(abs_d.max()) if not empty else 0.0,
        "mean_abs": float(abs_d.mean()) if not empty else 0.0,
        "median_abs": float(np.median(abs_d)) if not empty else 0.0,
        "max_rel": float(rel_d.max()) if not empty else 0.0,
        "mean_rel": float(rel_d.mean()) if not empty else 0.0,
        "median_rel": float(np.median(rel_d)) if not empty else 0.0,
        "cosine": overall if finite else float("nan"),
        "min_sample_cosine": float(sample_cos.min()) if finite else float("nan"),
        "top1_agreement": top1,
        "finite": finite,
    }
    failures = []
    if not finite:
        failures.append("non-finite values (NaN or Inf)")
    elif not empty and not _stat_passes(abs_d, rel_d, y.ravel(), tol):
        stat = tol.check_error_stat
        if stat == "elemwise":
            what = f"max |diff| {res['max_abs']:.3g} > atol {tol.atol:g} + rtol {tol.rtol:g} * |ref|"
        else:
            what = (f"{stat} |diff| {res[stat + '_abs']:.3g} > atol {tol.atol:g} and "
                    f"{stat} rel diff {res[stat + '_rel']:.3g} > rtol {tol.rtol:g}")
        failures.append(what)
    if finite and tol.min_cosine is not None and res["min_sample_cosine"] < tol.min_cosine:
        failures.append(f"worst-sample cosine {res['min_sample_cosine']:.6f} < {tol.min_cosine}")
    if top1 is not None and tol.min_top1_agreement is not None and top1 < tol.min_top1_agreement:
        failures.append(f"top-1 agreement {top1:.4f} < {tol.min_top1_agreement}")
    res["passed"] = not failures
    res["failures"] = failures
    res["tolerance"] = tol.to_dict()
    # flat copies kept for callers that read the thresholds directly
    res["atol"], res["rtol"] = tol.atol, tol.rtol
    return res


def compare_outputs(outputs_a: Mapping[str, np.ndarray], outputs_b: Mapping[str, np.ndarray],
                    atol: Optional[float] = None, rtol: Optional[float] = None,
                    tolerance: Optional[Tolerance] = None) -> Dict[str, dict]:
    """Compare the outputs of two runners, keyed by output name (a lone output pairs with a lone output).

    Args:
        outputs_a: reference outputs, name -> array.
        outputs_b: outputs checked against them.
        atol / rtol: override the tolerance's (None: keep the table's).
        tolerance: a row of ``optimizer.tolerances`` (default fp32).
    Returns: name -> ``compare_arrays`` result.
    Raises VitoptError when shapes differ or no output names match.
    Example: ``compare_outputs(torch_out, ort_out, tolerance=tolerance_for("fp32"))["logits"]["passed"]``
    """
    tol = (tolerance or tolerance_for("fp32")).with_overrides(atol=atol, rtol=rtol)
    result = {}
    for na, nb in _pair_names(outputs_a, outputs_b).items():
        try:
            result[na] = compare_arrays(outputs_a[na], outputs_b[nb], tol)
        except VitoptError as e:
            raise VitoptError(f"output {na}: {e}") from None
    return result


def outputs_match(comparison: Dict[str, dict]) -> bool:
    """True when every output in a ``compare_outputs`` result passed."""
    return all(v["passed"] for v in comparison.values())

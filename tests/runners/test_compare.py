"""compare_outputs: exact figures on hand-made arrays."""
from __future__ import annotations

import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.runners import compare_outputs, outputs_match
from optimizer.runners.trt_runner import sidecar_memory_bytes


def test_identical_outputs_pass():
    a = {"logits": np.arange(12, dtype=np.float32).reshape(3, 4)}
    r = compare_outputs(a, {"logits": a["logits"].copy()})["logits"]
    assert r["max_abs"] == 0 and r["passed"] and r["top1_agreement"] == 1.0
    assert r["cosine"] == pytest.approx(1.0)


def test_differences_are_measured():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    b = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)  # second row's argmax flips
    r = compare_outputs({"y": a}, {"y": b}, atol=1e-4)["y"]
    assert r["max_abs"] == pytest.approx(1.0)
    assert r["top1_agreement"] == pytest.approx(0.5)
    assert r["cosine"] == pytest.approx(0.5)
    assert not r["passed"] and not outputs_match({"y": r})
    # within tolerance: passes
    r2 = compare_outputs({"y": a}, {"y": a + 5e-5}, atol=1e-4, rtol=0)["y"]
    assert r2["passed"] and r2["max_abs"] == pytest.approx(5e-5, rel=1e-2)
    r3 = compare_outputs({"y": a}, {"y": a + 5e-4}, atol=1e-4, rtol=0)["y"]
    assert not r3["passed"]


def test_nan_never_passes():
    a = np.zeros((1, 3), np.float32)
    b = a.copy()
    b[0, 1] = np.nan
    assert not compare_outputs({"y": a}, {"y": b})["y"]["passed"]


def test_name_pairing_and_errors():
    a = {"logits": np.ones((2, 3))}
    r = compare_outputs(a, {"output": np.ones((2, 3))})  # lone outputs pair up
    assert list(r) == ["logits"] and r["logits"]["passed"]
    with pytest.raises(VitoptError, match="shape"):
        compare_outputs(a, {"logits": np.ones((3, 2))})
    with pytest.raises(VitoptError, match="no outputs in common"):
        compare_outputs({"a": np.ones(1), "b": np.ones(1)}, {"c": np.ones(1), "d": np.ones(1)})


def test_sidecar_memory_parsing():
    assert sidecar_memory_bytes(None) is None
    assert sidecar_memory_bytes({"precision": "fp16"}) is None
    assert sidecar_memory_bytes({"weights_bytes": 1000, "activation_bytes": 24}) == 1024
    assert sidecar_memory_bytes({"memory": {"weights_bytes": 10, "activation_bytes": 5}}) == 15
    # optimizer.engine's sidecar: a value the builder log lacked is None, not a number
    assert sidecar_memory_bytes({"memory": {"weights_bytes": 10, "activation_bytes": None}}) == 10
    assert sidecar_memory_bytes({"memory": {"weights_bytes": None, "activation_bytes": None}}) is None


def test_error_statistics_and_worst_sample():
    from optimizer.runners.compare import compare_arrays
    from optimizer.tolerances import Tolerance
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = a.copy()
    b[1] = [1.0, 1.0, 1.0, -1.0]  # one element of the second sample flips sign
    r = compare_arrays(a, b, Tolerance("t", atol=0.0, rtol=0.0, check_error_stat="median"))
    assert (r["max_abs"], r["mean_abs"], r["median_abs"]) == (2.0, 0.25, 0.0)
    assert r["max_rel"] == 2.0 and r["median_rel"] == 0.0
    assert r["min_sample_cosine"] == pytest.approx(0.5)               # (1+1+1-1) / 4
    assert r["cosine"] == pytest.approx((30 + 2) / np.sqrt(34 * 34))  # flattened
    assert r["top1_agreement"] == 1.0 and r["passed"]                 # median error 0 passes...
    r = compare_arrays(a, b, Tolerance("t", atol=0.0, rtol=0.0, check_error_stat="max"))
    assert not r["passed"] and r["failures"][0].startswith("max |diff| 2")  # ...the max does not
    r = compare_arrays(a, b, Tolerance("t", atol=10.0, rtol=0.0, check_error_stat="max", min_cosine=0.9))
    assert r["failures"] == ["worst-sample cosine 0.500000 < 0.9"]


def test_tolerance_table_rows_and_validation():
    from optimizer.tolerances import TOLERANCES, Tolerance, tolerance_for
    assert tolerance_for("FP16") is TOLERANCES["fp16"]
    # fp16 is looser than fp32 on every axis
    f32, f16 = tolerance_for("fp32"), tolerance_for("fp16")
    assert f16.atol > f32.atol and f16.min_cosine < f32.min_cosine and f16.min_top1_agreement < f32.min_top1_agreement
    assert f32.with_overrides(atol=1e-2, rtol=None).atol == 1e-2 and f32.with_overrides(rtol=None).rtol == f32.rtol
    with pytest.raises(VitoptError, match="no tolerance for precision 'int4'"):
        tolerance_for("int4")
    for bad, msg in (({"atol": -1.0}, "atol must be a non-negative"), ({"check_error_stat": "p99"}, "one of"),
                     ({"min_cosine": 2.0}, "min_cosine must lie")):
        with pytest.raises(VitoptError, match=msg):
            Tolerance("x", **{"atol": 0.0, "rtol": 0.0, **bad})


def test_parity_result_comes_from_the_same_comparator():
    from optimizer.export import compare_outputs as parity_compare
    from optimizer.runners.compare import compare_arrays
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7))
    b = a + rng.standard_normal((5, 7)) * 1e-3
    p, r = parity_compare(a, b, atol=1e-2), compare_arrays(a, b)
    assert (p.max_abs_diff, p.cosine, p.top1_agreement, p.batch) == \
        (r["max_abs"], r["min_sample_cosine"], r["top1_agreement"], 5)
    assert p.passed and not parity_compare(a, b, atol=1e-4).passed

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

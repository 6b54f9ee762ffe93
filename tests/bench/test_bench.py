"""benchmark / interleaved_latency / reports: structure, monotone percentiles, ratio oracle."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from optimizer.bench import (BenchRow, benchmark, interleaved_latency, interleaved_to_markdown, rows_from_json,
                             rows_to_dict, rows_to_json, to_markdown)
from optimizer.errors import VitoptError
from optimizer.runners import BaseRunner, OrtRunner


class SleepRunner(BaseRunner):
    """Inference = sleeping ``ms`` milliseconds (optionally holding ``alloc_mb`` of fresh memory)."""

    backend = "sleep"

    def __init__(self, ms: float, name=None, alloc_mb: int = 0):
        super().__init__(name)
        self.ms, self.alloc_mb, self.calls = ms, alloc_mb, 0

    def _activate(self):
        self.input_names, self.output_names, self._held = ["input"], ["y"], []

    def _deactivate(self):
        self._held = []

    def _infer(self, feed):
        return {"y": feed["input"].sum(axis=tuple(range(1, feed["input"].ndim)))}

    def _prepare(self, data):
        if self.alloc_mb:  # touch every page so RSS really grows
            self._held.append(np.ones(self.alloc_mb * 1024 * 1024 // 8))

    def _run_prepared(self):
        self.calls += 1
        time.sleep(self.ms / 1000.0)


def test_benchmark_rows_and_fields():
    r = SleepRunner(2.0, name="sleepy")
    rows = benchmark(r, batch_sizes=(1, 4), warmup=2, iters=6, min_time_s=0.0, input_shape=(3, 8, 8))
    assert [x.batch for x in rows] == [1, 4]
    for row in rows:
        assert row.name == "sleepy" and row.backend == "sleep" and row.precision == "fp32"
        assert row.iters == 6 and row.warmup == 2
        assert row.min_ms <= row.p50_ms <= row.p90_ms <= row.p99_ms <= row.max_ms
        assert row.p50_ms >= 2.0  # sleep never returns early
        assert row.throughput_ips == pytest.approx(row.batch * 1000.0 / row.p50_ms)
        assert row.env["cpu"] and "versions" in row.env and row.env["backend"] == "sleep"
    assert r.calls == 2 * (2 + 6)
    assert not r.is_active  # benchmark activated it, so it deactivated it


def test_benchmark_runs_until_min_time():
    rows = benchmark(SleepRunner(1.0), batch_sizes=[2], warmup=0, iters=1, min_time_s=0.1, input_shape=(1,))
    assert rows[0].iters >= 20  # 100 ms of >= 1 ms iterations, reported honestly


def test_benchmark_peak_memory_sees_an_allocation():
    rows = benchmark(SleepRunner(0.1, alloc_mb=64), batch_sizes=[1], warmup=0, iters=2, min_time_s=0,
                     input_shape=(1,))
    assert rows[0].peak_mem_mb is not None and rows[0].peak_mem_mb >= 60
    assert "RSS" in rows[0].mem_source


def test_benchmark_rejects_bad_arguments():
    r = SleepRunner(0.1)
    for kw in ({"batch_sizes": [0]}, {"batch_sizes": []}, {"batch_sizes": [1.5]}, {"iters": 0}, {"warmup": -1},
               {"min_time_s": float("inf")}):
        with pytest.raises(VitoptError):
            benchmark(r, **kw)


def test_benchmark_ort_tiny(tiny_onnx):
    _, path = tiny_onnx
    rows = benchmark(OrtRunner(path, threads=1), batch_sizes=(1, 3), warmup=2, iters=5, min_time_s=0)
    assert [r.batch for r in rows] == [1, 3]
    env = rows[0].env
    assert env["ort_allow_spinning"] is False and env["threads"] == 1 and env["versions"]["onnxruntime"]
    assert all(r.p50_ms > 0 and r.p50_ms <= r.p90_ms <= r.p99_ms for r in rows)
    md = to_markdown(rows)
    table = [ln for ln in md.splitlines() if ln.startswith("| onnxruntime")]
    assert [ln.split("|")[4].strip() for ln in table] == ["1", "3"]
    assert "ORT spinning off" in md
    back = rows_from_json(rows_to_json(rows))
    assert back == rows
    assert json.loads(rows_to_json(rows))["rows"][1]["batch"] == 3
    assert rows_to_dict(rows)["format"] == "vitopt-bench"


def test_interleaved_ratio_matches_known_sleeps():
    runners = {"dense": SleepRunner(4.0), "compressed": SleepRunner(2.0), "same": SleepRunner(4.0)}
    res = interleaved_latency(runners, batch_sizes=(1, 2), rounds=4, iters_per_round=3, warmup=1,
                              input_shape=(1,))
    assert res["reference"] == "dense" and res["batch_sizes"] == [1, 2]
    rows = {(r["name"], r["batch"]): r for r in res["rows"]}
    assert len(rows) == 6
    for b in (1, 2):
        assert rows[("dense", b)]["speedup"] == pytest.approx(1.0)
        # oracle: 4 ms / 2 ms sleeps -> speedup 2 (sleep overshoot of ~0.1 ms shrinks it slightly)
        assert rows[("compressed", b)]["speedup"] == pytest.approx(2.0, abs=0.25)
        assert rows[("compressed", b)]["speedup_rounds"] == pytest.approx(2.0, abs=0.25)
        assert rows[("same", b)]["speedup"] == pytest.approx(1.0, abs=0.15)
        assert all(rows[(n, b)]["iters"] == 12 for n in runners)
    # every runner ran the same number of times: warmup + rounds * iters per batch
    assert all(r.calls == 2 * (1 + 12) for r in runners.values())
    md = interleaved_to_markdown(res)
    assert "speedup vs dense" in md and md.count("| compressed |") == 2
    json.dumps(res)  # JSON-serialisable


def test_interleaved_needs_two_runners():
    with pytest.raises(VitoptError, match="at least two"):
        interleaved_latency({"a": SleepRunner(0.1)})


def test_benchrow_roundtrip():
    row = BenchRow(name="x", backend="torch", precision="fp32", batch=8, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0,
                   mean_ms=1.5, min_ms=0.5, max_ms=3.5, throughput_ips=8000.0, iters=10, warmup=2)
    assert BenchRow.from_dict(row.to_dict()) == row

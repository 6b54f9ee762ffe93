"""The knee rule that picks preferred batch sizes from a benchmark."""
from __future__ import annotations

import pytest

from optimizer.errors import VitoptError
from optimizer.serve.batching import knee_batch_sizes, queue_delay_us, throughput_by_batch


def test_knee_is_smallest_batch_within_fraction_of_peak_and_preferred_runs_to_the_peak():
    # peak 190 img/s at 32; 90 % of it is 171: batch 8 (180) is the first to reach it
    assert knee_batch_sizes({1: 100.0, 8: 180.0, 32: 190.0, 64: 185.0}) == (8, [8, 32])


def test_knee_at_batch_one_lists_no_preferred_size():
    assert knee_batch_sizes({1: 100.0, 8: 95.0, 32: 92.0}) == (1, [])


def test_knee_ignores_batches_above_max_batch():
    # 32 would be the peak, but only batches <= 8 can be served
    assert knee_batch_sizes({1: 50.0, 4: 80.0, 8: 100.0, 32: 400.0}, max_batch=8) == (8, [8])
    with pytest.raises(VitoptError, match="no benchmarked batch size is <= max_batch_size 2"):
        knee_batch_sizes({4: 1.0, 8: 2.0}, max_batch=2)


def test_knee_fraction_moves_the_knee():
    thr = {1: 100.0, 2: 150.0, 4: 170.0, 8: 180.0}
    assert knee_batch_sizes(thr, fraction=0.8)[0] == 2
    assert knee_batch_sizes(thr, fraction=1.0) == (8, [8])


def test_throughput_from_a_bench_result_uses_one_backend():
    bench = {"format": "vitopt-bench", "rows": [
        {"backend": "onnxruntime", "batch": 1, "throughput_ips": 10.0, "p50_ms": 100.0},
        {"backend": "onnxruntime", "batch": 8, "throughput_ips": 40.0, "p50_ms": 200.0},
        {"backend": "torch", "batch": 8, "throughput_ips": 999.0, "p50_ms": 8.0}]}
    assert throughput_by_batch(bench) == {1: (10.0, 100.0), 8: (40.0, 200.0)}
    assert throughput_by_batch(bench, "torch") == {8: (999.0, 8.0)}
    with pytest.raises(VitoptError, match="not a `vitopt bench --json` result"):
        throughput_by_batch({"rows": []})
    with pytest.raises(VitoptError, match="no rows for backend triton"):
        throughput_by_batch(bench, "triton")


def test_queue_delay_is_a_tenth_of_a_batch_one_inference():
    assert queue_delay_us(4.0) == 400
    assert queue_delay_us(None) == 1000

"""served_benchmark's load windows: concurrency really in flight, request and time bounds kept."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from optimizer.bench import served_benchmark, to_markdown
from optimizer.errors import VitoptError
from optimizer.runners.base import BaseRunner


class SleepRunner(BaseRunner):
    """A stand-in server client: each request takes ``ms`` and records how many run at once."""
    backend = "fake-served"
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    threads = set()

    def __init__(self, ms=2.0, fail=False):
        super().__init__()
        self.ms, self.fail = ms, fail

    def _activate(self):
        self.input_names, self.output_names = ["x"], ["y"]
        self.owner = threading.get_ident()

    def _deactivate(self):
        pass

    def _prepare(self, data):
        self.data = data

    def _run_prepared(self):
        if self.fail:
            raise VitoptError("server went away")
        assert threading.get_ident() == self.owner, "a runner must stay on the thread that activated it"
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
            cls.threads.add(threading.get_ident())
        time.sleep(self.ms / 1000)
        with cls.lock:
            cls.in_flight -= 1


@pytest.fixture(autouse=True)
def _reset():
    SleepRunner.in_flight, SleepRunner.peak, SleepRunner.threads = 0, 0, set()


def test_concurrency_is_in_flight_and_rows_per_level():
    rows = served_benchmark(lambda: SleepRunner(ms=5.0), batch_sizes=(2,), concurrency=(1, 4), warmup=1,
                            min_requests=20, min_time_s=0.0, max_requests=1000, max_time_s=10.0,
                            inputs=np.zeros((2, 3), np.float32))
    assert [(r.batch, r.concurrency) for r in rows] == [(2, 1), (2, 4)]
    assert SleepRunner.peak == 4
    for r in rows:
        assert r.iters >= 20 and r.p50_ms >= 5.0
    # a request takes >= 5 ms, so C clients finish at most C x 2 images per 5 ms (load only slows them)
    for r in rows:
        assert 0 < r.throughput_ips <= r.concurrency * 2 / 0.005
    assert "| 4 |" in to_markdown(rows) and "concurrency" in to_markdown(rows)


def test_request_and_time_bounds():
    rows = served_benchmark(lambda: SleepRunner(ms=1.0), (1,), (3,), warmup=0, min_requests=5, min_time_s=0.0,
                            max_requests=12, max_time_s=10.0)
    assert 5 <= rows[0].iters <= 12 + 3         # clients in flight when the bound is hit still finish
    t0 = time.perf_counter()
    rows = served_benchmark(lambda: SleepRunner(ms=20.0), (1,), (1,), warmup=0, min_requests=10 ** 6,
                            min_time_s=0.0, max_requests=10 ** 6, max_time_s=0.3)
    assert time.perf_counter() - t0 < 3.0 and rows[0].iters < 30


def test_failing_request_is_one_error_not_a_hang():
    with pytest.raises(VitoptError, match="server went away"):
        served_benchmark(lambda: SleepRunner(fail=True), (1,), (2,), warmup=0, min_requests=1, min_time_s=0.0,
                         max_requests=10, max_time_s=5.0)


def test_bad_bounds():
    with pytest.raises(VitoptError, match="need warmup >= 0"):
        served_benchmark(lambda: SleepRunner(), (1,), (1,), min_requests=10, max_requests=5)

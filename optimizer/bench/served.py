"""Served latency under load: perf_analyzer's measures from Python, against a Triton server.

At each concurrency C, C client threads (each with its own connection, a ``TritonRunner`` created,
warmed up and closed in that thread: the HTTP client must stay on the thread that made it) send
requests back to back, so C requests are always in flight. Per (batch, concurrency): p50/p90/p99
of the request latency a client sees and throughput = images completed / wall time of the window.
Bounded: a window ends once both ``min_requests`` requests and ``min_time_s`` seconds are done,
or at ``max_requests`` / ``max_time_s``, whichever comes first.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import VitoptError
from .environment import environment
from .latency import BenchRow, _check_batches, _stats, _load_avg


def served_benchmark(make_runner: Callable[[], object], batch_sizes: Sequence[int] = (1,),
                     concurrency: Sequence[int] = (1, 4, 16), warmup: int = 5, min_requests: int = 50,
                     min_time_s: float = 2.0, max_requests: int = 5000, max_time_s: float = 30.0,
                     inputs: Optional[np.ndarray] = None, name: Optional[str] = None,
                     server: str = "tritonserver") -> List[BenchRow]:
    """One ``BenchRow`` per (batch size, concurrency) for runners from ``make_runner()``.

    Args:
        make_runner: returns a new (inactive) runner; one per client thread (TritonRunner).
        concurrency: requests kept in flight.
        warmup: untimed requests per client before each window.
        min_requests / min_time_s / max_requests / max_time_s: the window bounds (module doc).
        inputs: real images (N, ...) to send instead of random data.
    Raises VitoptError for non-positive counts or a request that fails.
    Example: ``served_benchmark(lambda: TritonRunner(url, "deit"), (1, 8), (1, 4))``
    """
    batches = _check_batches(batch_sizes)
    levels = _check_batches(concurrency)
    if warmup < 0 or min_requests < 1 or max_requests < min_requests or not 0 <= min_time_s <= max_time_s:
        raise VitoptError(f"need warmup >= 0, 1 <= min_requests <= max_requests, 0 <= min_time_s <= max_time_s; got "
                          f"{warmup}, {min_requests}, {max_requests}, {min_time_s}, {max_time_s}")
    rows = []
    with make_runner() as r0:       # this thread's runner: metadata and environment only
        env = environment(r0)
        env.update(server=server, protocol=getattr(r0, "protocol", None))
        for b in batches:
            for level in levels:
                times, wall = _window(make_runner, level, b, inputs, warmup, min_requests, min_time_s,
                                      max_requests, max_time_s)
                st = _stats(times)
                rows.append(BenchRow(name=name or r0.name, backend=r0.backend, precision=r0.precision, batch=b,
                                     throughput_ips=b * len(times) / wall, iters=len(times), warmup=warmup,
                                     device=r0.device, load_avg_1m=_load_avg(), env=env, concurrency=level,
                                     mem_source="", **st))
    return rows


def _window(make_runner, level: int, batch: int, inputs, warmup: int, min_requests: int, min_time_s: float,
            max_requests: int, max_time_s: float):
    """Latencies (ms) of every request completed in one load window, and the window's wall seconds."""
    lock = threading.Lock()
    times: List[float] = []
    errors: List[BaseException] = []
    t0 = [0.0]
    # the window opens when the last client is warm: the barrier's action stamps it before anyone runs
    start = threading.Barrier(level + 1, action=lambda: t0.__setitem__(0, time.perf_counter()))

    def done() -> bool:
        n, el = len(times), time.perf_counter() - t0[0]
        return n >= max_requests or el >= max_time_s or (n >= min_requests and el >= min_time_s)

    def client():
        try:
            with make_runner() as r:
                r.prepare(batch, data=inputs)
                for _ in range(warmup):
                    r.run_once(batch)
                start.wait()
                while True:
                    with lock:
                        if errors or done():
                            return
                    ms = r.infer_timed(batch)
                    with lock:
                        times.append(ms)
        except threading.BrokenBarrierError:
            return
        except BaseException as e:     # surfaced in the caller's thread
            with lock:
                errors.append(e)
            start.abort()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(level)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(max_time_s + 120)
    wall = time.perf_counter() - t0[0]
    if errors:
        e = errors[0]
        raise e if isinstance(e, VitoptError) else VitoptError(f"served request failed: {type(e).__name__}: {e}")
    if not times:
        raise VitoptError("no served request completed within the time bound")
    return times, wall

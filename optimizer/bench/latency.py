"""Latency benchmarks over the shared runner interface.

``benchmark`` times one runner at several batch sizes (trtexec style: at least ``iters`` timed
iterations *and* at least ``min_time_s`` seconds, after ``warmup`` untimed ones).
``interleaved_latency`` alternates several runners round-robin in one run, so that machine noise
(another job, thermal drift) hits all of them alike and their ratios stay meaningful.

GPU runners time themselves with CUDA events (``runner.infer_timed``); CPU runners with a
monotonic host clock around a synchronous call. The garbage collector is paused while timing.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import VitoptError
from .environment import environment
from .memory import PeakMemory, rss_bytes

MB = 1024 * 1024


@dataclass
class BenchRow:
    """One (runner, batch size) measurement. Times in milliseconds per batch."""
    name: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float          # images per second = batch / p50 (served rows: images done / wall time)
    iters: int                     # timed iterations behind the percentiles
    warmup: int
    device: str = "cpu"
    peak_mem_mb: Optional[float] = None   # see mem_source for what it measures
    mem_source: str = ""
    load_avg_1m: Optional[float] = None   # right after timing: > usable cores means the run was contended
    env: dict = field(default_factory=dict)
    concurrency: Optional[int] = None     # requests in flight (served benchmarks); None: one caller

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BenchRow":
        """Rebuild a row; keys added by newer versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _check_batches(batch_sizes) -> List[int]:
    if isinstance(batch_sizes, int):
        batch_sizes = [batch_sizes]
    out = []
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise VitoptError(f"batch sizes must be positive integers, got {b!r}")
        out.append(int(b))
    if not out:
        raise VitoptError("no batch sizes given")
    return out


def _stats(times_ms: Sequence[float]) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(t.mean()),
            "min_ms": float(t.min()), "max_ms": float(t.max())}


@contextlib.contextmanager
def _gc_paused():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _active(runners):
    """Activate the runners that are not yet active; deactivate only those on exit."""
    with contextlib.ExitStack() as stack:
        for r in runners:
            if not r.is_active:
                stack.enter_context(r)
        yield


def _timed_loop(runner, batch: int, iters: int, min_time_s: float) -> List[float]:
    times = []
    t_end = time.perf_counter() + min_time_s
    while len(times) < iters or time.perf_counter() < t_end:
        times.append(runner.infer_timed(batch))
    return times


def _load_avg() -> Optional[float]:
    import os
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _memory(runner, reading, rss_start: int):
    """(peak_mem_mb, source) for a row: see ``benchmark``."""
    if runner.backend == "tensorrt":
        from ..runners.trt_runner import sidecar_memory_bytes
        eng = sidecar_memory_bytes(getattr(runner, "meta", None))
        if eng is not None:
            return round(eng / MB, 2), "engine weights + activation memory (engine sidecar JSON)"
        return (round(reading.peak_bytes / MB, 2), "torch.cuda.max_memory_allocated (I/O buffers only; "
                "no engine sidecar)") if reading else (None, "")
    if reading is None:
        return None, ""
    if runner.device.startswith("cuda"):
        if runner.backend == "onnxruntime":
            return None, "not measured (ONNX Runtime's CUDA allocator is invisible to torch)"
        return round(reading.peak_bytes / MB, 2), reading.source
    return (round((reading.peak_bytes - rss_start) / MB, 2),
            f"growth of {reading.source} over RSS before the benchmark")


def benchmark(runner, batch_sizes: Sequence[int] = (1, 8, 32), warmup: int = 10, iters: int = 50,
              min_time_s: float = 1.0, input_shape: Optional[Sequence[int]] = None,
              inputs=None) -> List[BenchRow]:
    """Latency percentiles, throughput and peak memory of ``runner`` at each batch size.

    Args:
        runner: any ``optimizer.runners`` runner (activated here if it is not active).
        batch_sizes: images per inference.
        warmup: untimed iterations per batch size.
        iters / min_time_s: timing continues until both at least ``iters`` iterations and
            ``min_time_s`` seconds are done; ``BenchRow.iters`` says how many were timed.
        input_shape: per-image shape; default the runner's own, else (3, 224, 224).
        inputs: optional real images (N, C, H, W) to time on instead of random data (rows cycled
            to fill a batch); needed for input-adaptive models whose work depends on content.
    Returns one ``BenchRow`` per batch size. ``peak_mem_mb`` is, on CPU, the process RSS
    high-water mark during that batch minus RSS when ``benchmark`` started (so it includes model
    loading when the runner was activated here); on GPU torch's peak allocation; for TensorRT the
    engine's weights + activation memory from its ``<engine>.json`` sidecar.
    Raises VitoptError for non-positive batch sizes or iteration counts.
    Example: ``to_markdown(benchmark(OrtRunner("m.onnx"), (1, 8), iters=20))``
    """
    batches = _check_batches(batch_sizes)
    if warmup < 0 or iters < 1 or not (0 <= min_time_s < float("inf")):
        raise VitoptError(f"need warmup >= 0, iters >= 1, min_time_s >= 0; got {warmup}, {iters}, {min_time_s}")
    rss_start = rss_bytes()
    rows = []
    with _active([runner]):
        env = environment(runner)
        for b in batches:
            with PeakMemory(runner.device) as pm:
                runner.prepare(b, input_shape, data=inputs)
                for _ in range(warmup):
                    runner.run_once(b)
                with _gc_paused():
                    times = _timed_loop(runner, b, iters, min_time_s)
            st = _stats(times)
            load = _load_avg()
            mem, src = _memory(runner, pm.reading, rss_start)
            rows.append(BenchRow(name=runner.name, backend=runner.backend, precision=runner.precision, batch=b,
                                 throughput_ips=b * 1000.0 / st["p50_ms"], iters=len(times), warmup=warmup,
                                 device=runner.device, peak_mem_mb=mem, mem_source=src, load_avg_1m=load,
                                 env=env, **st))
    return rows


def interleaved_latency(runners: Dict[str, object], batch_sizes: Sequence[int] = (1,), rounds: int = 10,
                        iters_per_round: int = 5, warmup: int = 3,
                        input_shape: Optional[Sequence[int]] = None, inputs=None) -> dict:
    """Time several runners round-robin in one run; ratios are against the first runner.

    Each round runs ``iters_per_round`` timed inferences of every runner, the order rotating from
    round to round. Per runner and batch size: median (``p50_ms``), p90, mean of all its timed
    iterations, their count, ``speedup`` = reference p50 / this p50 (> 1: faster than the
    reference), and ``speedup_rounds`` = median over rounds of the per-round median ratio with its
    25-75 % range (a drift-robust estimate of the same ratio). ``inputs``: real images to time on
    (see ``benchmark``); every runner gets the same rows.
    Returns a JSON-serialisable dict: reference, batch_sizes, rounds, iters_per_round, warmup,
    rows (one per runner and batch), environment.
    Raises VitoptError for fewer than two runners or non-positive counts.
    Example: ``interleaved_latency({"dense": OrtRunner(a), "slim": OrtRunner(b)}, (1, 8))``
    """
    if not isinstance(runners, dict) or len(runners) < 2:
        raise VitoptError("interleaved_latency needs a dict of at least two named runners")
    batches = _check_batches(batch_sizes)
    if rounds < 1 or iters_per_round < 1 or warmup < 0:
        raise VitoptError(f"need rounds >= 1, iters_per_round >= 1, warmup >= 0; "
                          f"got {rounds}, {iters_per_round}, {warmup}")
    names = list(runners)
    ref = names[0]
    rows = []
    with _active(runners.values()):
        for b in batches:
            for n in names:
                runners[n].prepare(b, input_shape, data=inputs)
                for _ in range(warmup):
                    runners[n].run_once(b)
            times = {n: [] for n in names}
            round_med = {n: [] for n in names}
            with _gc_paused():
                for r in range(rounds):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for n in order:
                        ts = [runners[n].infer_timed(b) for _ in range(iters_per_round)]
                        times[n].extend(ts)
                        round_med[n].append(float(np.median(ts)))
            ref_p50 = float(np.median(times[ref]))
            for n in names:
                st = _stats(times[n])
                ratios = np.asarray(round_med[ref]) / np.asarray(round_med[n])
                q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
                rr = runners[n]
                rows.append({"name": n, "backend": rr.backend, "precision": rr.precision, "batch": b,
                             "p50_ms": st["p50_ms"], "p90_ms": st["p90_ms"], "mean_ms": st["mean_ms"],
                             "iters": len(times[n]), "throughput_ips": b * 1000.0 / st["p50_ms"],
                             "speedup": ref_p50 / st["p50_ms"], "speedup_rounds": float(q50),
                             "speedup_rounds_iqr": [float(q25), float(q75)]})
        env = environment(runners[ref])
    return {"reference": ref, "batch_sizes": batches, "rounds": rounds, "iters_per_round": iters_per_round,
            "warmup": warmup, "rows": rows, "environment": env}

"""Dynamic-batching settings from a benchmark: the batch sizes on the throughput-per-latency knee.

The knee rule (throughput = images/s at each measured batch size, p50 latency rising with batch):

- the *peak* is the measured batch size with the highest throughput (<= the allowed maximum);
- the *knee* is the smallest batch size reaching ``fraction`` (default 0.9) of the peak throughput:
  past it, bigger batches add latency for at most ``1 - fraction`` more throughput;
- the preferred batch sizes are the measured sizes from the knee up to the peak, so the batcher
  forms a batch as soon as it reaches the knee and grows it only while throughput still grows.

A knee at batch 1 means batching buys nothing measurable: no preferred size is listed (Triton
then batches whatever the queue holds within ``max_queue_delay_microseconds``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..errors import VitoptError

KNEE_FRACTION = 0.9


def throughput_by_batch(bench: dict, backend: Optional[str] = None) -> Dict[int, Tuple[float, float]]:
    """{batch: (throughput img/s, p50 ms)} from a ``vitopt bench --json`` result.

    Rows of one runner only: ``backend`` when given, else the first row's backend (a result with
    several backends must say which one the server runs).
    Raises VitoptError for a file that is not a bench result or has no rows for the backend.
    """
    if not isinstance(bench, dict) or bench.get("format") != "vitopt-bench":
        raise VitoptError("the --bench file is not a `vitopt bench --json` result (format vitopt-bench)")
    rows = bench.get("rows")
    if not rows:
        raise VitoptError("the --bench result has no rows")
    backend = backend or rows[0].get("backend")
    out = {}
    for r in rows:
        if r.get("backend") != backend or r.get("concurrency") not in (None, 1):
            continue
        try:
            b, thr, p50 = int(r["batch"]), float(r["throughput_ips"]), float(r["p50_ms"])
        except (KeyError, TypeError, ValueError):
            raise VitoptError("the --bench result has a row without batch/throughput_ips/p50_ms") from None
        if b not in out or thr > out[b][0]:
            out[b] = (thr, p50)
    if not out:
        raise VitoptError(f"the --bench result has no rows for backend {backend}")
    return out


def knee_batch_sizes(throughput: Dict[int, float], max_batch: Optional[int] = None,
                     fraction: float = KNEE_FRACTION) -> Tuple[int, List[int]]:
    """(knee, preferred batch sizes) from {batch: throughput} by the rule in the module doc.

    Batch sizes above ``max_batch`` are ignored. Raises VitoptError when no measured batch size
    fits ``max_batch`` or ``fraction`` is not in (0, 1].
    Example: ``knee_batch_sizes({1: 100, 8: 180, 32: 190})`` -> ``(8, [8, 32])``
    """
    if not 0 < fraction <= 1:
        raise VitoptError(f"knee fraction must be in (0, 1], got {fraction}")
    usable = {int(b): float(t) for b, t in throughput.items() if max_batch is None or b <= max_batch}
    if not usable:
        raise VitoptError(f"no benchmarked batch size is <= max_batch_size {max_batch}")
    peak_b = max(usable, key=lambda b: (usable[b], -b))
    knee = min(b for b, t in usable.items() if t >= fraction * usable[peak_b])
    if knee == 1:
        return 1, []
    return knee, sorted(b for b in usable if knee <= b <= peak_b)


def queue_delay_us(p50_ms_at_1: Optional[float], default_us: int = 1000) -> int:
    """How long the batcher may hold a request to form a batch: a tenth of a batch-1 inference, so
    a lone request (low load, no preferred size reached) loses at most 10 % latency to waiting;
    ``default_us`` without a measurement."""
    if p50_ms_at_1 is None or p50_ms_at_1 <= 0:
        return default_us
    return max(1, int(round(p50_ms_at_1 * 100)))

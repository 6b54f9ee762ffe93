"""Peak memory during a benchmark: process RSS high-water mark on CPU, torch's allocator on GPU.

On Linux the kernel keeps the RSS high-water mark (``VmHWM``) and lets a process reset it
(``/proc/self/clear_refs`` = 5), which costs nothing while timing. Elsewhere a sampling thread
polls RSS every few milliseconds (it may miss short spikes, and says so in ``source``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional


def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class MemoryReading:
    peak_bytes: int     # highest process RSS (CPU) or torch-allocated bytes (GPU) seen
    source: str         # how it was measured


class PeakMemory:
    """Context manager measuring the peak memory of what runs inside it.

    Example: ``with PeakMemory("cpu") as pm: work()`` then ``pm.reading.peak_bytes``
    """

    def __init__(self, device: str = "cpu", interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.reading: Optional[MemoryReading] = None
        self._thread = None

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._hwm = _reset_hwm() and _read_hwm() is not None
        if not self._hwm:
            self._peak = rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()
            self.reading = MemoryReading(int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated")
            return
        if self._hwm:
            self.reading = MemoryReading(int(_read_hwm()), "process RSS high-water mark (VmHWM)")
        else:
            self._stop.set()
            self._thread.join()
            self.reading = MemoryReading(max(self._peak, rss_bytes()),
                                         f"process RSS sampled every {self.interval_s * 1000:.0f} ms")

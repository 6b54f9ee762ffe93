"""Streaming |x| histograms and the amax calibrators that read them (max, percentile, entropy, MSE).

Memory is fixed: ``bins`` counts per tensor however many images pass. The range starts at the first
batch's max |x| and grows by doubling, merging adjacent bin pairs, so a re-binned histogram is
exactly the histogram one would have built over the final range in one shot.
"""
from __future__ import annotations

import numpy as np

from ..errors import VitoptError


class StreamingHistogram:
    """Histogram of |x| over [0, range) with a fixed number of bins and the exact running max.

    Example: ``h = StreamingHistogram(); h.update(a); h.update(b); amax_percentile(h, 99.99)``
    """

    def __init__(self, bins: int = 2048):
        if bins < 128 or bins % 2:
            raise VitoptError(f"histogram bins must be an even number >= 128, got {bins}")
        self.bins = int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.range = 0.0
        self.max = 0.0
        self.total = 0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.range, self.bins + 1)

    def _grow_to(self, amax: float) -> None:
        while self.range <= amax:
            # merge pairs: bin i of the doubled range holds old bins 2i and 2i+1
            half = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([half, np.zeros(self.bins // 2, dtype=np.int64)])
            self.range *= 2.0

    def update(self, x) -> None:
        a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
        if a.size == 0:
            return
        if not np.all(np.isfinite(a)):
            raise VitoptError("calibration activations contain NaN or Inf: check the model and the input images")
        amax = float(a.max())
        self.max = max(self.max, amax)
        if self.range == 0.0:
            if amax == 0.0:
                self.counts[0] += a.size
                self.total += a.size
                return
            # a little above the max so the max itself lands inside the last bin
            self.range = float(np.nextafter(np.float32(amax), np.float32(np.inf)))
        elif amax >= self.range:
            self._grow_to(amax)
        c, _ = np.histogram(a, bins=self.bins, range=(0.0, self.range))
        self.counts += c
        self.total += a.size


def amax_max(h: StreamingHistogram) -> float:
    return float(h.max)


def amax_percentile(h: StreamingHistogram, percentile: float) -> float:
    """Upper edge of the bin where the cumulative share of |x| reaches ``percentile`` %."""
    if h.total == 0 or h.range == 0.0:
        return 0.0
    cdf = np.cumsum(h.counts) / h.total
    i = int(np.searchsorted(cdf, percentile / 100.0, side="left"))
    return float(min(h.edges[min(i + 1, h.bins)], h.max))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def amax_entropy(h: StreamingHistogram, levels: int = 128, stride: int = 1) -> float:
    """TensorRT's entropy calibration: the clip that minimises KL(reference || quantized).

    For each candidate end bin i the reference is the first i bins with the tail folded into bin i;
    the candidate merges those bins into ``levels`` groups, spreads each group's mass evenly over its
    non-empty bins, and KL compares the two.
    """
    if h.total == 0 or h.range == 0.0:
        return 0.0
    counts = h.counts.astype(np.float64)
    nz = np.nonzero(counts)[0]
    last = int(nz[-1]) + 1
    if last <= levels:
        return float(min(h.edges[last], h.max))
    best_i, best_kl = last, np.inf
    for i in range(levels, last + 1, stride):
        ref = counts[:i].copy()
        ref[i - 1] += counts[i:].sum()
        used = counts[:i] > 0
        group = (np.arange(i) * levels) // i
        gsum = np.bincount(group, weights=counts[:i], minlength=levels)
        gcnt = np.bincount(group, weights=used.astype(np.float64), minlength=levels)
        q = np.where(used, gsum[group] / np.maximum(gcnt[group], 1), 0.0)
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        # a reference bin the candidate cannot represent: infinite divergence, skip (TensorRT smooths)
        if np.any((p > 0) & (q == 0)):
            continue
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(min(h.edges[best_i], h.max))


def amax_mse(h: StreamingHistogram, qmax: int = 127, candidates: int = 512) -> float:
    """The clip whose symmetric ``qmax`` quantization has the smallest squared error over the histogram
    (each bin represented by its centre)."""
    if h.total == 0 or h.range == 0.0:
        return 0.0
    centres = (h.edges[:-1] + h.edges[1:]) / 2
    w = h.counts.astype(np.float64)
    m = w > 0
    c, w = centres[m], w[m]
    lo = h.max / candidates
    best_a, best_e = h.max, np.inf
    for a in np.linspace(lo, h.max, candidates):
        s = a / qmax
        q = np.clip(np.round(c / s), 0, qmax) * s
        e = float(np.sum(w * (c - q) ** 2))
        if e < best_e:
            best_e, best_a = e, float(a)
    return best_a

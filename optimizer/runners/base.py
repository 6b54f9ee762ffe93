"""``BaseRunner``: the one interface every backend shares (Polygraphy ``BaseRunner`` style).

A runner is a context manager: ``activate()`` loads the model / session / engine, ``deactivate()``
frees it. Named inputs in, named outputs out::

    with OrtRunner("m.onnx") as r:
        out = r.infer({r.input_name: x})          # {"logits": np.ndarray}

Timing goes through a fast path that allocates the input once per batch size and never copies
outputs back to the host: ``run_once(batch)`` runs one inference to completion and
``infer_timed(batch)`` returns its latency in milliseconds, measured with CUDA events on GPU
runners and a monotonic host clock on CPU runners.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import VitoptError

DEFAULT_SAMPLE_SHAPE = (3, 224, 224)


class BaseRunner:
    """Subclasses set ``backend`` and implement ``_activate``, ``_deactivate``, ``_infer``,
    ``_prepare`` (allocate a timing input of one batch size) and ``_run_prepared``."""

    backend: str = "base"
    device: str = "cpu"

    def __init__(self, name: Optional[str] = None):
        self.name = name or self.backend
        self.is_active = False
        self.input_names: List[str] = []
        self.output_names: List[str] = []
        self.precision: str = "fp32"
        self._prepared_batch: Optional[int] = None
        self._prepared_shape: Optional[Tuple[int, ...]] = None
        self._prepared_data: Optional[np.ndarray] = None

    # ---- lifecycle -------------------------------------------------------------------------
    def activate(self) -> "BaseRunner":
        """Load the model; idempotent."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Free what ``activate`` allocated; idempotent."""
        if self.is_active:
            self._prepared_batch = None
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def _require_active(self) -> None:
        if not self.is_active:
            raise VitoptError(f"runner {self.name} is not active: use it as `with runner:` or call activate()")

    # ---- metadata --------------------------------------------------------------------------
    @property
    def input_name(self) -> str:
        """Name of the (first) model input."""
        self._require_active()
        return self.input_names[0]

    @property
    def sample_shape(self) -> Optional[Tuple[int, ...]]:
        """Per-image input shape (without the batch axis) when the model declares it, else None."""
        return None

    @property
    def input_dtype(self):
        """numpy dtype the input is fed as."""
        return np.float32

    def info(self) -> dict:
        """Backend settings recorded with every benchmark row (threads, providers, flags)."""
        return {}

    # ---- inference -------------------------------------------------------------------------
    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one inference. ``feed`` maps input names to arrays; returns output name -> array.

        Raises VitoptError when an input is missing or unexpected.
        Example: ``runner.infer({runner.input_name: np.zeros((1, 3, 224, 224), np.float32)})``
        """
        self._require_active()
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names]
        if missing or extra:
            raise VitoptError(f"runner {self.name}: feed has inputs {sorted(feed)}, model expects {self.input_names}")
        return self._infer({k: np.asarray(v) for k, v in feed.items()})

    def prepare(self, batch: int, sample_shape: Optional[Sequence[int]] = None, seed: int = 0,
                data: Optional[np.ndarray] = None) -> None:
        """Allocate the timing input of ``batch`` images for ``run_once``/``infer_timed`` (once per batch).

        By default a seeded standard-normal tensor. ``data`` (N, *sample) feeds real images instead,
        the first ``batch`` rows, cycled when N < batch: input-adaptive models (gates) run a
        different amount of work on noise than on images, so their timing needs real inputs.
        Raises VitoptError for a non-positive batch or a ``data`` array that is not (N, *sample).
        """
        self._require_active()
        if batch < 1:
            raise VitoptError(f"batch size must be positive, got {batch}")
        if data is not None:
            data = np.asarray(data)
            if data.ndim < 2 or data.shape[0] < 1:
                raise VitoptError(f"runner {self.name}: timing data must be (N, *sample_shape), got {data.shape}")
            shape = tuple(data.shape[1:])
            if sample_shape and tuple(sample_shape) != shape:
                raise VitoptError(f"runner {self.name}: timing data has samples of shape {shape}, "
                                  f"expected {tuple(sample_shape)}")
        else:
            shape = tuple(sample_shape) if sample_shape else (self.sample_shape or DEFAULT_SAMPLE_SHAPE)
        if self._prepared_batch == batch and self._prepared_shape == shape and self._prepared_data is data:
            return
        if data is not None:
            x = data[np.resize(np.arange(data.shape[0]), batch)]      # rows cycled to fill the batch
        else:
            x = np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)  # not float64: half the memory
        self._prepare(np.ascontiguousarray(x).astype(self.input_dtype))
        self._prepared_batch, self._prepared_shape, self._prepared_data = batch, shape, data

    def _reprepare(self, batch: int) -> None:
        """Prepare another batch size from the same source (random shape or real data) as before."""
        self.prepare(batch, self._prepared_shape, data=self._prepared_data)

    def run_once(self, batch: int) -> None:
        """One inference of ``batch`` images on the prepared input, finished when this returns."""
        if self._prepared_batch != batch:
            self._reprepare(batch)
        self._run_prepared()
        self._synchronize()

    def infer_timed(self, batch: int) -> float:
        """Latency of one inference of ``batch`` images in milliseconds (host clock on CPU)."""
        if self._prepared_batch != batch:
            self._reprepare(batch)
        t0 = time.perf_counter_ns()
        self._run_prepared()
        self._synchronize()
        return (time.perf_counter_ns() - t0) / 1e6

    # ---- hooks -----------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _prepare(self, data: np.ndarray) -> None:
        raise NotImplementedError

    def _run_prepared(self) -> None:
        raise NotImplementedError

    def _synchronize(self) -> None:
        """Wait for asynchronous device work (no-op on CPU)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, device={self.device!r})"


def physical_cores() -> int:
    """Physical cores this process may use (the ORT/trtexec default for intra-op threads)."""
    import os
    try:
        import psutil
        phys = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        phys = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = phys
    return max(1, min(phys, allowed))

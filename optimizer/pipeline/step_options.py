"""Typed options of the pipeline steps (eval, export, build, bench), validated when a recipe loads.

Compression steps take their method's config (``optimizer.compress.runner.build_config``); these
take the dataclasses below. Unknown options are rejected, values are coerced and checked, so a
mistake in the last step fails before the first one runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

from ..compress.config import TypedOptions
from ..deploy import DeployOptions
from ..errors import VitoptError

BUILDERS = ("tensorrt", "tensorrt_rtx")
BENCH_BACKENDS = ("onnxruntime", "torch", "tensorrt")


def _listify(d: dict, cls) -> dict:
    """A scalar where the field is a tuple (``batch: 8``) means a one-element list."""
    tuples = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}
    return {k: ([v] if k in tuples and not isinstance(v, (list, tuple, str)) else v) for k, v in d.items()}


def _positive_ints(name: str, values) -> None:
    if not values or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values):
        raise ValueError(f"{name} must be positive integers, got {list(values)}")


class _StepOptions(TypedOptions):
    @classmethod
    def from_dict(cls, d: dict):
        return super().from_dict(_listify(d, cls))


@dataclass(frozen=True)
class EvalOptions(_StepOptions):
    """batch_size: evaluation batch; limit: at most this many images (None: all)."""
    what: ClassVar[str] = "eval"
    batch_size: int = 64
    limit: Optional[int] = None

    def __post_init__(self):
        _positive_ints("batch_size", [self.batch_size])
        if self.limit is not None:
            _positive_ints("limit", [self.limit])


@dataclass(frozen=True)
class ExportStepOptions:
    """The chain's DeployOptions plus the precisions the step writes (model.onnx for fp32,
    model.<precision>.onnx for the others); the default writes fp32 and fp16 for the build step."""
    deploy: DeployOptions
    precisions: tuple = ("fp32", "fp16")

    @classmethod
    def from_dict(cls, d: dict) -> "ExportStepOptions":
        d = dict(d)
        precisions = d.pop("precision", ["fp32", "fp16"])
        precisions = [precisions] if isinstance(precisions, str) else list(precisions or [])
        if not precisions:
            raise VitoptError("export precision: give at least one")
        deploy = DeployOptions.from_dict({**d, "precision": precisions[0]})
        for p in precisions[1:]:
            DeployOptions.from_dict({**d, "precision": p})   # each one is a valid precision
        return cls(deploy, tuple(dict.fromkeys(precisions)))


@dataclass(frozen=True)
class BuildOptions(_StepOptions):
    """batch: sizes the profile covers; precision: engines to build (each from the export step's
    ONNX of that precision); builder: tensorrt / tensorrt_rtx (None: the one installed); optional:
    skip, saying so, when no builder is installed."""
    what: ClassVar[str] = "build"
    batch: tuple[int, ...] = (1, 8, 32)
    precision: tuple[str, ...] = ("fp32",)
    builder: Optional[str] = None
    optional: bool = False

    def __post_init__(self):
        _positive_ints("batch", self.batch)
        bad = [p for p in self.precision if p not in ("fp32", "fp16")]
        if bad or not self.precision:
            raise ValueError(f"precision must be fp32 and/or fp16, got {list(self.precision)}")
        if self.builder is not None and self.builder not in BUILDERS:
            raise ValueError(f"builder must be {' or '.join(BUILDERS)}, got {self.builder!r}")


@dataclass(frozen=True)
class BenchOptions(_StepOptions):
    """backends: onnxruntime (every exported precision), torch, tensorrt (every built engine);
    batch: sizes; iters / warmup: per batch size (None: the benchmark's defaults); threads: CPU
    threads of ONNX Runtime (None: physical cores); spinning: let ORT's idle threads spin."""
    what: ClassVar[str] = "bench"
    backends: tuple[str, ...] = ("onnxruntime", "torch")
    batch: tuple[int, ...] = (1, 8, 32)
    iters: Optional[int] = None
    warmup: Optional[int] = None
    threads: Optional[int] = None
    spinning: bool = False

    def __post_init__(self):
        bad = [b for b in self.backends if b not in BENCH_BACKENDS]
        if bad or not self.backends:
            raise ValueError(f"backends must be among {', '.join(BENCH_BACKENDS)}, got {list(self.backends)}")
        _positive_ints("batch", self.batch)
        for name in ("iters", "threads"):
            if getattr(self, name) is not None:
                _positive_ints(name, [getattr(self, name)])
        if self.warmup is not None and (not isinstance(self.warmup, int) or self.warmup < 0):
            raise ValueError(f"warmup must be a non-negative integer, got {self.warmup!r}")


# step name -> options class (each has from_dict)
STEP_OPTIONS = {"eval": EvalOptions, "export": ExportStepOptions, "build": BuildOptions, "bench": BenchOptions}

"""One row of measured numbers per finished sweep variant, read from its manifest.

Accuracy (top-1, agreement with the dense model, per-image correctness) comes from the variant's
eval step, MACs / params from eval (or the last compression step), latency and throughput from its
bench rows (every row keeps the environment it was measured in), engine size and memory from its
build step. Bench files measured on other machines (``vitopt bench --json``) are merged in with
their own device description.

A quantized precision of a variant's export step (``int8``, ``int8_dynamic``: precisions whose
accuracy is their own) is a row of its own, ``<variant>+<precision>``: its accuracy from the export
step's evaluation of that graph, its latency and engine from the rows of that precision.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import VitoptError
from ..fileio import read_json
from .sweep import DENSE, read_sweep, variant_dir


@dataclass
class VariantResult:
    name: str
    label: str
    steps: list                              # [{kind: options}] as run
    precision: str = "fp32"                  # a quantized row's precision: its accuracy and latency are that graph's
    macs: Optional[float] = None
    params: Optional[int] = None
    top1: Optional[float] = None
    agreement: Optional[float] = None        # % of images with the dense model's top-1 class (dense: 100)
    per_image: dict = field(default_factory=dict)
    images: Optional[int] = None
    bench: list = field(default_factory=list)     # bench rows (dicts, rows_to_dict format) + "source", "device"
    engines: dict = field(default_factory=dict)   # precision -> {"size_mb", "weights_mb", "activation_mb", "max_batch"}

    @property
    def is_dense(self) -> bool:
        return self.name == DENSE

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"

    def _precision(self, precision: Optional[str]) -> Optional[str]:
        """The precision asked of this row: None = the row's own; a quantized row answers only for its own."""
        if self.quantized:
            return self.precision if precision in (None, self.precision) else None
        return precision or "fp32"

    def latency_ms(self, backend: str, batch: int, precision: Optional[str] = None, device: Optional[str] = None):
        """p50 latency (ms per batch) of the first matching bench row, None when not measured.
        ``precision`` None: the row's own (fp32, or the precision a quantized row was made in)."""
        precision = self._precision(precision)
        for r in self.bench:
            if (r["backend"] == backend and int(r["batch"]) == int(batch) and r.get("precision") == precision
                    and (device is None or r["device_label"] == device)):
                return r["p50_ms"]
        return None

    def memory_mb(self, precision: Optional[str] = None) -> Optional[float]:
        """Engine device memory (weights + activations at its largest batch), None without an engine."""
        e = self.engines.get(self._precision(precision))
        if not e or e.get("weights_mb") is None or e.get("activation_mb") is None:
            return None
        return e["weights_mb"] + e["activation_mb"]

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "steps": self.steps, "precision": self.precision,
                "macs": self.macs, "params": self.params,
                "top1": self.top1, "agreement": self.agreement, "images": self.images, "bench": self.bench,
                "engines": self.engines}


def device_label(row: dict) -> str:
    """What machine a bench row was measured on, in a few words (GPU name, else CPU and cores)."""
    env = row.get("env") or {}
    if env.get("gpu"):
        return str(env["gpu"])
    return f"{env.get('cpu', 'cpu')} ({env.get('physical_cores', '?')} cores)"


def _mb(b):
    return None if b is None else round(b / 1e6, 2)


def _from_manifest(v: dict) -> list:
    """The variant's row, then one row per quantized precision its export step evaluated."""
    m = v["manifest"]
    res = VariantResult(v["name"], v.get("label", v["name"]), v.get("steps", []))
    quantized = {}
    for s in m.get("steps", []):
        r = s.get("result") or {}
        if s["step"] == "eval":
            res.macs, res.params = r.get("macs"), r.get("params")
            res.top1, res.agreement, res.images = r.get("top1"), r.get("agreement"), r.get("images")
            res.per_image = r.get("per_image") or {}
        elif s["step"] == "export":
            for prec, rep in (r.get("precisions") or {}).items():
                if rep.get("eval"):
                    quantized[prec] = rep["eval"]
        elif s["step"] == "bench":
            for row in r.get("rows", []):
                res.bench.append({**row, "source": "sweep", "device_label": device_label(row)})
        elif s["step"] == "build" and not r.get("skipped"):
            for prec, info in r.items():
                mem = info.get("memory") or {}
                res.engines[prec] = {"size_mb": _mb(info.get("engine_size_bytes")),
                                     "weights_mb": _mb(mem.get("weights_bytes")),
                                     "activation_mb": _mb(mem.get("activation_bytes")),
                                     "max_batch": max((info.get("profile") or {}).get("batch_sizes") or [0]) or None}
        elif "after" in r and res.macs is None:
            res.macs, res.params = r["after"].get("macs"), r["after"].get("params")
    if res.is_dense and res.top1 is not None and res.agreement is None:
        res.agreement = 100.0   # the dense model is the reference
    rows = [res]
    for prec, ev in quantized.items():
        q = VariantResult(f"{res.name}+{prec}", f"{res.label}, {prec}", res.steps, precision=prec, macs=res.macs,
                          params=res.params, top1=ev.get("top1"), agreement=ev.get("agreement"),
                          per_image=ev.get("per_image") or {}, images=ev.get("images"),
                          bench=[b for b in res.bench if b.get("precision") == prec],
                          engines={k: e for k, e in res.engines.items() if k == prec})
        rows.append(q)
    # the variant's own row keeps the unquantized precisions' numbers
    res.bench = [b for b in res.bench if b.get("precision") not in quantized]
    res.engines = {k: e for k, e in res.engines.items() if k not in quantized}
    return rows


def _merge_bench(results: list, spec: str) -> None:
    """Add the rows of a ``vitopt bench --json`` file, ``VARIANT=FILE`` or a FILE whose target lies in a variant dir."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = None, spec
    obj = read_json(path, f"--bench file not found: {path}")
    if obj.get("format") != "vitopt-bench" or not isinstance(obj.get("rows"), list):
        raise VitoptError(f"--bench {path} is not a vitopt bench result (format vitopt-bench with rows)")
    by_name = {r.name: r for r in results}
    if name is None:
        target = Path(str(obj.get("target") or ""))
        hits = [p for p in target.parts if p in by_name]
        if not hits:
            raise VitoptError(f"--bench {path}: its target {str(target) or '(none)'} names no variant of this sweep; "
                              f"give VARIANT={path} (variants: {', '.join(by_name)})")
        name = hits[-1]
    if name not in by_name:
        raise VitoptError(f"--bench {spec}: no variant {name!r} (variants: {', '.join(by_name)})")
    for row in obj["rows"]:
        # rows of a quantized graph (``vitopt bench model.int8_dynamic.onnx``) belong to that precision's row
        target = by_name.get(f"{name}+{row.get('precision')}", by_name[name])
        target.bench.append({**row, "source": os.path.basename(path), "device_label": device_label(row)})


def sweep_results(out, bench: Sequence[str] = ()) -> list:
    """VariantResult of every finished variant of the sweep in ``out`` (dense first), with ``bench`` files merged.

    Raises VitoptError when ``out`` is not a sweep directory or no variant has finished.
    """
    meta = read_sweep(out)
    done = [v for v in meta.get("variants", []) if v["finished"]]
    if not done:
        raise VitoptError(f"{out}: no finished variant yet (run `vitopt sweep` into it)")
    results = sorted((r for v in done for r in _from_manifest(v)),
                     key=lambda r: (not r.is_dense, -(r.macs or 0), r.name))
    for spec in bench:
        _merge_bench(results, spec)
    return results


def pareto(points: Sequence[tuple]) -> list:
    """Indices of the points (cost, value) no other point beats: lower-or-equal cost and higher-or-equal
    value, one of them strictly. Points with a None are never on the frontier."""
    idx = []
    for i, (c, v) in enumerate(points):
        if c is None or v is None:
            continue
        dominated = any(c2 is not None and v2 is not None and c2 <= c and v2 >= v and (c2 < c or v2 > v)
                        for j, (c2, v2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return idx


def unfinished(out) -> list:
    """Names of planned variants without a manifest."""
    return [v["name"] for v in read_sweep(out).get("variants", []) if not v["finished"]]


__all__ = ["VariantResult", "sweep_results", "pareto", "device_label", "unfinished", "variant_dir"]

"""``vitopt pick``: the best sweep variant under measured constraints.

Best = the highest agreement with the dense model among the variants that meet every constraint
(ties: the lower latency at the asked batch); without agreement numbers (no evaluation images or
random weights), the lowest latency. Memory is the engine's device memory (weights + activations at
its largest batch) from the build step, so a memory constraint needs built engines. A quantized
row (``<variant>+int8_dynamic``) competes with its own latency and agreement; ``precision`` None
judges every row at its own precision, fp32 / fp16 only the unquantized rows at that precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import VitoptError
from .results import VariantResult


@dataclass(frozen=True)
class PickConstraints:
    batch: int
    backend: str = "onnxruntime"
    precision: Optional[str] = None          # None: each row at its own precision (fp32 or quantized)
    max_latency_ms: Optional[float] = None
    min_agreement: Optional[float] = None
    max_memory_mb: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.batch, int) or self.batch < 1:
            raise VitoptError(f"--batch must be a positive integer, got {self.batch!r}")
        for name in ("max_latency_ms", "max_memory_mb"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise VitoptError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 100:
            raise VitoptError(f"--min-agreement is a percentage in [0, 100], got {self.min_agreement}")


@dataclass
class Pick:
    chosen: Optional[VariantResult]
    candidates: list            # [{"name", "latency_ms", "agreement", "memory_mb", "misses": {constraint: relative}}]
    closest: Optional[dict] = None   # when nothing fits: the variant and constraint nearest to being met

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.name if self.chosen else None, "candidates": self.candidates,
                "closest": self.closest}


def _prec(c: PickConstraints) -> str:
    return f"{c.precision} " if c.precision else ""


def _measures(r: VariantResult, c: PickConstraints) -> dict:
    return {"latency_ms": r.latency_ms(c.backend, c.batch, c.precision), "agreement": r.agreement,
            "memory_mb": r.memory_mb(c.precision)}


def pick_variant(results: Sequence[VariantResult], c: PickConstraints) -> Pick:
    """Choose among ``results``; raises VitoptError when a constraint is reported by no variant."""
    rows = []
    for r in results:
        m = _measures(r, c)
        if m["latency_ms"] is None:
            continue   # not measured at this backend / batch / precision: cannot be judged
        rows.append((r, m))
    if not rows:
        raise VitoptError(f"no variant has a {c.backend} {_prec(c)}latency at batch {c.batch} "
                          "(bench it: the recipe's bench step, or --bench files in vitopt report)")
    checks = [("max_latency_ms", "latency_ms", c.max_latency_ms, "max"),
              ("min_agreement", "agreement", c.min_agreement, "min"),
              ("max_memory_mb", "memory_mb", c.max_memory_mb, "max")]
    for flag, key, limit, _ in checks:
        if limit is not None and all(m[key] is None for _, m in rows):
            why = {"memory_mb": "no variant has an engine with memory figures (add a build step)",
                   "agreement": "no variant reports agreement (evaluation images and real weights needed)",
                   "latency_ms": ""}[key]
            raise VitoptError(f"--{flag.replace('_', '-')}: {why}")
    cands, fits = [], []
    for r, m in rows:
        misses = {}
        for flag, key, limit, kind in checks:
            if limit is None:
                continue
            v = m[key]
            if v is None:
                misses[flag] = float("inf")
            elif kind == "max" and v > limit:
                misses[flag] = (v - limit) / limit
            elif kind == "min" and v < limit:
                misses[flag] = (limit - v) / max(limit, 1e-9)
        cands.append({"name": r.name, **{k: (round(v, 4) if v is not None else None) for k, v in m.items()},
                      "misses": {k: (round(v, 4) if v != float("inf") else None) for k, v in misses.items()}})
        if not misses:
            fits.append((r, m))
    if fits:
        has_agree = any(m["agreement"] is not None for _, m in fits)
        best = min(fits, key=lambda rm: ((-(rm[1]["agreement"] or 0)) if has_agree else 0, rm[1]["latency_ms"]))
        return Pick(best[0], cands)
    # nothing fits: the variant whose worst miss is smallest, and that miss
    def worst(cd):
        vals = [v if v is not None else float("inf") for v in cd["misses"].values()]
        return max(vals) if vals else 0.0
    near = min(cands, key=worst)
    flag, miss = max(((k, v if v is not None else float("inf")) for k, v in near["misses"].items()),
                     key=lambda kv: kv[1])
    return Pick(None, cands, {"name": near["name"], "constraint": flag, "relative_miss": miss,
                              "value": near[{"max_latency_ms": "latency_ms", "min_agreement": "agreement",
                                             "max_memory_mb": "memory_mb"}[flag]]})


def describe(p: Pick, c: PickConstraints) -> str:
    """One line for the terminal."""
    unit = {"max_latency_ms": "ms", "min_agreement": "%", "max_memory_mb": "MB"}
    if p.chosen is not None:
        m = _measures(p.chosen, c)
        parts = [f"{c.backend} {c.precision or p.chosen.precision} batch {c.batch}: {m['latency_ms']:.2f} ms"]
        if m["agreement"] is not None:
            parts.append(f"agreement {m['agreement']:.2f} %")
        if m["memory_mb"] is not None:
            parts.append(f"engine memory {m['memory_mb']:.1f} MB")
        return f"pick: {p.chosen.name} ({p.chosen.label}): " + ", ".join(parts)
    n = p.closest
    limit = getattr(c, n["constraint"])
    v = n["value"]
    have = "not reported" if v is None else f"{v:.2f} {unit[n['constraint']]}"
    return (f"pick: no variant meets every constraint; closest: {n['name']} misses --{n['constraint'].replace('_', '-')} "
            f"{limit:g} ({have}, {100 * n['relative_miss']:.1f} % off)")

"""Recipe files: validated, with ${VAR} / ${VAR:-default} expansion and unknown keys rejected.

    model: deit_tiny_patch16_224
    checkpoint: ${VITOPT_CHECKPOINT:-}      # empty -> none (random weights, said everywhere)
    data: ${VITOPT_DATA:-}                  # evaluation / parity images (optional)
    calib: ${VITOPT_CALIB:-}                # calibration images for compression steps
    steps:
      - slim: {macs: 0.7}                   # any registered method, options = its config fields
      - eval: {batch_size: 64}
      - export: {opset: 18}
      - build: {batch: [1, 8, 32], precision: [fp32, fp16]}
      - bench: {backends: [onnxruntime, torch, tensorrt], batch: [1, 8, 32]}
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import VitoptError
from .order import check_order

TOP_KEYS = {"version", "model", "model_kwargs", "checkpoint", "data", "calib", "synsets", "device", "seed", "workers", "steps"}
# = optimizer.methods.gates.export.GATES_K_MODES (a test keeps them equal); not imported from there
# because that module pulls in torch and loading a recipe stays light
GATES_K_MODES = ("data", "fixed")
PIPELINE_STEPS = {
    "eval": {"batch_size", "limit", "reference"},
    "export": {"opset", "exporter", "cleanup", "parity_images", "atol", "gates_k"},
    "build": {"batch", "precision", "builder", "optional"},
    "bench": {"backends", "batch", "iters", "warmup", "threads", "spinning"},
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value):
    if isinstance(value, str):
        def sub(m):
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise VitoptError(f"recipe uses ${{{m.group(1)}}} but it is not set (write ${{{m.group(1)}:-}} for optional)")
        out = _VAR.sub(sub, value)
        return out if out != "" else None
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return value


@dataclass
class Step:
    kind: str                 # a pipeline step name or a compression method name
    options: dict = field(default_factory=dict)


@dataclass
class Recipe:
    model: str
    model_kwargs: dict = field(default_factory=dict)   # timm.create_model keyword arguments
    checkpoint: Optional[str] = None
    data: Optional[str] = None
    calib: Optional[str] = None
    synsets: Optional[str] = None
    device: str = "cpu"
    seed: int = 0
    workers: int = 2
    steps: list = field(default_factory=list)
    source: str = ""


def load_recipe(path: str | os.PathLike) -> Recipe:
    import yaml
    from ..compress.registry import METHOD_MODULES
    p = Path(path)
    if not p.is_file():
        raise VitoptError(f"recipe not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise VitoptError(f"recipe {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise VitoptError(f"recipe {p} must be a mapping with 'model' and 'steps'")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise VitoptError(f"recipe {p}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    if raw.get("version", 1) != 1:
        raise VitoptError(f"recipe {p}: version {raw.get('version')} is not supported (1)")
    raw = expand(raw)
    if not raw.get("model"):
        raise VitoptError(f"recipe {p}: 'model' is required")
    steps_raw = raw.get("steps") or []
    if not isinstance(steps_raw, list) or not steps_raw:
        raise VitoptError(f"recipe {p}: 'steps' must be a non-empty list")
    steps = []
    for i, s in enumerate(steps_raw):
        if isinstance(s, str):
            s = {s: {}}
        if not isinstance(s, dict) or len(s) != 1:
            raise VitoptError(f"recipe {p}: step {i + 1} must be a single 'name: {{options}}' mapping")
        (kind, opts), = s.items()
        opts = opts or {}
        if not isinstance(opts, dict):
            raise VitoptError(f"recipe {p}: options of step {i + 1} ({kind}) must be a mapping")
        if kind in PIPELINE_STEPS:
            bad = sorted(set(opts) - PIPELINE_STEPS[kind])
            if bad:
                raise VitoptError(f"recipe {p}: step {i + 1} ({kind}): unknown option(s) {', '.join(bad)} "
                                  f"(known: {', '.join(sorted(PIPELINE_STEPS[kind]))})")
            if kind == "export" and opts.get("gates_k", "data") not in GATES_K_MODES:
                # checked here, not at the export step, so a long compress step never runs in vain
                raise VitoptError(f"recipe {p}: step {i + 1} (export): gates_k must be {' or '.join(GATES_K_MODES)}, "
                                  f"got {opts['gates_k']!r}")
        elif kind not in METHOD_MODULES:
            raise VitoptError(f"recipe {p}: step {i + 1}: unknown step '{kind}' "
                              f"(steps: {', '.join(sorted(PIPELINE_STEPS))}; methods: {', '.join(sorted(METHOD_MODULES))})")
        steps.append(Step(kind, dict(opts)))
    check_order(steps, f"recipe {p}")   # before any work: a nonsensical order never starts a long step
    device = raw.get("device") or "cpu"
    if device not in ("cpu", "cuda", "auto"):
        raise VitoptError(f"recipe {p}: device must be cpu, cuda or auto, got {device!r}")
    try:
        seed, workers = int(raw.get("seed") or 0), int(raw.get("workers") if raw.get("workers") is not None else 2)
    except (TypeError, ValueError):
        raise VitoptError(f"recipe {p}: seed and workers must be integers") from None
    mk = raw.get("model_kwargs") or {}
    if not isinstance(mk, dict):
        raise VitoptError(f"recipe {p}: model_kwargs must be a mapping")
    return Recipe(model=str(raw["model"]), model_kwargs=mk, checkpoint=raw.get("checkpoint"), data=raw.get("data"),
                  calib=raw.get("calib"), synsets=raw.get("synsets"), device=device, seed=seed, workers=workers,
                  steps=steps, source=str(p))

"""Recipe files: validated, with ${VAR} / ${VAR:-default} expansion and unknown keys rejected.

    model: deit_tiny_patch16_224
    checkpoint: ${VITOPT_CHECKPOINT:-}      # empty -> none (random weights, said everywhere)
    data: ${VITOPT_DATA:-}                  # evaluation / parity images (optional)
    calib: ${VITOPT_CALIB:-}                # calibration images for compression steps
    steps:
      - slim: {macs: 0.7}                   # any registered method, options = its config fields
      - eval: {batch_size: 64}
      - export: {opset: 18}                 # optimizer.deploy.DeployOptions keys (+ precision list)
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
    options: dict = field(default_factory=dict)   # as written in the recipe (recorded in the manifest)
    config: object = None     # typed options of a pipeline step (step_options.STEP_OPTIONS); None for
    #                           a compression step, whose method config is built before the run starts


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
    from .step_options import STEP_OPTIONS
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
        config = None
        if kind in STEP_OPTIONS:
            # checked here, not when the step runs, so a long compress step never runs in vain
            try:
                config = STEP_OPTIONS[kind].from_dict(opts)
            except VitoptError as e:
                raise VitoptError(f"recipe {p}: step {i + 1} ({kind}): {e}") from None
        elif kind not in METHOD_MODULES:
            raise VitoptError(f"recipe {p}: step {i + 1}: unknown step '{kind}' "
                              f"(steps: {', '.join(sorted(STEP_OPTIONS))}; methods: {', '.join(sorted(METHOD_MODULES))})")
        steps.append(Step(kind, dict(opts), config))
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

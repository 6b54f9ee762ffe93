"""Shared by ``vitopt compress`` and ``vitopt run``: load, build configs, compress, save."""
from __future__ import annotations

import copy
import os
from typing import Optional, Sequence

from ..errors import VitoptError
from .api import CompressedModel, compress
from .registry import CompressContext, get_method

BUDGET_FLAGS = {"macs": "macs_ratio", "params": "params_ratio", "latency": "latency_ratio"}


def build_config(method: str, options: dict):
    """Config for ``method`` from recipe/CLI options; ``macs``/``params``/``latency`` map to the ratio fields."""
    opts = dict(options)
    for short, field_name in BUDGET_FLAGS.items():
        if short in opts:
            if field_name in opts:
                raise VitoptError(f"give either {short} or {field_name}, not both")
            opts[field_name] = opts.pop(short)
    cls = get_method(method).config_cls
    import dataclasses
    fields = {f.name for f in dataclasses.fields(cls)}
    for short, field_name in BUDGET_FLAGS.items():
        if field_name in opts and field_name not in fields:
            raise VitoptError(f"method '{method}' takes no --{short} budget "
                              f"(it takes: {', '.join(BUDGET_FLAGS[k] for k in BUDGET_FLAGS if BUDGET_FLAGS[k] in fields) or 'none'})")
    return cls.from_dict({**opts, "method": method})


def parse_set_options(items: Sequence[str]) -> dict:
    """``["epochs=2", "recovery.lr=1e-4"]`` -> ``{"epochs": "2", "recovery": {"lr": "1e-4"}}`` (a dotted key
    sets a field of a nested options block, e.g. the ``recovery`` config)."""
    out: dict = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VitoptError(f"--set expects key=value, got {item!r}")
        *outer, last = key.strip().replace("-", "_").split(".")
        d = out
        for part in outer:
            d = d.setdefault(part, {})
            if not isinstance(d, dict):
                raise VitoptError(f"--set {key.strip()}: {part} is set both as a value and as a block")
        if isinstance(d.get(last), dict):
            raise VitoptError(f"--set {key.strip()}: {last} is set both as a value and as a block")
        d[last] = value.strip()
    return out


def compress_loaded(loaded, configs, calib: Optional[str], teacher=None, device: str = "cpu", workers: int = 2,
                    seed: int = 0, work_dir: Optional[str] = None, log=print, synsets=None) -> CompressedModel:
    """Compress a ``LoadedModel`` (dense or already compressed) with ``configs``."""
    import torch
    from .saving import compressed_from_loaded
    if loaded.is_random and loaded.weights != "compressed":
        log("warning: compressing RANDOM weights (no checkpoint): the result is only good for latency tests")
    if calib is not None and not os.path.isdir(calib):
        raise VitoptError(f"calibration directory not found: {calib}")
    torch.manual_seed(seed)
    if teacher is None:
        teacher = copy.deepcopy(loaded.model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = CompressContext(calib_dir=calib, teacher=teacher, device=device, workers=workers, seed=seed,
                          work_dir=work_dir, log=log, synsets=synsets)
    prior = compressed_from_loaded(loaded) if loaded.weights == "compressed" else None
    base_weights = prior.base_weights if prior else ("random" if loaded.is_random else loaded.weights)
    cm = compress(loaded.model, configs, ctx, arch=loaded.arch, model_kwargs=loaded.model_kwargs,
                  base_weights=base_weights, prior_steps=prior.steps if prior else ())
    cm.base_weights_sha256 = prior.base_weights_sha256 if prior else loaded.weights_sha256
    cm.model.eval()
    return cm

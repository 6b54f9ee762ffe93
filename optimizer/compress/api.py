"""``compress()``: apply method configs in order, recording a replayable recipe."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import VitoptError
from .config import MethodConfig
from .registry import CompressContext, get_method

RECIPE_VERSION = 1


@dataclass
class CompressedModel:
    model: Any
    arch: str
    model_kwargs: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)   # [{"method", "config", "structure", "report"}]
    base_weights: str = "checkpoint"           # "checkpoint" | "pretrained" | "random"
    base_weights_sha256: str | None = None     # sha256 of the base weights file (None: random / unknown)

    def recipe(self) -> dict:
        return {"format": "vitopt-recipe", "version": RECIPE_VERSION, "arch": self.arch,
                "model_kwargs": self.model_kwargs, "base_weights": self.base_weights,
                "base_weights_sha256": self.base_weights_sha256,
                "steps": [{k: s[k] for k in ("method", "config", "structure")} for s in self.steps],
                "reports": [s.get("report", {}) for s in self.steps]}


def compress(model, configs: Sequence[MethodConfig], ctx: CompressContext | None = None, arch: str = "",
             model_kwargs: dict | None = None, base_weights: str = "checkpoint",
             prior_steps: Sequence[dict] = ()) -> CompressedModel:
    """Apply each config's method in order to ``model`` (modified in place where the method can).

    ``prior_steps`` are the recipe steps already applied to ``model`` (compressing a compressed model).
    Example: ``compress(model, [SlimConfig(macs_ratio=0.7)], CompressContext(calib_dir="train/"))``
    """
    ctx = ctx or CompressContext()
    steps = list(prior_steps)
    if not configs:
        raise VitoptError("compress() needs at least one method config")
    for cfg in configs:
        if not isinstance(cfg, MethodConfig):
            raise VitoptError(f"not a method config: {cfg!r}")
        method = get_method(cfg.method)
        t0 = time.perf_counter()
        result = method.apply(model, cfg, ctx)
        model = result.model
        report = dict(result.report)
        report.setdefault("seconds", round(time.perf_counter() - t0, 2))
        steps.append({"method": cfg.method, "config": cfg.to_dict(), "structure": result.structure,
                      "report": report})
    return CompressedModel(model, arch, dict(model_kwargs or {}), steps, base_weights)

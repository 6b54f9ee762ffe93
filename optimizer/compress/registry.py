"""Method registry: short names (CLI, recipes) -> config class + transform + rebuild.

Method modules are imported on first use so that ``import optimizer`` stays light.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import VitoptError

# name -> module that registers it on import
METHOD_MODULES = {
    "slim": "optimizer.methods.slim",
    "lowrank": "optimizer.methods.lowrank",
    "gates": "optimizer.methods.gates",
    "distill": "optimizer.distill.method",   # recovery step: weights only, no structure
}

_REGISTRY: dict = {}


@dataclass
class StepResult:
    """What a method's ``apply`` returns: the new model, the structure that rebuilds it, a report."""
    model: Any
    structure: dict
    report: dict = field(default_factory=dict)


@dataclass
class CompressContext:
    """What a method may use besides the model.

    calib_dir    image folder for calibration / search / recovery (labels optional)
    teacher      the dense original model, frozen (for distillation); may be None
    device       "cpu" or "cuda"
    workers      DataLoader workers
    seed         for every random choice
    work_dir     where a method may keep resumable checkpoints (None: not resumable)
    log          callable(str) for progress lines
    """
    calib_dir: Optional[str] = None
    teacher: Any = None
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    work_dir: Optional[str] = None
    log: Callable[[str], None] = print
    synsets: Optional[str] = None

    def calib_loader(self, model, batch_size: int, train: bool = False, shuffle: bool = False,
                     labeled: bool = False, limit: Optional[int] = None):
        if not self.calib_dir:
            raise VitoptError("this method needs calibration images (--calib DIR)")
        from ..data import build_loader
        return build_loader(self.calib_dir, model, batch_size=batch_size, synsets=self.synsets, labeled=labeled,
                            train=train, shuffle=shuffle, workers=self.workers, limit=limit, seed=self.seed)


@dataclass
class Method:
    name: str
    config_cls: type
    apply: Callable      # (model, config, ctx) -> StepResult
    rebuild: Callable    # (model, structure) -> model with the compressed architecture (weights arbitrary)
    description: str = ""


def register_method(name: str, config_cls: type, apply: Callable, rebuild: Callable, description: str = "") -> Method:
    m = Method(name, config_cls, apply, rebuild, description)
    config_cls.method = name
    _REGISTRY[name] = m
    return m


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        mod = METHOD_MODULES.get(name)
        if mod is None:
            raise VitoptError(f"unknown compression method '{name}' (known: {', '.join(sorted(METHOD_MODULES))})")
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(mod):
                raise VitoptError(f"compression method '{name}' is not available in this build") from None
            raise
    if name not in _REGISTRY:
        raise VitoptError(f"compression method '{name}' is not available in this build")
    return _REGISTRY[name]


def method_names() -> list:
    return sorted(METHOD_MODULES)

"""Method registry: short names (CLI, recipes) -> config class + transform + rebuild.

Method modules are imported on first use so that ``import optimizer`` stays light.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from ..errors import VitoptError


@dataclass(frozen=True)
class ExportOption:
    """An export choice a method adds to ``vitopt export`` / recipe ``export`` steps (``--NAME`` / ``NAME:``).

    None (the option not given) leaves the choice to the method's export form.
    """
    choices: tuple
    help: str


@dataclass(frozen=True)
class MethodEntry:
    """What the registry knows before a method's module is imported (loading a recipe or building the
    CLI parser must not import torch): the module that registers it, the export options it declares,
    its role in a recipe ("compression" changes the structure, "recovery" only the weights) and the
    methods it may not follow, each with the reason a user sees (``optimizer.pipeline.order``)."""
    module: str
    export_options: Mapping[str, ExportOption] = field(default_factory=dict)
    role: str = "compression"
    not_after: Mapping[str, str] = field(default_factory=dict)


METHODS = MappingProxyType({
    "slim": MethodEntry("optimizer.methods.slim", not_after={
        "lowrank": "slim after lowrank is not supported: slim slices dense Linear weights; put slim first",
        "gates": "slim after gates would slice widths the gate nets were calibrated on; put slim first",
        "merge": "slim after merge is not supported: use slim's token_mode merge (slim: {token_mode: merge})"}),
    "lowrank": MethodEntry("optimizer.methods.lowrank", not_after={
        "gates": "lowrank after gates would factorise layers whose gates were calibrated unfactorised; "
                 "put lowrank before gates"}),
    "gates": MethodEntry("optimizer.methods.gates", {"gates_k": ExportOption(
        ("data", "fixed"),
        "models with a gates step: 'data' (default: K = count of gate scores over the threshold, "
        "input-adaptive) or 'fixed' (each module's calibrated mean K: static shapes)")}),
    "merge": MethodEntry("optimizer.methods.merge", not_after={
        "lowrank": "merge after lowrank is not supported: put merge (or slim's token_mode merge) first",
        "gates": "merge after gates would change the tokens the gate nets were calibrated on; put merge first"}),
    # weights only, no structure
    "distill": MethodEntry("optimizer.distill.method", role="recovery", not_after={
        "gates": "distill after gates is not supported: use the gates step's own fine-tune (recovery.steps), "
                 "which keeps the gate groups it was trained with"}),
})
# name -> module that registers it on import
METHOD_MODULES = {name: entry.module for name, entry in METHODS.items()}


def export_options() -> dict:
    """``{option name: ExportOption}`` over every method (names are unique across methods)."""
    out: dict = {}
    for entry in METHODS.values():
        out.update(entry.export_options)
    return out

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

    def calib_dataset(self, model, train: bool = False, labeled: bool = False, limit: Optional[int] = None):
        """The calibration folder as a dataset with the model's timm transform (for ``distributed.sharded_loader``:
        loops that run under torchrun take their part of every global batch from it)."""
        if not self.calib_dir:
            raise VitoptError("this method needs calibration images (--calib DIR)")
        from ..data.folder import ImageFolderData, eval_transform, train_transform
        tf = train_transform(model) if train else eval_transform(model)
        return ImageFolderData(self.calib_dir, tf, synsets=self.synsets, labeled=labeled, limit=limit,
                               num_classes=getattr(model, "num_classes", None))

    def say(self, line: str) -> None:
        """``log`` on rank 0 only (every rank runs the same loop; one prints its progress)."""
        from ..distributed import is_main
        if self.log is not None and is_main():
            self.log(line)


@dataclass
class Method:
    name: str
    config_cls: type
    apply: Callable      # (model, config, ctx) -> StepResult
    rebuild: Callable    # (model, structure) -> model with the compressed architecture (weights arbitrary)
    description: str = ""
    # the form the model exports in: a context manager (model, export options) -> (model to export,
    # vitopt.* metadata); None: the model exports as it is (see optimizer.deploy.export_form)
    export_form: Optional[Callable] = None
    # data-dependent discrete decisions the method's modules take (token matching): a context manager
    # yielding a list that receives, per forward pass inside it, each sample's margin to another decision
    # as an (N,) tensor; the export parity check judges samples at a near-tie by cosine
    # (optimizer.deploy.chain.decision_margins); None: the method takes no such decision
    decision_margins: Optional[Callable] = None


def register_method(name: str, config_cls: type, apply: Callable, rebuild: Callable, description: str = "",
                    export_form: Optional[Callable] = None, decision_margins: Optional[Callable] = None) -> Method:
    m = Method(name, config_cls, apply, rebuild, description, export_form, decision_margins)
    config_cls.method = name
    _REGISTRY[name] = m
    return m


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        mod = METHOD_MODULES.get(name)
        if mod is None:
            raise VitoptError(f"unknown compression method '{name}' (known: {', '.join(sorted(METHOD_MODULES))})")
        importlib.import_module(mod)
    if name not in _REGISTRY:   # a module listed here must register its method on import
        raise VitoptError(f"module {METHOD_MODULES[name]} did not register the compression method '{name}'")
    return _REGISTRY[name]


def method_names() -> list:
    return sorted(METHOD_MODULES)


def registered_methods() -> list:
    """Every method, its module imported (heavy: for code that runs models, not for parsers)."""
    return [get_method(name) for name in method_names()]

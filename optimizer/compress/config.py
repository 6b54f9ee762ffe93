"""Frozen, self-validating method configs with strict dict round-trips."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Optional

from ..errors import VitoptError


@dataclasses.dataclass(frozen=True)
class TypedOptions:
    """Base of frozen option dataclasses read from recipes / the CLI: strict ``from_dict`` (unknown keys
    rejected, values coerced to the field types, ``__post_init__`` errors as one VitoptError line)."""

    what: ClassVar[str] = "options"     # how messages name these options ("export", "slim", ...)
    noun: ClassVar[str] = "options"
    # as a nested block, a plain value stands for this one field (``recovery: none`` = ``{loss: none}``)
    shorthand: ClassVar[Optional[str]] = None

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def _label(cls) -> str:
        return cls.what

    @classmethod
    def from_dict(cls, d: dict):
        label = cls._label()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise VitoptError(f"unknown {label} option(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(names))})")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in d.items():
            hint = hints.get(k)
            nested = isinstance(hint, type) and issubclass(hint, TypedOptions)
            if nested and hint.shorthand and isinstance(v, str):
                v = {hint.shorthand: v}
            if nested and isinstance(v, dict):
                # a nested options block: the keys given replace those of the field's default
                default = fields[k].default_factory() if fields[k].default_factory is not dataclasses.MISSING \
                    else fields[k].default
                base = default.to_dict() if isinstance(default, TypedOptions) else {}
                kwargs[k] = hint.from_dict({**base, **v})
            else:
                kwargs[k] = coerce(v, hint, f"{label}.{k}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise VitoptError(f"invalid {label} {cls.noun}: {e}") from None


@dataclasses.dataclass(frozen=True)
class MethodConfig(TypedOptions):
    """Base of every method config. Subclasses are frozen dataclasses that validate in ``__post_init__``."""

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1
    noun: ClassVar[str] = "config"

    def to_dict(self) -> dict:
        return {"method": self.method, "version": self.version, **super().to_dict()}

    @classmethod
    def _label(cls) -> str:
        return cls.method

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        d = dict(d)
        d.pop("method", None)
        version = d.pop("version", cls.version)
        if version != cls.version:
            raise VitoptError(f"{cls.method} config version {version} is not supported (this vitopt reads {cls.version})")
        return super().from_dict(d)

    def replace(self, **kw) -> "MethodConfig":
        return self.from_dict({**self.to_dict(), **kw})


RECOVERY_LOSSES = ("none", "logit", "manifold")


@dataclasses.dataclass(frozen=True)
class RecoveryConfig(TypedOptions):
    """The fine-tune from the dense teacher after a method's transform, spelled the same in every
    method (``slim``/``lowrank``/``gates`` configs' ``recovery`` field; recipes ``recovery: {epochs: 1}``,
    CLI ``--set recovery.epochs=1``; ``recovery: none`` / ``--set recovery=none`` set the loss alone).
    It runs ``optimizer.distill.recover``.

    loss        "none" (no fine-tune), "logit" (logit KD, beta 0) or "manifold" (manifold + logit KD)
    epochs      passes over the calibration images (0 and no steps: no fine-tune)
    steps       optimizer steps instead (wins over epochs when given)
    lr          learning rate (None: the distillation trainer's default)
    batch_size  training batch (None: the method's batch size, else the trainer's default)
    augment     timm training augmentation (None: the method's choice, else the trainer's default)
    holdout     share of the calibration images kept out of training; the weights with the lowest KL
                to the teacher on them are returned (the unrecovered model included)
    """

    what: ClassVar[str] = "recovery"
    shorthand: ClassVar[Optional[str]] = "loss"

    loss: str = "manifold"
    epochs: float = 0.0
    steps: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    augment: Optional[bool] = None
    holdout: float = 0.0

    def __post_init__(self):
        if self.loss not in RECOVERY_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(RECOVERY_LOSSES)}, got {self.loss!r}")
        check_positive("epochs", self.epochs, allow_zero=True)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if self.lr is not None:
            check_positive("lr", self.lr)
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.holdout, (int, float)) or not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be a fraction in [0, 0.5], got {self.holdout!r}")

    @property
    def enabled(self) -> bool:
        return self.loss != "none" and ((self.steps if self.steps is not None else self.epochs) or 0) > 0

    def distill_config(self, batch_size: Optional[int] = None, augment: Optional[bool] = None, **fixed):
        """The ``DistillConfig`` of this fine-tune; ``batch_size``/``augment`` are the method's
        fallbacks for fields left None, ``fixed`` sets trainer fields the method decides (tau, limit...)."""
        from ..distill.config import DistillConfig   # lazy: distill.config builds on this module
        kw = {"beta": 0.0 if self.loss == "logit" else 1.0, "holdout": self.holdout, "eval_at_start": False}
        kw.update({"steps": self.steps} if self.steps else {"epochs": self.epochs})
        for name, value, fallback in (("lr", self.lr, None), ("batch_size", self.batch_size, batch_size),
                                      ("augment", self.augment, augment)):
            if (value if value is not None else fallback) is not None:
                kw[name] = value if value is not None else fallback
        return DistillConfig(**{**kw, **fixed})


def _plain(v: Any) -> Any:
    if isinstance(v, TypedOptions):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a recipe/CLI value to the field's type; strings like "0.5" or "true" come from --set."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], name) if len(inner) == 1 else value
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [x for x in value.split(",") if x.strip()]
            elem = args[0] if args else str
            return tuple(coerce(x, elem, name) for x in value)
    except (TypeError, ValueError):
        raise VitoptError(f"{name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def config_from_dict(d: dict) -> MethodConfig:
    """Build the registered config for ``d['method']``."""
    from .registry import get_method
    if "method" not in d:
        raise VitoptError("config has no 'method' key")
    return get_method(d["method"]).config_cls.from_dict(d)


def check_ratio(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")

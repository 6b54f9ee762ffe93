"""``distill`` as a recipe step: manifold recovery of the model as the steps before it left it.

Registered like a compression method so ``vitopt run`` chains it (``- distill: {steps: 100}``)
and a saved model replays it: it changes weights, not structure, so its rebuild is the identity.
The teacher is the recipe's dense model; images are the recipe's ``calib`` folder.
"""
from __future__ import annotations

from ..compress.registry import StepResult, register_method
from ..errors import VitoptError
from .config import DistillConfig


def apply(model, cfg: DistillConfig, ctx) -> StepResult:
    """Fine-tune ``model`` in place from ``ctx.teacher`` on ``ctx.calib_dir``; report = the trainer's."""
    from .trainer import recover
    if cfg.needs_teacher and ctx.teacher is None:
        raise VitoptError("the distill step needs the dense teacher (it follows a compression step in a recipe)")
    report = dict(recover(model, ctx.teacher, ctx, cfg) or {})
    model.eval()
    return StepResult(model, {}, report)


def rebuild(model, structure: dict):
    """Distillation leaves the architecture as it was."""
    return model


register_method("distill", DistillConfig, apply, rebuild,
                "manifold distillation from the dense model: recovers what earlier steps changed")

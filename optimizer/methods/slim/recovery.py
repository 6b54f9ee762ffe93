"""Recovery fine-tune of a sliced model from the dense teacher on the calibration images.

Goes through the distillation issue's ``recover`` with ``cfg.recovery`` (the shared RecoveryConfig):
loss "manifold" uses the manifold + logit loss, "logit" plain logit KD (beta = 0). ``holdout`` keeps a share of the
calibration images out of training and returns the weights with the lowest KL to the teacher on
them (the unrecovered slice included): on DeiT-Tiny at 0.75 MACs a 1-epoch fine-tune on the
1,023 imagenet-mini images lowered val agreement from 90.0 % to 87.2 %, so a fine-tune that hurts
must not be kept.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path


def recover_model(student, teacher, ctx, cfg) -> dict:
    """Fine-tune ``student`` in place; returns a report (loss, steps, seconds, which recovery, held-out checks)."""
    if not cfg.recovery.enabled:
        return {"recovery": "none"}
    from ...distill import recover
    kind = cfg.recovery.loss
    dcfg = cfg.recovery.distill_config(batch_size=cfg.batch_size, tau=cfg.tau)
    # its resumable checkpoints live beside (not on top of) the search's
    sub = replace(ctx, work_dir=str(Path(ctx.work_dir) / "slim_recovery")) if ctx.work_dir else ctx
    report = dict(recover(student, teacher, sub, dcfg) or {})
    report["recovery"] = kind
    return report

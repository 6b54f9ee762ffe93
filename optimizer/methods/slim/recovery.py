"""Recovery fine-tune of a sliced model from the dense teacher on the calibration images.

``recovery="manifold"`` (or "auto" when ``optimizer.distill`` is installed) uses the distillation
issue's ``recover``; "logit" is a plain KD fine-tune (τ²·KL on logits, AdamW, cosine schedule).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from ...errors import VitoptError
from ...progress import progress
from .search import TeacherCache, kd_loss


def _distill_api():
    try:
        from ...distill import DistillConfig, recover
    except ImportError:
        return None
    return DistillConfig, recover


def recover_model(student, teacher, ctx, cfg) -> dict:
    """Fine-tune ``student`` in place; returns a report (loss, steps, seconds, which recovery)."""
    if cfg.recovery == "none" or cfg.recovery_epochs == 0:
        return {"recovery": "none"}
    api = _distill_api()
    if cfg.recovery == "manifold" and api is None:
        raise VitoptError("recovery=manifold needs optimizer.distill, which this build lacks (use recovery=logit)")
    if cfg.recovery == "manifold" or (cfg.recovery == "auto" and api is not None):
        DistillConfig, recover = api
        dcfg = DistillConfig(epochs=cfg.recovery_epochs, lr=cfg.recovery_lr, batch_size=cfg.recovery_batch_size,
                             tau=cfg.tau, eval_at_start=False)
        # its resumable checkpoints live beside (not on top of) the search's
        sub = replace(ctx, work_dir=str(Path(ctx.work_dir) / "slim_recovery")) if ctx.work_dir else ctx
        report = dict(recover(student, teacher, sub, dcfg) or {})
        report["recovery"] = "manifold"
        return report
    return logit_recover(student, teacher, ctx, epochs=cfg.recovery_epochs, lr=cfg.recovery_lr,
                         batch_size=cfg.recovery_batch_size, tau=cfg.tau)


def logit_recover(student, teacher, ctx, epochs: float = 1.0, lr: float = 1e-4, batch_size: int = 32,
                  tau: float = 1.0, weight_decay: float = 0.05) -> dict:
    """KD fine-tune of every weight of ``student`` against ``teacher`` logits (no labels)."""
    device = ctx.device
    student.to(device).train()
    teacher.to(device).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    per_epoch = len(ctx.calib_loader(student, batch_size, shuffle=True))
    total = max(1, int(math.ceil(epochs * per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    cache = TeacherCache(teacher)
    step, losses, t0 = 0, [], time.perf_counter()
    bar = progress(range(total), desc="slim recovery", unit="step")
    epoch = 0
    while step < total:
        loader = replace(ctx, seed=ctx.seed + 1000 + epoch).calib_loader(student, batch_size, shuffle=True)
        for batch in loader:
            if step >= total:
                break
            if batch.images.numel() == 0:
                continue
            x = batch.images.to(device)
            loss = kd_loss(student(x).float(), cache(x, batch.paths), tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(kd=f"{float(loss.detach()):.4f}")
        epoch += 1
    bar.close()
    student.eval()
    return {"recovery": "logit", "steps": total, "seconds": round(time.perf_counter() - t0, 1),
            "first_kd": losses[0] if losses else None,
            "mean_kd_last10": sum(losses[-10:]) / max(len(losses[-10:]), 1) if losses else None}

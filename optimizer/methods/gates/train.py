"""Gate training (logit distillation + MACs-target loss, sub-group augmentation) and calibration.

The gate loop is separate from ``optimizer.distill.recover`` because every step sets the gate
groups of the batch and adds the MACs term; the joint fine-tune after static pruning (gate nets
frozen) goes through ``recover``.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import VitoptError
from .modules import gated_modules, group_schedule, set_estimator, set_group_sizes


def macs_ratio_tensor(model: nn.Module, fixed_macs: float, dense_macs: float) -> torch.Tensor:
    """Mean executed MACs per image / dense MACs, differentiable in the gate decisions of the last
    training forward. ``fixed_macs``: MACs per image outside the gated modules."""
    total = None
    for m in gated_modules(model):
        if m.train_macs is None:
            continue
        t = m.train_macs.mean() if m.train_macs.ndim else m.train_macs
        total = t if total is None else total + t
    if total is None:
        raise VitoptError("no gated module ran in training mode: nothing to constrain")
    return (fixed_macs + total) / dense_macs


def gated_dense_split(model: nn.Module, dense_macs: float, example: torch.Tensor) -> float:
    """MACs per image outside the dynamic part of the gated modules (gates forced on)."""
    per_dyn = {}
    hooks = []
    for m in gated_modules(model):
        def hook(mod, inp, out):
            fixed, per_unit = mod.unit_costs(inp[0])
            per_dyn[mod] = per_dyn.get(mod, 0.0) + fixed + per_unit * mod.dynamic_units
        hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return dense_macs - sum(per_dyn.values())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_logits / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                    log_target=True, reduction="batchmean") * tau * tau


def train_gates(model: nn.Module, teacher: nn.Module, loader, *, target: float, gamma: float, steps: int,
                lr_gates: float, lr_backbone: float, kd_tau: float, subgroup_aug: bool, estimator: str,
                subgroup_mode: str = "tree",
                gumbel_tau: float, dense_macs: float, device, target_warmup: float = 0.0, log=print) -> dict:
    """Train gate nets (and optionally the backbone) in place. Returns a report dict."""
    gate_params, other = [], []
    for name, p in model.named_parameters():
        (gate_params if ".gate_net." in name else other).append(p)
    for p in other:
        p.requires_grad_(lr_backbone > 0)
    groups = [{"params": gate_params, "lr": lr_gates, "weight_decay": 0.0}]
    if lr_backbone > 0:
        groups.append({"params": other, "lr": lr_backbone, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    base = [g["lr"] for g in opt.param_groups]
    teacher.eval().requires_grad_(False).to(device)
    model.to(device).train()
    set_estimator(model, estimator, gumbel_tau)
    first = next(iter(loader))
    example = first.images[:1].to(device)
    fixed = gated_dense_split(model, dense_macs, example)
    history, t0, step, images = [], time.perf_counter(), 0, 0
    try:
        while step < steps:
            for batch in loader:
                if step >= steps:
                    break
                if batch.images.shape[0] == 0:
                    continue
                x = batch.images.to(device)
                B = x.shape[0]
                sizes = group_schedule(B, step, subgroup_aug, subgroup_mode)
                set_group_sizes(model, sizes)
                for g, b in zip(opt.param_groups, base):   # cosine decay
                    g["lr"] = b * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
                with torch.no_grad():
                    zt = teacher(x)
                zs = model(x)
                kd = kd_loss(zs, zt, kd_tau)
                ratio = macs_ratio_tensor(model, fixed, dense_macs)
                ramp = min(1.0, step / max(target_warmup * steps, 1e-9)) if target_warmup > 0 else 1.0
                goal = 1.0 + (target - 1.0) * ramp
                loss = kd + gamma * (ratio - goal) ** 2
                if not torch.isfinite(loss):
                    raise VitoptError(f"gate training loss is {float(loss)} at step {step}: lower lr_gates")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                images += B
                row = {"step": step, "kd": round(float(kd.detach()), 5), "macs_ratio": round(float(ratio.detach()), 4),
                       "loss": round(float(loss.detach()), 5), "target": round(goal, 4), "groups": len(sizes)}
                history.append(row)
                if step % 10 == 0 or step == steps:
                    log(f"gates: step {step}/{steps} kd {row['kd']:.4f} macs {row['macs_ratio']:.3f} "
                        f"loss {row['loss']:.4f}")
    finally:
        set_group_sizes(model, None)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    seconds = time.perf_counter() - t0
    tail = history[-10:]
    return {"steps": step, "images": images, "seconds": round(seconds, 1),
            "final_kd": round(sum(r["kd"] for r in tail) / max(len(tail), 1), 5),
            "final_train_macs_ratio": round(sum(r["macs_ratio"] for r in tail) / max(len(tail), 1), 4),
            "history": history[:: max(1, len(history) // 50)]}


@torch.no_grad()
def init_gates_from_importance(model: nn.Module, x: torch.Tensor, init_logit: float, spread: float) -> None:
    """Start every gate on, but ordered by importance: bias = init_logit * (1 + spread * tanh(z)),
    z = standardised importance of the unit within its module on the batch ``x``. Under the uniform
    pull of the MACs loss the least important units then cross the threshold first."""
    inputs = {}
    mods = [m for m in gated_modules(model) if m.dynamic_units]
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0])) for m in mods]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for m in mods:
        imp = m.unit_importance(inputs[m])
        z = (imp - imp.mean()) / imp.std().clamp(min=1e-12) if imp.numel() > 1 else torch.zeros_like(imp)
        m.gate_net.last.bias.copy_(init_logit * (1 + spread * torch.tanh(z)) + m.threshold)


@torch.no_grad()
def calibrate_gates(model: nn.Module, loaders: dict, device) -> dict:
    """Eval-mode gate decisions over calibration images at each group size.

    ``loaders``: {group size: loader with that batch size}. Sets on every gated module the per-unit
    on-frequency ``on_freq_min``/``on_freq_max`` (over group sizes) and ``on_freq_mean`` (mean
    over sizes) and ``mean_active``; returns {group size: mean active fraction of dynamic units}.
    """
    mods = [m for m in gated_modules(model) if m.dynamic_units]
    per_size = {m: [] for m in mods}
    summary = {}
    model.eval().to(device)
    for size, loader in loaders.items():
        for m in mods:
            m.record = []
        for batch in loader:
            if batch.images.shape[0] == 0:
                continue
            model(batch.images.to(device))
        on_total, units_total = 0, 0
        for m in mods:
            rec = torch.stack(m.record).float() if m.record else torch.zeros(1, m.dynamic_units)
            per_size[m].append(rec.mean(0))
            on_total += float(rec.sum())
            units_total += rec.numel()
            m.record = None
        summary[int(size)] = round(on_total / max(units_total, 1), 4)
    for m in mods:
        f = torch.stack(per_size[m])
        m.on_freq_min, m.on_freq_max = f.min(0).values.tolist(), f.max(0).values.tolist()
        m.on_freq_mean = f.mean(0).tolist()
        m.mean_active = float(sum(m.on_freq_mean))
    return summary

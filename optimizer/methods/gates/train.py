"""Gate training (logit distillation + MACs-target loss, sub-group augmentation) and calibration.

The gate loop is separate from ``optimizer.distill.recover`` because every step sets the gate
groups of the batch and adds the MACs term; the joint fine-tune after static pruning (gate nets
frozen) goes through ``recover``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
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


def train_gates(model: nn.Module, teacher: nn.Module, data, *, batch_size: int, seed: int, target: float,
                gamma: float, steps: int, lr_gates: float, lr_backbone: float, kd_tau: float, subgroup_aug: bool,
                estimator: str, subgroup_mode: str = "tree", gumbel_tau: float, dense_macs: float, device,
                example: torch.Tensor, target_warmup: float = 0.0, workers: int = 0, amp: bool = False,
                checkpoint: Optional[Path] = None, checkpoint_every: int = 20, log=print) -> dict:
    """Train gate nets (and optionally the backbone) in place on the dataset ``data``. Returns a report dict.

    Epoch e visits ``data`` in global batches of ``batch_size`` drawn from (seed, e); step s cuts its
    batch into the gate groups of ``group_schedule``. Under torchrun each rank takes whole groups of
    every batch (a group decides together), its loss is its images' share of the batch's KD plus the
    MACs term linearised at the batch's MACs ratio (summed over ranks), and the gradients are summed
    before the step: N processes train the gates one process trains (within float rounding; the
    Gumbel estimator draws its noise per process, so use "ste" to compare). ``example``: one image,
    to split the MACs into the dynamic part and the rest. ``checkpoint``: resume from / save to this
    file every ``checkpoint_every`` steps (rank 0 writes, every rank reads).
    """
    from ... import distributed as dist
    from ...mixed_precision import mixed_precision
    gate_params, other = [], []
    for name, p in model.named_parameters():
        (gate_params if ".gate_net." in name else other).append(p)
    for p in other:
        p.requires_grad_(lr_backbone > 0)
    groups = [{"params": gate_params, "lr": lr_gates, "weight_decay": 0.0}]
    if lr_backbone > 0:
        groups.append({"params": other, "lr": lr_backbone, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    params = [p for g in groups for p in g["params"]]
    base = [g["lr"] for g in opt.param_groups]
    teacher.eval().requires_grad_(False).to(device)
    model.to(device).train()
    set_estimator(model, estimator, gumbel_tau)
    mp = mixed_precision(device, amp)
    fixed = gated_dense_split(model, dense_macs, example.to(device))
    per_epoch = math.ceil(len(data) / batch_size)
    history, step, images, unreadable, t_spent = [], 0, 0, 0, 0.0
    if checkpoint is not None and dist.broadcast_object(checkpoint.is_file()):
        with dist.agree_on_errors():
            state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        mp.scaler.load_state_dict(state["scaler"])
        step, images, history = state["step"], state["images"], state["history"]
        unreadable, t_spent = state["unreadable"], state["seconds"]
        if dist.is_main():
            log(f"gates: resuming gate training at step {step}/{steps} from {checkpoint}")
    t0 = time.perf_counter()
    try:
        while step < steps:
            epoch, skip = divmod(step, per_epoch)

            def schedule(i: int, n: int, epoch=epoch) -> list:
                return group_schedule(n, epoch * per_epoch + i, subgroup_aug, subgroup_mode)

            loader = dist.sharded_loader(data, batch_size, seed=seed, epoch=epoch, workers=workers, start=skip,
                                         group_sizes=schedule)
            for batch, mine in zip(loader, loader.groups):
                if step >= steps:
                    break
                n_local = batch.images.shape[0]
                for g, b in zip(opt.param_groups, base):   # cosine decay
                    g["lr"] = b * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
                opt.zero_grad(set_to_none=True)
                kd_local = macs_local = torch.zeros((), device=device)
                sizes = []
                if n_local:
                    readable = set(batch.indices)
                    sizes = [k for k in (sum(j in readable for j in g) for g in mine) if k]
                    set_group_sizes(model, sizes)
                    x = batch.images.to(device)
                    with mp.autocast():
                        with torch.no_grad():
                            zt = teacher(x)
                        zs = model(x)
                    # sums over this rank's images: divided by the global count below
                    kd_local = kd_loss(zs.float(), zt.float(), kd_tau) * n_local
                    macs_local = _executed_macs(model, n_local) / dense_macs
                n_all, failed, kd_sum, macs_sum, n_groups = dist.all_sum(
                    [n_local, len(batch.failed), float(kd_local.detach()), float(macs_local.detach()), len(sizes)])
                unreadable += int(failed)
                if n_all == 0:     # an all-unreadable batch uses up its step (resume skips to it)
                    step += 1
                    continue
                kd, ratio = kd_sum / n_all, fixed / dense_macs + macs_sum / n_all
                ramp = min(1.0, step / max(target_warmup * steps, 1e-9)) if target_warmup > 0 else 1.0
                goal = 1.0 + (target - 1.0) * ramp
                loss = kd + gamma * (ratio - goal) ** 2
                if not math.isfinite(loss):
                    raise VitoptError(f"gate training loss is {loss} at step {step}: lower lr_gates")
                if n_local:
                    # d/dθ of gamma·(ratio − goal)² is 2·gamma·(ratio − goal)·d ratio/dθ, and ratio is the sum
                    # of the ranks' shares: each rank back-propagates its share with the global factor
                    local = (kd_local + 2 * gamma * (ratio - goal) * macs_local) / n_all
                    mp.scaler.scale(local).backward()
                dist.sum_gradients(params)
                mp.scaler.step(opt)
                mp.scaler.update()
                step += 1
                images += int(n_all)
                row = {"step": step, "kd": round(kd, 5), "macs_ratio": round(ratio, 4), "loss": round(loss, 5),
                       "target": round(goal, 4), "groups": int(n_groups)}
                history.append(row)
                if dist.is_main() and (step % 10 == 0 or step == steps):
                    log(f"gates: step {step}/{steps} kd {row['kd']:.4f} macs {row['macs_ratio']:.3f} "
                        f"loss {row['loss']:.4f}")
                if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                    dist.save_on_main(checkpoint, {
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": mp.scaler.state_dict(),
                        "step": step, "images": images, "history": history, "unreadable": unreadable,
                        "seconds": t_spent + time.perf_counter() - t0})
    finally:
        set_group_sizes(model, None)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    seconds = t_spent + time.perf_counter() - t0
    tail = history[-10:]
    return {"steps": step, "images": images, "seconds": round(seconds, 1),
            "final_kd": round(sum(r["kd"] for r in tail) / max(len(tail), 1), 5),
            "final_train_macs_ratio": round(sum(r["macs_ratio"] for r in tail) / max(len(tail), 1), 4),
            "world_size": dist.rank_world()[1], "precision": mp.dtype, "unreadable_images": unreadable,
            "history": history[:: max(1, len(history) // 50)]}


def _executed_macs(model: nn.Module, images: int) -> torch.Tensor:
    """Sum over this forward's ``images`` of the gated modules' executed MACs (differentiable in the gates)."""
    total = None
    for m in gated_modules(model):
        if m.train_macs is None:
            continue
        t = m.train_macs.sum() if m.train_macs.ndim else m.train_macs * images
        total = t if total is None else total + t
    if total is None:
        raise VitoptError("no gated module ran in training mode: nothing to constrain")
    return total


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
    Under torchrun give each rank whole batches (``distributed.sharded_loader(..., whole_batches=True)``):
    the decision counts are summed over the ranks, equal to one process's over every batch.
    """
    from ...distributed import all_reduce_sum
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
        # per module: how often each unit was on, and in how many decisions (summed over ranks)
        counts = torch.cat([torch.stack(m.record).double().sum(0) if m.record else torch.zeros(m.dynamic_units,
                                                                                                 dtype=torch.float64)
                            for m in mods] + [torch.tensor([float(len(m.record)) for m in mods], dtype=torch.float64)])
        counts = all_reduce_sum(counts)
        on_total, units_total, offset = 0.0, 0, 0
        decisions = counts[-len(mods):] if mods else counts[:0]
        for m, n in zip(mods, decisions.tolist()):
            on = counts[offset:offset + m.dynamic_units]
            offset += m.dynamic_units
            per_size[m].append((on / n).float() if n else torch.zeros(m.dynamic_units))
            on_total += float(on.sum())
            units_total += int(n) * m.dynamic_units if n else m.dynamic_units
            m.record = None
        summary[int(size)] = round(on_total / max(units_total, 1), 4)
    for m in mods:
        f = torch.stack(per_size[m])
        m.on_freq_min, m.on_freq_max = f.min(0).values.tolist(), f.max(0).values.tolist()
        m.on_freq_mean = f.mean(0).tolist()
        m.mean_active = float(sum(m.on_freq_mean))
    return summary

"""``apply``/``rebuild`` of the ``gates`` step: gate, train, calibrate, prune statically, recover."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional

import torch

from ...compress.registry import CompressContext, StepResult
from ...counting import count_macs, count_params
from ...errors import VitoptError
from ...reconstruct import reconstruct_model
from .config import GatesConfig
from .convert import gate_model, gate_summary, rebuild_gated, static_prune, structure_of
from .modules import gated_modules, group_schedule, set_estimator, set_forced_gates, set_group_sizes
from .train import (calibrate_gates, gated_dense_split, init_gates_from_importance, macs_ratio_tensor,
                    train_gates)


def apply_gates(model, cfg: GatesConfig, ctx: CompressContext) -> StepResult:
    """Gate every block of ``model``, train the gates on ``ctx.calib_dir`` towards ``cfg.macs_ratio``,
    remove never-on units, make always-on units static, and optionally fine-tune.

    Example: ``apply_gates(model, GatesConfig(macs_ratio=0.6), CompressContext(calib_dir="train/"))``
    """
    if not isinstance(cfg, GatesConfig):
        raise VitoptError(f"gates needs a GatesConfig, got {type(cfg).__name__}")
    if not ctx.calib_dir:
        raise VitoptError("gates needs calibration images to train its gates (--calib DIR)")
    device = torch.device(ctx.device)
    torch.manual_seed(ctx.seed)
    model.eval().to(device)
    teacher = ctx.teacher if ctx.teacher is not None else copy.deepcopy(model)
    teacher.eval().requires_grad_(False).to(device)
    dense = count_macs(model)
    dense_params = count_params(model)
    log = ctx.log or (lambda s: None)

    gate_model(model, group_size=cfg.group_size, gate_hidden=cfg.gate_hidden, threshold=cfg.threshold,
               init_logit=cfg.init_logit, gate_heads=cfg.gate_heads, gate_mlp_channels=cfg.gate_mlp)
    model.to(device)
    from ... import distributed as dist
    with dist.agree_on_errors():
        train_data = ctx.calib_dataset(model, train=cfg.augment, limit=cfg.calib_images)
        calib_data = ctx.calib_dataset(model, limit=cfg.calib_images)
    # every rank loads the same first batch: the importance init and the MACs split are the same everywhere
    first = next(iter(ctx.calib_loader(model, cfg.batch_size, shuffle=True, limit=cfg.calib_images)))
    if first.images.numel() == 0:
        raise VitoptError(f"the first calibration batch of {ctx.calib_dir} has no readable image")
    if cfg.importance_init > 0:
        init_gates_from_importance(model, first.images.to(device), cfg.init_logit, cfg.importance_init)
    steps = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * math.ceil(len(train_data) /
                                                                                         cfg.batch_size)))
    ctx.say(f"gates: training gates for {steps} steps (batch {cfg.batch_size}, target MACs {cfg.macs_ratio}, "
            f"sub-group augmentation {'on' if cfg.subgroup_aug else 'off'})")
    train_report = train_gates(model, teacher, train_data, batch_size=cfg.batch_size, seed=ctx.seed,
                               target=cfg.macs_ratio, gamma=cfg.gamma, steps=steps,
                               lr_gates=cfg.lr_gates, lr_backbone=cfg.lr_backbone, kd_tau=cfg.kd_tau,
                               subgroup_aug=cfg.subgroup_aug, subgroup_mode=cfg.subgroup_mode, estimator=cfg.estimator,
                               gumbel_tau=cfg.gumbel_tau, dense_macs=dense.macs, device=device,
                               example=first.images[:1], target_warmup=cfg.target_warmup, workers=ctx.workers,
                               amp=cfg.amp, checkpoint=_checkpoint(model, cfg, ctx),
                               checkpoint_every=cfg.checkpoint_every, log=log)

    # a batch is one gate group at calibration: each rank takes whole batches, the counts are summed
    loaders = {g: dist.sharded_loader(calib_data, g, seed=ctx.seed, workers=ctx.workers, whole_batches=True)
               for g in cfg.calib_groups}
    active = calibrate_gates(model, loaders, device)
    gated_params = count_params(model)
    pruned = static_prune(model, cfg.never_on, cfg.always_on)
    ctx.say(f"gates: calibration active fraction {active}; static pruning {pruned}")

    reconstruct = reconstruct_gates(model, teacher, ctx, cfg, loaders)
    finetune = None
    if cfg.recovery.enabled:
        finetune = _finetune(model, teacher, ctx, cfg, dense.macs)
        # the backbone moved, so on-frequencies (and the fixed-K counts taken from them) are stale:
        # measure them again on the tuned model and drop what it never/always switches on now
        finetune["calib_active_fraction"] = calibrate_gates(model, loaders, device)
        finetune["static"] = static_prune(model, cfg.never_on, cfg.always_on)
        ctx.say(f"gates: after fine-tune active fraction {finetune['calib_active_fraction']}; "
            f"static pruning {finetune['static']}")

    deployed_params = count_params(model)
    set_forced_gates(model, "on")
    upper = count_macs(model).macs
    set_forced_gates(model, None)
    report = {
        "dense_macs": dense.macs, "dense_params": dense_params,
        "gated_params_before_static": gated_params,
        "deployed_params": deployed_params, "memory_bound_params": deployed_params,
        "gate_params": sum(p.numel() for m in gated_modules(model) if m.gate_net is not None
                           for p in m.gate_net.parameters()),
        "max_macs": upper, "max_macs_ratio": round(upper / dense.macs, 4),
        "calib_active_fraction": active, "static": pruned, "gates": gate_summary(model),
        "train": train_report, "reconstruct": reconstruct, "finetune": finetune,
    }
    model.eval()
    return StepResult(model, structure_of(model), report)


def reconstruct_gates(model, teacher, ctx: CompressContext, cfg: GatesConfig, loaders: Optional[dict] = None) -> dict:
    """``cfg.reconstruct`` on a trained, calibrated and statically pruned gated ``model`` (in place).

    The output maps (``proj``, ``fc2``: every column, static and dynamic) are re-fitted under the gate
    decisions the trained gates take on calibration groups of each size in ``cfg.calib_groups`` (the
    deployment batch sizes), gate nets fixed; the intercept takes the mean contribution of units
    switched off or statically removed. Decisions depend on each block's input, which the re-fits of
    the blocks before it move (block i is already fitted on those moved inputs): so when any update
    was kept, the on-frequencies behind fixed K and static pruning are measured again and static
    pruning re-applied, so both match the weights that ship. ``loaders``: {group size: calibration
    loader}, built when None. Returns the reconstruction report (with the recalibration).
    Example: ``reconstruct_gates(gated, dense, ctx, GatesConfig(reconstruct=ReconstructConfig("closed_form")))``
    """
    report = reconstruct_model(model, teacher, ctx, cfg.reconstruct, group_sizes=cfg.calib_groups)
    if not any(row.get("kept") for row in report.get("blocks", ())):
        return report
    device = torch.device(ctx.device)
    if loaders is None:
        from ... import distributed as dist
        data = ctx.calib_dataset(model, limit=cfg.calib_images)
        loaders = {g: dist.sharded_loader(data, g, seed=ctx.seed, workers=ctx.workers, whole_batches=True)
                   for g in cfg.calib_groups}
    report["calib_active_fraction"] = calibrate_gates(model, loaders, device)
    report["static"] = static_prune(model, cfg.never_on, cfg.always_on)
    ctx.say(f"gates: after reconstruction active fraction {report['calib_active_fraction']}; "
            f"static pruning {report['static']}")
    return report


def _checkpoint(model, cfg: GatesConfig, ctx: CompressContext) -> Optional[Path]:
    """Gate training's checkpoint in ``ctx.work_dir/gates`` (None without a work directory).

    Its own folder: the fine-tune's ``recover`` claims the work directory itself for its state. Rank 0
    checks the folder belongs to this run (model, config, data); every rank follows its answer.
    """
    if not ctx.work_dir:
        return None
    from ... import distributed as dist
    from ...workdir import check_or_init, fingerprint
    folder = Path(ctx.work_dir) / "gates"
    path = folder / "gates_train.pt"
    with dist.agree_on_errors():
        if dist.is_main():
            check_or_init(folder, fingerprint(model, config={**cfg.to_dict(), "seed": ctx.seed},
                                              data=ctx.calib_dir), progress=path, log=ctx.say)
    dist.barrier()
    return path


def _finetune(model, teacher, ctx, cfg: GatesConfig, dense_macs: float) -> dict:
    """Backbone recovery with the shared distillation trainer after static pruning.

    Every step splits its batch into gate groups by the same schedule as gate training: tuning the
    backbone only under whole-batch decisions would undo what sub-group augmentation bought. With
    ``cfg.recovery_gates`` the gate nets keep training at ``recovery_lr_gates`` under the MACs term:
    frozen gates read features that the tuned backbone changes, and switch on more units than the
    target (measured: 0.61 -> 0.67-0.70 of dense MACs over 64 steps on DeiT-Tiny)."""
    from ...distill import recover
    gate_names = {n for n, _ in model.named_parameters() if ".gate_net." in n}
    # static pruning may have left no gate to train: then the fine-tune is the backbone's alone
    train_gates_too = cfg.recovery_gates and any(m.dynamic_units and m.gate_net is not None
                                                 for m in gated_modules(model))
    gate_scale = cfg.recovery_lr_gates / cfg.recovery.lr if train_gates_too else 0.0
    groups_seen: dict = {}
    ratios: list = []

    def set_groups(step: int, batch: int) -> None:
        sizes = group_schedule(batch, step, cfg.subgroup_aug, cfg.subgroup_mode)
        set_group_sizes(model, sizes)
        for s in sizes:
            groups_seen[s] = groups_seen.get(s, 0) + 1

    extra = None
    if train_gates_too:
        set_estimator(model, cfg.estimator, cfg.gumbel_tau)
        first = next(iter(ctx.calib_loader(model, 1, shuffle=False, limit=cfg.calib_images)))
        fixed = gated_dense_split(model, dense_macs, first.images[:1].to(next(model.parameters()).device))

        def extra(step: int) -> dict:
            ratio = macs_ratio_tensor(model, fixed, dense_macs)
            ratios.append(float(ratio.detach()))
            return {"macs": cfg.gamma * (ratio - cfg.macs_ratio) ** 2}

    try:
        dcfg = cfg.recovery.distill_config(batch_size=cfg.batch_size, augment=cfg.augment, alpha=1.0,
                                           tau=cfg.kd_tau, limit=cfg.calib_images, save_every=0)
        rep = recover(model, teacher, ctx, dcfg, before_step=set_groups, extra_loss=extra,
                      lr_scale=lambda n: gate_scale if n in gate_names else 1.0)
    finally:
        set_group_sizes(model, None)
    out = {k: rep.get(k) for k in ("steps", "seconds", "images_per_s", "first_losses", "final_losses")}
    out["gate_groups"] = {str(k): v for k, v in sorted(groups_seen.items())}
    out["gates_trained"] = bool(train_gates_too)
    if ratios:
        tail = ratios[-10:]
        out["final_train_macs_ratio"] = round(sum(tail) / len(tail), 4)
    return out


def rebuild_gates(model, structure: dict):
    """The gated architecture recorded in ``structure`` (weights arbitrary)."""
    return rebuild_gated(model, structure)

"""Slim's ``token_mode="merge"``: heads / MLP widths sliced and a static merge schedule on top.

The budget search runs over the split between the two: for each candidate mean merge count per
block (0, 2, 4, ... up to what merging alone needs), the widths are bisected (slim's ranking and
rounding, tokens never dropped) so that the counted MACs of widths + schedule meet the target, then
the schedule is re-fitted to those widths (``schedule_for_macs``). Every candidate is sliced and
merged on a copy and scored by its KL to the dense teacher on ``token_eval_images`` calibration
images; the lowest wins. With ``allocate: reconstructed`` each split is instead scored after a
closed-form reconstruction, on images other than those it was fitted on (``allocation``). A learned
search with frozen weights tunes the LayerNorms to its soft masks (token drop included), which hurts a
model that keeps every token's content: each candidate is scored with the searched and with the dense
norms (``norms`` in the report). Reconstruction and recovery (slim's fine-tune) run on the sliced
model before the merge (the reconstruction compares one token sequence per block with the dense
model's); merging needs no training.
"""
from __future__ import annotations

import copy
import math

import torch

from ...errors import VitoptError
from ...progress import progress
from .allocation import rank_after_reconstruction
from .block import merge_tokens
from .method import structure_of
from .schedule import BlockShape, MacsModel, closest_by_bisection, schedule_for_macs, spread_schedule


def uses_merging(cfg) -> bool:
    """Whether a SlimConfig merges tokens: token_mode merge, tokens on, and a MACs budget (merging
    saves no parameters, so a params budget is met by widths alone in either token mode)."""
    return cfg.token_mode == "merge" and cfg.prune_tokens and cfg.budget[0] == "macs"


def shapes_of_plan(geo, plan) -> list:
    return [BlockShape(g.dim, p.num_heads, p.head_dim, len(p.units),
                       int(round(g.norm_macs_per_token / (2 * g.dim))))
            for g, p in zip(geo.blocks, plan)]


def _widths_for(rank, geo, mm: MacsModel, schedule, target: float, cfg, enabled) -> list:
    """Slim's widths (keep fraction bisected) whose MACs with ``schedule`` are closest to ``target``."""
    from ..slim.budget import plan_from_keep, select

    def make(keep):
        plan = plan_from_keep(rank, geo, select(rank, geo, keep, cfg.ranking, "macs", enabled), cfg.multiple)
        return plan, plan

    return closest_by_bisection(make, lambda plan: mm.macs(schedule, shapes_of_plan(geo, plan)), 0.0, 1.0, target,
                                decreasing=False, iters=30)[0]


def candidates(rank, geo, mm: MacsModel, cfg) -> list:
    """[(plan, schedule)] meeting the MACs target, from widths alone to merging alone."""
    from ..slim.budget import plan_from_keep, select
    target = cfg.macs_ratio * mm.dense_macs
    enabled = {"attn": cfg.prune_attention, "mlp": cfg.prune_mlp, "token": False}
    L = len(geo.blocks)
    full = plan_from_keep(rank, geo, select(rank, geo, 1.0, cfg.ranking, "macs", enabled), cfg.multiple)
    try:
        alone = schedule_for_macs(mm, target, cfg.tolerance)
        top = sum(alone) / L
    except VitoptError:
        top = float((mm.num_tokens - 1) // 2)
    out, seen = [], set()
    steps = [2.0 * k for k in range(int(top // 2) + 1)] + [top]
    for mean_r in steps:
        if enabled["attn"] or enabled["mlp"]:
            plan = _widths_for(rank, geo, mm, spread_schedule(mean_r, L), target, cfg, enabled)
        else:
            plan = full
        try:
            sched = schedule_for_macs(mm, target, cfg.tolerance, shapes_of_plan(geo, plan))
        except VitoptError:
            continue
        key = (tuple(sched), tuple((p.num_heads * p.head_dim, len(p.units)) for p in plan))
        if key not in seen:
            seen.add(key)
            out.append((plan, sched))
    if not out:
        raise VitoptError(f"slim with token_mode merge cannot meet macs ratio {cfg.macs_ratio:g} within "
                          f"{cfg.tolerance:.0%}: enable prune_attention / prune_mlp or raise the budget")
    return out


def _layer_norms(model) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}


def _norms_differ(model, teacher) -> bool:
    t = _layer_norms(teacher)
    return any(name in t and any(not torch.equal(a, b) for a, b in zip(m.parameters(), t[name].parameters()))
               for name, m in _layer_norms(model).items())


@torch.no_grad()
def _with_norms_of(model, teacher):
    """``model`` with the teacher's LayerNorm parameters (in place; norms are never sliced)."""
    t = _layer_norms(teacher)
    for name, m in _layer_norms(model).items():
        if name in t:
            m.load_state_dict(t[name].state_dict())
    return model


@torch.no_grad()
def teacher_kl(models: list, teacher, ctx, images: int, batch_size: int) -> list:
    """Mean KL(teacher || model) of each model on ``images`` seeded-shuffled calibration images
    (summed over ranks under torchrun: every rank scores the same candidates alike)."""
    from ...distributed import all_reduce_sum
    from ..slim.search import kd_loss
    acc = torch.zeros(len(models) + 1, dtype=torch.float64)
    seen = 0
    for batch in ctx.calib_loader(teacher, batch_size, shuffle=True):
        if seen >= images:
            break
        x = batch.images[: images - seen].to(ctx.device)
        if not x.numel():
            continue
        t = teacher(x).float()
        for i, m in enumerate(models):
            acc[i] += float(kd_loss(m(x).float(), t)) * x.shape[0]
        acc[-1] += x.shape[0]
        seen += x.shape[0]
    all_reduce_sum(acc)
    if acc[-1] == 0:
        raise VitoptError("no readable calibration images to choose the merge schedule on")
    return (acc[:-1] / acc[-1]).tolist()


def slim_with_merging(model, res, cfg, geo, ctx, teacher, recover) -> tuple:
    """Plan widths + schedule, slice ``model``, ``recover(model)``, merge: (model, structure, report)."""
    from ...counting import count_macs
    from ..slim.method import ranking_of
    from ..slim.slicing import slice_model, structure_from_plan
    mm = MacsModel.of(model)
    rank = ranking_of(res, cfg.ranking)
    fold = res.importance == "learned"
    attn_scale = res.attn_mask if fold else None
    mlp_scale = res.mlp_mask if fold else None
    teacher = teacher.to(ctx.device).eval()
    norm_sources = {"search": model}
    if _norms_differ(model, teacher):
        norm_sources["dense"] = _with_norms_of(copy.deepcopy(model), teacher)
    splits = candidates(rank, geo, mm, cfg)
    cands = [(plan, sched, src) for plan, sched in splits for src in norm_sources]
    if cfg.allocate == "reconstructed":
        rows, best = rank_after_reconstruction(
            splits, norm_sources, teacher, ctx, cfg,
            lambda m, plan: slice_model(copy.deepcopy(m), plan, geo, attn_scale, mlp_scale))
        scored = [r["kl"] for r in rows]
        after = [r["kl_reconstructed"] for r in rows]
    else:
        scored = []
        for plan, sched, src in progress(cands, desc="slim merge schedule", unit="candidate"):
            base = copy.deepcopy(norm_sources[src])
            trial = merge_tokens(slice_model(base, plan, geo, attn_scale, mlp_scale), sched).eval()
            scored.append(teacher_kl([trial], teacher, ctx, cfg.token_eval_images, cfg.batch_size)[0])
        best = min(range(len(cands)), key=lambda i: (scored[i], i))
        after = [None] * len(cands)
    plan, sched, src = cands[best]
    if src == "dense":
        model = _with_norms_of(model, teacher)
    model = slice_model(model, plan, geo, attn_scale, mlp_scale)
    recovery = recover(model)
    model = merge_tokens(model, sched)
    structure = structure_from_plan(plan, geo)
    structure["merge"] = structure_of(sched)
    planned = mm.macs(sched, shapes_of_plan(geo, plan))
    measured = count_macs(model)
    if not math.isclose(measured.macs, planned, rel_tol=1e-9, abs_tol=0.5):
        raise VitoptError(f"internal: planned MACs {planned} differ from the merged model's {measured.macs}")
    report = {"target": {"macs": cfg.macs_ratio}, "token_mode": "merge", "measured": measured.to_dict(),
              "dense": {"macs": geo.dense_macs, "params": geo.dense_params},
              "macs_ratio": measured.macs / geo.dense_macs, "params_ratio": measured.params / geo.dense_params,
              "schedule": sched, "norms": src,
              "widths": [{"heads": p.num_heads, "head_dim": p.head_dim, "mlp": len(p.units)} for p in plan],
              "merge_search": [{"mean_r": round(sum(s) / len(s), 3), "schedule": s, "norms": n,
                                "attn_width": sum(p.num_heads * p.head_dim for p in pl),
                                "mlp_hidden": sum(len(p.units) for p in pl), "kl": round(k, 5),
                                **({} if cfg.allocate == "kl" else
                                   {"kl_reconstructed": None if a is None else round(a, 5)})}
                               for (pl, s, n), k, a in zip(cands, scored, after)],
              "allocate": {"by": cfg.allocate, "chosen": best,
                           **({} if cfg.allocate == "kl" else {"fit_images": cfg.allocate_images,
                                                              "score_images": cfg.token_eval_images})},
              "recovery": recovery}
    return model, structure, report

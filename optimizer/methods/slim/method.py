"""``apply`` for the registry: importance (search or baseline) -> budget plan -> slice -> recover."""
from __future__ import annotations

import copy
import time
from typing import Optional

import torch

from ...compress.registry import StepResult
from ...counting import count_macs
from ...errors import VitoptError
from .baseline import magnitude_importance, taylor_importance
from .budget import Geometry, Ranking, plan_counts, solve_budget
from ...reconstruct import reconstruct_model
from .config import SlimConfig
from .recovery import recover_model
from .search import SearchResult, search_masks
from .slicing import slice_model, structure_from_plan


def importance_of(model, cfg: SlimConfig, ctx, teacher) -> SearchResult:
    """Mask values and scores: the learned search, or a search-free baseline."""
    if cfg.importance == "learned":
        return search_masks(model, cfg, ctx, teacher)
    if cfg.importance == "taylor":
        return taylor_importance(model, ctx, batch_size=cfg.batch_size, batches=cfg.baseline_batches)
    return magnitude_importance(model)


def ranking_of(res: SearchResult, mode: str) -> Ranking:
    """What ranks units: mask values for the learned per-type rule, scores otherwise."""
    if res.importance == "learned" and mode == "per_type":
        return Ranking([m.abs() for m in res.attn_mask], [m.abs() for m in res.mlp_mask], res.token_gate)
    return Ranking(res.attn_score, res.mlp_score, res.token_score)


def slim_from_importance(model, res: SearchResult, cfg: SlimConfig, geo: Optional[Geometry] = None) -> tuple:
    """Plan the budget and slice ``model`` in place; returns (model, structure, report)."""
    geo = geo or Geometry.of(model)
    kind, target = cfg.budget
    enabled = {"attn": cfg.prune_attention, "mlp": cfg.prune_mlp,
               "token": cfg.prune_tokens and kind == "macs" and res.token_score is not None}
    rank = ranking_of(res, cfg.ranking)
    plan, counts = solve_budget(rank, geo, kind, target, cfg.ranking, cfg.multiple, enabled, cfg.tolerance)
    fold = res.importance == "learned"
    model = slice_model(model, plan, geo, res.attn_mask if fold else None, res.mlp_mask if fold else None)
    structure = structure_from_plan(plan, geo)
    measured = count_macs(model)
    report = {"target": {kind: target}, "planned": counts, "measured": measured.to_dict(),
              "dense": {"macs": geo.dense_macs, "params": geo.dense_params},
              "macs_ratio": measured.macs / geo.dense_macs, "params_ratio": measured.params / geo.dense_params,
              "widths": [{"heads": p.num_heads, "head_dim": p.head_dim, "mlp": len(p.units),
                          "tokens": len(p.tokens)} for p in plan]}
    if abs(measured.macs - counts["macs"]) > 0.5 or measured.params != counts["params"]:
        raise VitoptError(f"internal: planned counts {counts} differ from the sliced model's {measured.to_dict()}")
    return model, structure, report


def apply(model, cfg: SlimConfig, ctx) -> StepResult:
    """ViT-Slim on ``model``: search (or baseline importance), meet the budget, slice, recover."""
    if not isinstance(cfg, SlimConfig):
        raise VitoptError(f"slim needs a SlimConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    teacher = ctx.teacher
    if teacher is None:
        teacher = copy.deepcopy(model).eval()
    geo = Geometry.of(model)
    res = importance_of(model, cfg, ctx, teacher)
    model, structure, report = slim_from_importance(model, res, cfg, geo)
    report["importance"] = {"kind": res.importance, **res.report}
    report["reconstruct"] = reconstruct_model(model, teacher, ctx, cfg.reconstruct)
    report["recovery"] = recover_model(model, teacher, ctx, cfg)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    model.eval()
    return StepResult(model, structure, report)

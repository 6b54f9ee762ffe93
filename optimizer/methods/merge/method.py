"""``apply`` / ``rebuild`` of the registered ``merge`` method, and the structure that round-trips."""
from __future__ import annotations

import time

from ...compress.registry import StepResult
from ...counting import count_macs
from ...errors import VitoptError
from .block import check_mergeable, merge_schedule, merge_tokens, num_tokens_of
from .config import MergeConfig
from .schedule import MacsModel, schedule_for_macs

FORMAT = "merge-structure"


def structure_of(schedule) -> dict:
    """JSON structure of a merge schedule (what ``rebuild`` reads)."""
    return {"format": FORMAT, "version": 1, "schedule": [int(r) for r in schedule]}


def schedule_from_structure(structure) -> list:
    """The schedule recorded by ``structure_of``; VitoptError for anything else."""
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise VitoptError(f"not a token-merge structure (expected format '{FORMAT}')")
    sched = structure.get("schedule")
    if not isinstance(sched, list):
        raise VitoptError("token-merge structure has no 'schedule' list")
    return sched


def resolve_schedule(model, cfg: MergeConfig) -> list:
    """The per-block counts ``cfg`` asks for on ``model`` (its blocks not merging yet)."""
    L = len(model.blocks)
    if cfg.r is not None:
        return [cfg.r] * L
    if cfg.schedule is not None:
        return list(cfg.schedule)
    mm = MacsModel.of(model)
    return schedule_for_macs(mm, cfg.macs_ratio * mm.dense_macs, cfg.tolerance)


def apply(model, cfg: MergeConfig, ctx) -> StepResult:
    """ToMe on ``model`` (no data, no training): resolve the schedule, make every block merge."""
    if not isinstance(cfg, MergeConfig):
        raise VitoptError(f"merge needs a MergeConfig, got {type(cfg).__name__}")
    if merge_schedule(model) is not None:
        raise VitoptError("this model already merges tokens; apply merge once")
    t0 = time.perf_counter()
    check_mergeable(model)
    dense = count_macs(model)
    schedule = resolve_schedule(model, cfg)
    model = merge_tokens(model, schedule)
    measured = count_macs(model)
    report = {"schedule": schedule, "tokens_in": num_tokens_of(model),
              "tokens_left": num_tokens_of(model) - sum(schedule),
              "measured": measured.to_dict(), "macs_ratio": measured.macs / dense.macs,
              "seconds": round(time.perf_counter() - t0, 2)}
    return StepResult(model.eval(), structure_of(schedule), report)


def rebuild(model, structure: dict):
    """The merging architecture of ``structure`` on ``model`` (weights untouched)."""
    return merge_tokens(model, schedule_from_structure(structure))

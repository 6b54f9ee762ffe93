"""Slim's merge-mode candidates ranked by their loss *after* reconstruction (``allocate: reconstructed``).

Closed-form reconstruction repairs removed heads / MLP units well and merged tokens not at all, so a
candidate that spends the MACs budget on widths looks worse before reconstruction than it ends up.
Here each candidate split (widths, merge schedule) is sliced, reconstructed in closed form on
``fit`` calibration images (``reconstruct_model``, the same step the chosen model goes through,
on fewer images), merged, and scored by its KL to the teacher on ``score`` *other* calibration
images, so the score is held out from the fit.

Which images: ``reconstruct_model`` fits on the ``fit`` images evenly spaced over the folder
(``optimizer.reconstruct.driver.calibration_images``); the scoring images are evenly spaced over the
rest of the folder (``split_images``).
"""
from __future__ import annotations

import dataclasses

import torch

from ...errors import VitoptError


def split_images(total: int, fit: int, score: int) -> tuple:
    """(fit indices, score indices) into a folder of ``total`` images: the fit images are those
    ``reconstruct_model`` takes for ``images=fit`` (evenly spaced), the score images are evenly spaced
    over the others; VitoptError when fewer than ``score`` are left."""
    from ...data.folder import spaced_indices
    fitted = spaced_indices(total, fit)
    rest = sorted(set(range(total)) - set(fitted))
    if len(rest) < score:
        raise VitoptError(f"allocate reconstructed needs {score} calibration images besides the {len(fitted)} it "
                          f"fits on, the folder has {total}: lower allocate_images or token_eval_images")
    return fitted, [rest[i] for i in spaced_indices(len(rest), score)]


def reconstruct_config_for_candidates(base, images: int, batch_size: int):
    """The closed form ``base`` (the method's ReconstructConfig) stands for, on ``images`` images."""
    return dataclasses.replace(base, mode="closed_form", images=images, batch_size=batch_size)


class HeldOutScorer:
    """Mean KL(teacher || model) on fixed calibration images, the teacher's logits computed once
    (this rank's share of the images; sums over ranks, so every rank ranks alike)."""

    @torch.no_grad()
    def __init__(self, ctx, teacher, indices: list, batch_size: int):
        from torch.utils.data import DataLoader, Subset
        from ...data.folder import ImageFolderData, collate, eval_transform
        from ...distributed import shard_indices
        ds = ImageFolderData(ctx.calib_dir, eval_transform(teacher), synsets=ctx.synsets, labeled=False)
        mine = [indices[j] for j in shard_indices(len(indices))]
        loader = DataLoader(Subset(ds, mine), batch_size=batch_size, shuffle=False, num_workers=ctx.workers,
                            collate_fn=collate)
        self.device = torch.device(ctx.device)
        self.batches = [b.images.to(self.device) for b in loader if b.images.shape[0]]
        self.targets = [teacher(x).float() for x in self.batches]
        self.count = torch.tensor([float(sum(x.shape[0] for x in self.batches))], dtype=torch.float64)
        from ...distributed import all_reduce_sum
        all_reduce_sum(self.count)
        if not self.count.item():
            raise VitoptError("no readable calibration images to score the slim candidates on")

    @torch.no_grad()
    def __call__(self, model) -> float:
        from ...distributed import all_reduce_sum
        from ..slim.search import kd_loss
        total = torch.zeros(1, dtype=torch.float64)
        for x, t in zip(self.batches, self.targets):
            total += float(kd_loss(model(x).float(), t)) * x.shape[0]
        all_reduce_sum(total)
        return float(total / self.count)


def rank_after_reconstruction(splits: list, norm_sources: dict, teacher, ctx, cfg, build) -> tuple:
    """Score each (plan, schedule) of ``splits`` before and after a closed-form reconstruction.

    Args:
        splits: [(plan, schedule)] from ``slim_mode.candidates``.
        norm_sources: name -> model whose LayerNorms a candidate starts from (``slim_mode``).
        teacher, ctx, cfg: the dense model, CompressContext and SlimConfig of the slim step.
        build: ``build(model, plan)`` slices a copy of ``model`` to ``plan`` (not merged yet).
    Returns:
        (rows, best): one row per split and norm source ``{"index", "norms", "kl", "kl_reconstructed"}``
        — only the norm source with the lower KL before reconstruction is reconstructed (the other's
        ``kl_reconstructed`` is None) — and the position in ``rows`` of the lowest ``kl_reconstructed``.
    """
    from ...data.folder import ImageFolderData, eval_transform
    from ...progress import progress
    from ...reconstruct import reconstruct_model
    from .block import merge_tokens
    if not ctx.calib_dir:
        raise VitoptError("allocate reconstructed needs calibration images (--calib DIR)")
    total = len(ImageFolderData(ctx.calib_dir, eval_transform(teacher), synsets=ctx.synsets, labeled=False))
    _, scored_on = split_images(total, cfg.allocate_images, cfg.token_eval_images)
    score = HeldOutScorer(ctx, teacher, scored_on, cfg.batch_size)
    rcfg = reconstruct_config_for_candidates(cfg.reconstruct, cfg.allocate_images, cfg.batch_size)
    quiet = dataclasses.replace(ctx, log=None)   # one line per candidate, not one per block
    rows = []
    for index, (plan, sched) in enumerate(progress(splits, desc="slim allocation", unit="split")):
        before = {src: score(merge_tokens(build(m, plan), sched).eval()) for src, m in norm_sources.items()}
        src = min(before, key=lambda s: (before[s], s != "search"))
        trial = build(norm_sources[src], plan)
        reconstruct_model(trial, teacher, quiet, rcfg)
        after = score(merge_tokens(trial, sched).eval())
        ctx.say(f"slim allocation: split {index} (mean r {sum(sched) / len(sched):.2f}, norms {src}): "
                f"KL {before[src]:.4f} -> {after:.4f} after reconstruction")
        rows += [{"index": index, "norms": s, "kl": before[s], "kl_reconstructed": after if s == src else None}
                 for s in norm_sources]
    best = min((i for i, r in enumerate(rows) if r["kl_reconstructed"] is not None),
               key=lambda i: (rows[i]["kl_reconstructed"], i))
    return rows, best

"""Search-free importance of attention (head, dim) units and MLP units: the baselines users reach for.

taylor     Molchanov et al. (2019): (a · dL/da)^2 accumulated over calibration batches, with L the
           cross-entropy against the dense model's own top-1 (no labels needed; the KD loss has a
           zero gradient at the dense model itself).
magnitude  L2 norm of the weights a unit owns: q, k, v rows and the proj column of an attention
           (head, dim); the fc1 row times the fc2 column norm of an MLP unit.
Both leave token pruning off (they have no notion of token importance) and fold nothing (masks = 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.blocks import make_prunable
from ...progress import progress
from .search import SearchModel, SearchResult, TaylorMeter, mask_dict


def magnitude_importance(model: nn.Module) -> SearchResult:
    """Weight-norm importance of every (head, dim) and MLP unit."""
    model = make_prunable(model)
    attn_s, mlp_s, attn_m, mlp_m = [], [], [], []
    with torch.no_grad():
        for b in model.blocks:
            a = b.attn
            w = a.qkv.weight.reshape(3, a.num_heads, a.head_dim, -1)
            rows = w.pow(2).sum(dim=(0, 3))                                   # (H, hd)
            cols = a.proj.weight.reshape(-1, a.num_heads, a.head_dim).pow(2).sum(0)
            attn_s.append((rows + cols).sqrt())
            fc1, fc2 = b.mlp.fc1.weight, b.mlp.fc2.weight
            mlp_s.append(fc1.norm(dim=1) * fc2.norm(dim=0))
            attn_m.append(torch.ones(a.num_heads, a.head_dim))
            mlp_m.append(torch.ones(fc1.shape[0]))
    return SearchResult(attn_m, mlp_m, attn_s, mlp_s, num_prefix=int(getattr(model, "num_prefix_tokens", 1)),
                        importance="magnitude", report={"batches": 0})


def taylor_importance(model: nn.Module, ctx, batch_size: int = 32, batches: int = 8) -> SearchResult:
    """First-order Taylor importance on ``batches`` calibration batches (pseudo-labels from the model).

    Under torchrun each rank takes its part of every global batch and the mask gradients are summed
    over ranks, so the scores equal one process's on the same images."""
    from ... import distributed as dist
    sm = SearchModel(model, prune_tokens=False).to(ctx.device).eval()
    for p in sm.model.parameters():
        p.requires_grad_(False)
    masks = mask_dict(sm)
    meter = TaylorMeter(sm)
    with dist.agree_on_errors():
        ds = ctx.calib_dataset(model)
    loader = dist.sharded_loader(ds, batch_size, seed=ctx.seed, epoch=0, workers=ctx.workers,
                                 limit_batches=batches)
    done = 0
    for batch in progress(loader, desc="taylor importance", unit="batch", total=len(loader)):
        n_local = batch.images.shape[0]
        n_all = dist.all_sum([n_local])[0]
        if n_all == 0:
            continue
        for p in masks.values():
            p.grad = None
        if n_local:
            x = batch.images.to(ctx.device)
            logits = sm(x).float()
            # the rank's share of the global batch's mean loss: summed gradients equal one process's
            loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum") / n_all
            loss.backward()
        dist.sum_gradients(list(masks.values()))
        meter.update({k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in masks.items()})
        done += 1
    for p in sm.model.parameters():
        p.requires_grad_(True)
    s = meter.scores()
    n = len(sm.sblocks)
    return SearchResult([torch.ones_like(s[f"attn.{i}"]) for i in range(n)],
                        [torch.ones_like(s[f"mlp.{i}"]) for i in range(n)],
                        [s[f"attn.{i}"] for i in range(n)], [s[f"mlp.{i}"] for i in range(n)],
                        num_prefix=sm.num_prefix, importance="taylor", report={"batches": done})

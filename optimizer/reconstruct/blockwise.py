"""Block-wise gradient reconstruction: one block's weights tuned on its output MSE against the dense block.

Structure and masks stay fixed (gate networks are not trained: their decisions are part of the
structure); the block runs in eval mode, so dropout is off and gated modules take their deployed
(group) decisions. Under torchrun every rank draws its batches from its own images and the
gradients are averaged with ``all_reduce_sum`` before each step, so all ranks keep equal weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_reduce_sum, rank_world


def tunable_parameters(block: nn.Module) -> list:
    """The block's weights the tune may move: everything but gate networks."""
    return [p for n, p in block.named_parameters() if ".gate_net." not in f".{n}"]


def tune_block(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int, lr: float,
               batch_size: int, seed: int) -> dict:
    """Adam on ``mse(block(inputs[i]), targets[i])`` over random batches of rows; returns
    {"steps", "first_loss", "last_loss"}. ``inputs``/``targets`` are this rank's fitting images."""
    _, world = rank_world()
    params = tunable_parameters(block)
    was = [p.requires_grad for p in params]
    frozen = [p for p in block.parameters() if all(p is not q for q in params)]
    was_frozen = [p.requires_grad for p in frozen]
    for p in params:
        p.requires_grad_(True)
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator()
    g.manual_seed(seed)
    n = inputs.shape[0]
    losses = []
    block.eval()
    try:
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=g).to(inputs.device) if n else None
            opt.zero_grad(set_to_none=False)
            if idx is not None:
                loss = F.mse_loss(block(inputs[idx]), targets[idx])
                loss.backward()
                losses.append(float(loss.detach()))
            if world > 1:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    all_reduce_sum(p.grad).div_(world)
            opt.step()
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
            p.grad = None
        for p, w in zip(frozen, was_frozen):
            p.requires_grad_(w)
    return {"steps": steps, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}

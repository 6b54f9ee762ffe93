"""Calibration statistics: XᵀX per Linear input, streamed, never the activations themselves.

One pass over the calibration images accumulates, for each chosen Linear, the Gram matrix of
its input tokens (float32 per batch, summed in float64). Images are split into a fitting set and
a held-out set (every k-th image) so the reported per-layer errors are measured on tokens the
factorisation never saw. The dense pass also records the input of the first block, from which
sequential calibration replays the blocks one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.nn as nn

from ...errors import VitoptError


@dataclass
class Grams:
    """Float64 sums over the fitting tokens (``fit``) and the held-out tokens (``held``)."""
    fit: Optional[torch.Tensor] = None
    held: Optional[torch.Tensor] = None
    fit_tokens: int = 0
    held_tokens: int = 0

    def add(self, a: torch.Tensor, b: torch.Tensor, held: bool) -> None:
        g = (a.T.float() @ b.float()).to(torch.float64)
        if held:
            self.held = g if self.held is None else self.held + g
            self.held_tokens += a.shape[0]
        else:
            self.fit = g if self.fit is None else self.fit + g
            self.fit_tokens += a.shape[0]

    def all_reduce(self, shape: tuple) -> "Grams":
        """Sum over the processes of a torchrun group (identity alone); ``shape`` stands in for a sum
        a rank did not get (no held-out image among its batches)."""
        from ...distributed import all_reduce_sum, all_sum, rank_world
        if rank_world()[1] == 1:
            return self
        self.fit_tokens, self.held_tokens = (int(v) for v in all_sum([self.fit_tokens, self.held_tokens]))
        for name, tokens in (("fit", self.fit_tokens), ("held", self.held_tokens)):
            g = getattr(self, name)
            g = all_reduce_sum(torch.zeros(shape, dtype=torch.float64) if g is None else g)
            setattr(self, name, g if tokens else None)
        return self


def held_mask(start: int, batch: int, every: int) -> torch.Tensor:
    """Image i (global index) is held out when every > 0 and i % every == every - 1."""
    idx = torch.arange(start, start + batch)
    return (idx % every == every - 1) if every > 0 else torch.zeros(batch, dtype=torch.bool)


def _split(x: torch.Tensor, mask: torch.Tensor):
    """Per-image rows of ``x`` (batch first) for the fitting and held-out images."""
    return x[~mask], x[mask]


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the wanted input is captured."""


@dataclass
class DensePass:
    grams: dict                                   # path -> Grams of that Linear's input
    tokens: dict                                  # path -> tokens per image at that Linear
    block0_inputs: list = field(default_factory=list)   # per batch: (input of blocks[0], held mask)
    images: int = 0
    probe: list = field(default_factory=list)           # the first fitting images, for sensitivities


@torch.no_grad()
def dense_pass(model: nn.Module, batches: Iterable, paths: list, held_every: int,
               keep_block_inputs: bool, probe_images: int = 0) -> DensePass:
    """Stream ``batches`` through ``model`` once, accumulating the input Gram of each Linear in ``paths``.

    ``batches`` yields image tensors, or ``(start, images)`` pairs where ``start`` is the global index
    of the batch's first image: a process of a torchrun group then gets only its share of the batches
    (``calibration_batches``), and the sums, counts and probe images are combined over the group at the
    end, equal to one process's pass over every batch. The kept block inputs stay per process.
    """
    mods = {p: model.get_submodule(p) for p in paths}
    res = DensePass({p: Grams() for p in paths}, {})
    state = {"mask": None}
    handles = []

    def make_hook(path, mod):
        def hook(m, args):
            x = args[0]
            b = x.shape[0]
            rows = x.detach().reshape(b, -1, mod.in_features)
            res.tokens[path] = rows.shape[1]
            fit, held = _split(rows, state["mask"])
            if fit.numel():
                f = fit.reshape(-1, mod.in_features)
                res.grams[path].add(f, f, held=False)
            if held.numel():
                h = held.reshape(-1, mod.in_features)
                res.grams[path].add(h, h, held=True)
        return hook

    for p, m in mods.items():
        handles.append(m.register_forward_pre_hook(make_hook(p, m)))
    if keep_block_inputs:
        def keep(m, args):
            res.block0_inputs.append((args[0].detach().clone(), state["mask"].clone()))
        handles.append(model.blocks[0].register_forward_pre_hook(keep))
    was_training = model.training
    model.eval()
    probe = []          # (start, fitting images of that batch) while fewer than probe_images are kept
    try:
        for item in batches:
            start, x = item if isinstance(item, tuple) else (res.images, item)
            state["mask"] = held_mask(start, x.shape[0], held_every)
            model(x)
            have = sum(p.shape[0] for _, p in probe)
            if have < probe_images:
                probe.append((start, x[~state["mask"]][: probe_images - have].detach().clone()))
            res.images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    _combine_over_ranks(res, mods, probe, probe_images)
    if res.images == 0:
        raise VitoptError("no calibration images were read")
    return res


def _combine_over_ranks(res: DensePass, mods: dict, probe: list, probe_images: int) -> None:
    """Sum the Grams and counts over a torchrun group and keep the first ``probe_images`` fitting images
    in global order (alone: just the probe images in order)."""
    from ...distributed import all_sum, gather_objects, rank_world
    world = rank_world()[1]
    if world > 1:
        for p, m in mods.items():
            res.grams[p].all_reduce((m.in_features, m.in_features))
        res.images = int(all_sum([res.images])[0])
        for tokens in gather_objects(res.tokens):
            res.tokens.update(tokens)
        probe = [(s, t.cpu()) for part in gather_objects([(s, t.cpu()) for s, t in probe]) for s, t in part]
    device = probe[0][1].device if probe else None
    kept, have = [], 0
    for _, t in sorted(probe, key=lambda st: st[0]):
        if have >= probe_images:
            break
        kept.append(t[: probe_images - have].to(device))
        have += kept[-1].shape[0]
    res.probe = kept


@torch.no_grad()
def capture_input(block: nn.Module, sub: str, x: torch.Tensor) -> torch.Tensor:
    """The input of ``block.<sub>`` when ``block`` runs on ``x`` (the forward stops there)."""
    mod = block.get_submodule(sub)
    out = {}

    def hook(m, args):
        out["x"] = args[0].detach()
        raise _Stop

    h = mod.register_forward_pre_hook(hook)
    try:
        block(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if "x" not in out:
        raise VitoptError(f"block never called its '{sub}' module: cannot calibrate it")
    return out["x"]


@torch.no_grad()
def pair_grams(block_d: nn.Module, block_c: nn.Module, sub: str, inputs_d: list, inputs_c: list,
               in_features: int):
    """(C_cc, C_cd) Grams of ``sub``'s input in the compressed block (X_c) against the dense one (X_d)."""
    cc, cd = Grams(), Grams()
    for (hd, mask), (hc, _) in zip(inputs_d, inputs_c):
        b = hd.shape[0]
        xd = capture_input(block_d, sub, hd).reshape(b, -1, in_features)
        xc = capture_input(block_c, sub, hc).reshape(b, -1, in_features)
        for held, sel in ((False, ~mask), (True, mask)):
            if bool(sel.any()):
                a, d = xc[sel].reshape(-1, in_features), xd[sel].reshape(-1, in_features)
                cc.add(a, a, held)
                cd.add(a, d, held)
    # each process holds the block inputs of its own batches (dense_pass): sum over the group
    shape = (in_features, in_features)
    return cc.all_reduce(shape), cd.all_reduce(shape)


@torch.no_grad()
def run_block(block: nn.Module, inputs: list) -> list:
    """Outputs of ``block`` for each stored (input, mask) batch."""
    return [(block(h), mask) for h, mask in inputs]


def cached_dense_pass(cache_dir, key: dict, model: nn.Module, batches: Iterable[torch.Tensor], paths: list,
                      held_every: int, keep_block_inputs: bool, probe_images: int = 0, log=print) -> DensePass:
    """``dense_pass``, kept in ``cache_dir`` (None: not kept) for later calls with the same inputs.

    ``key`` names what ``batches`` are (calibration folder, image count, batch size); the model's weights
    and the pass's own arguments are added here. A sweep of low-rank budgets on one model then reads
    the images once: every budget factorises from the same Grams.
    """
    from ...distributed import broadcast_object, rank_world, save_on_main
    if cache_dir is None or (keep_block_inputs and rank_world()[1] > 1):
        # the kept block inputs are each process's own: one shared file cannot hold them
        return dense_pass(model, batches, paths, held_every, keep_block_inputs, probe_images)
    import hashlib
    import json
    from pathlib import Path
    from ...evaluation import weights_sha256
    h = hashlib.sha256(json.dumps({**key, "paths": paths, "held_every": held_every, "keep": keep_block_inputs,
                                   "probe": probe_images, "weights": weights_sha256(model)},
                                  sort_keys=True, default=str).encode())
    path = Path(cache_dir) / f"lowrank_dense_pass-{h.hexdigest()[:16]}.pt"
    if broadcast_object(path.is_file()):   # rank 0's view: the file it wrote is complete
        s = torch.load(path, map_location="cpu", weights_only=True)
        log(f"lowrank: calibration statistics reused from {path.name}")
        return DensePass({p: Grams(*g) for p, g in s["grams"].items()}, s["tokens"],
                         [tuple(b) for b in s["block0_inputs"]], s["images"], s["probe"])
    res = dense_pass(model, batches, paths, held_every, keep_block_inputs, probe_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_on_main(path, {"grams": {p: (g.fit, g.held, g.fit_tokens, g.held_tokens) for p, g in res.grams.items()},
                        "tokens": res.tokens, "block0_inputs": [list(b) for b in res.block0_inputs],
                        "images": res.images, "probe": res.probe})
    return res

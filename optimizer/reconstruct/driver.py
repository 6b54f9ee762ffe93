"""``reconstruct_model``: the block-by-block driver of the reconstruction step.

Order of work (all under ``torch.no_grad`` except the block-wise tune):
1. the calibration images (evenly spaced, this rank's share) are read once; the compressed model's
   and the dense teacher's block-0 inputs are kept (activations: N × tokens × dim per model);
2. per block: the dense block's output is the target, at the compressed block's kept token
   positions (``PrunedBlock.token_positions``); the compressed block's input is what the already
   reconstructed blocks before it produce, so each block also corrects the drift of those before;
3. closed form: ``attn.proj`` is fitted so that the block's mid residual matches the dense one
   (target = dense mid residual − compressed block input), then ``mlp.fc2`` so that the block output
   matches (target = dense output − compressed mid residual), each by ridge least squares from
   streamed statistics (``stats``/``closed_form``);
4. block-wise: Adam on the block output MSE (``blockwise``);
5. every update is kept only when the block's output error on the held-out images fell; then the
   compressed inputs move on through the block.

Gated blocks (``optimizer.methods.gates``) decide once per batch, so the batches the compressed blocks
run on are gate groups: ``group_sizes`` (the gates step passes its ``calib_groups``, the deployment
batch sizes) gives one stream of compressed block inputs per group size, each propagated in groups of
its size; the closed-form statistics pool every stream (the output map is fitted under the decisions
taken at every deployed group size), the held-out error sums them, the block-wise tune reads the
stream of the largest size (its own batches are its groups). A gated output map is not called as a
layer (the forward gathers its columns): its input comes from the branch's ``output_map_input`` (zeros
for the units switched off). Ungated models give the same result for any group size: one stream.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn

from typing import Optional, Sequence

from ..distributed import all_reduce_sum, is_main, rank_world, shard_indices
from ..errors import VitoptError
from .blockwise import tune_block
from .closed_form import refit_layer
from .config import ReconstructConfig
from .stats import LinearStats

# output maps the closed form can re-fit: config name -> (branch module, layer, layer-scale module)
_LAYERS = {"proj": ("attn", "proj", "ls1"), "fc2": ("mlp", "fc2", "ls2")}


def calibration_images(ctx, model, count: int, batch_size: int) -> tuple:
    """This rank's share of ``count`` evenly spaced images of ``ctx.calib_dir`` (eval transform), in batches;
    returns ([(global image indices, images)], number of images over all ranks)."""
    from torch.utils.data import DataLoader, Subset
    from ..data.folder import collate, spaced_indices
    if not ctx.calib_dir:
        raise VitoptError("reconstruction needs calibration images (--calib DIR)")
    ds = ctx.calib_dataset(model)
    every = spaced_indices(len(ds), count)
    n = len(every)
    if n == 0:
        raise VitoptError(f"no images in {ctx.calib_dir} to reconstruct from")
    mine = shard_indices(n)
    spaced = [every[i] for i in mine]
    loader = DataLoader(_Indexed(Subset(ds, spaced), mine), batch_size=batch_size, shuffle=False,
                        num_workers=ctx.workers, collate_fn=collate)
    # an unreadable image is dropped from its batch: the indices come with the readable ones, so the
    # held-out split (over global indices) stays the same on any number of processes
    return [(torch.as_tensor(b.indices, dtype=torch.long), b.images) for b in loader if b.images.shape[0]], n


class _Indexed:
    """A dataset's items with their global calibration index appended (``Batch.indices``)."""

    def __init__(self, data, index: list):
        self.data, self.index = data, index

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int):
        return (*self.data[j][:3], self.index[j])


def held_out(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask over the ``n`` global image indices: a seeded ``fraction`` of them held out."""
    mask = torch.zeros(n, dtype=torch.bool)
    k = int(round(n * fraction))
    if k:
        g = torch.Generator()
        g.manual_seed(seed)
        mask[torch.randperm(n, generator=g)[:k]] = True
    return mask


def drops_tokens(model: nn.Module) -> bool:
    """True when some block of ``model`` runs on fewer tokens than it receives: a static token drop, or
    token merging (whose blocks also carry token sizes, which this driver does not propagate)."""
    from ..methods.merge.block import merge_schedule
    return merge_schedule(model) is not None or \
        any(getattr(b, "token_index", None) is not None for b in getattr(model, "blocks", ()))


def _positions(block: nn.Module, previous: list) -> list:
    """Original token positions a block outputs (``previous``: those it receives)."""
    pos = getattr(block, "token_positions", None)
    if pos is not None:
        return list(pos)
    if getattr(block, "token_index", None) is not None:
        raise VitoptError("a token-pruned block without token_positions cannot be matched to the dense model")
    return previous


def _select(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    idx = getattr(block, "token_index", None)
    return h if idx is None else h.index_select(1, idx)


def _mid(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual stream after the attention branch (x: the block's token-selected input)."""
    return x + block.ls1(block.attn(block.norm1(x)))


class _Capture:
    """Records the input of ``module`` on each forward (a pre-hook), for one ``with`` block."""

    def __init__(self, module: nn.Module):
        self.module, self.x = module, None

    def __enter__(self):
        self.h = self.module.register_forward_pre_hook(self._hook)
        return self

    def _hook(self, m, args):
        self.x = args[0].detach()

    def __exit__(self, *exc):
        self.h.remove()


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.no_grad()
def _error(block, streams, target) -> float:
    """Relative squared output error ‖block(hc) − target‖² / ‖target‖², summed over the
    ``streams`` [(hc, group size)] and all ranks."""
    t = torch.zeros(2, dtype=torch.float64)
    for hc, size in streams:
        for sl in _chunks(hc.shape[0], size):
            y, tg = block(hc[sl]), target[sl]
            t[0] += float(((y - tg).double() ** 2).sum())
            t[1] += float((tg.double() ** 2).sum())
    all_reduce_sum(t)
    return float(t[0] / t[1]) if t[1] > 0 else 0.0


def _layer_input(block, name: str, x: torch.Tensor) -> tuple:
    """(input of the output map ``name`` on the block input ``x``, the residual it is added to);
    the input is None when the branch does not call the layer."""
    branch, layer_name, _ = _LAYERS[name]
    if name == "proj":
        base = x
        inp = block.norm1(x)
    else:
        base = _mid(block, x)
        inp = block.norm2(base)
    module = getattr(block, branch)
    zero_filled = getattr(module, "output_map_input", None)
    if zero_filled is not None:     # gated: the layer's columns are gathered, never called as a layer
        return zero_filled(inp), base
    with _Capture(getattr(module, layer_name)) as cap:
        module(inp)
    return cap.x, base


@torch.no_grad()
def _refit(block, name, streams, hd, target, dense, token_idx, ridge) -> dict:
    """Closed-form re-fit of one output map of ``block`` on the fitting images of every stream
    [(hc, group size)] (``target``: the dense block's output at the kept positions); returns its report."""
    branch, layer_name, ls_name = _LAYERS[name]
    layer = getattr(getattr(block, branch), layer_name, None)
    if layer is None or not isinstance(getattr(block, ls_name, None), nn.Identity):
        return {"skipped": "no such layer, or a layer scale between it and the residual"}
    stats = None
    for hc, size in streams:
        for sl in _chunks(hc.shape[0], size):
            x = _select(block, hc[sl])
            inp, base = _layer_input(block, name, x)
            if inp is None:
                return {"skipped": f"{name} is not called as a layer"}
            goal = _mid(dense, hd[sl])[:, token_idx] if name == "proj" else target[sl]
            tg = goal - base
            if stats is None:
                stats = LinearStats(inp.shape[-1], tg.shape[-1])
            stats.add(inp, tg)
    if stats is None:
        stats = LinearStats(layer.in_features, layer.out_features)   # no images on this rank
    stats.reduce()
    return refit_layer(layer, stats, ridge)


def reconstruct_model(model: nn.Module, teacher: nn.Module, ctx, cfg: ReconstructConfig,
                      group_sizes: Optional[Sequence[int]] = None) -> dict:
    """Reconstruct ``model`` (in place) block by block towards the dense ``teacher`` on ``ctx.calib_dir``.

    Args:
        model: the compressed timm-style ViT (``.blocks``), as a method's structural step left it.
        teacher: the model that entered the compression (frozen; same number of blocks).
        ctx: ``CompressContext`` (calib_dir, device, workers, seed, log, synsets).
        cfg: ``ReconstructConfig``; mode "none" returns at once.
        group_sizes: the batch sizes the compressed blocks run on (gate groups; see the module
            docstring); None: ``cfg.batch_size`` alone.
    Returns:
        report: mode, images, held-out images, seconds, and per block the held-out error before and
        after each stage, whether it was kept, and seconds.
    Raises:
        VitoptError without images or teacher, or when block counts / token positions do not match.
    Example: ``reconstruct_model(slim, dense, CompressContext(calib_dir="train/"), ReconstructConfig(mode="both"))``
    """
    if not isinstance(cfg, ReconstructConfig):
        raise VitoptError(f"reconstruction needs a ReconstructConfig, got {type(cfg).__name__}")
    asked = cfg.mode
    cfg = cfg.resolved(drops_tokens(model), bool(ctx.calib_dir))
    from ..methods.merge.block import merge_schedule
    if cfg.enabled and merge_schedule(model) is not None:
        raise VitoptError(f"reconstruct mode {cfg.mode} cannot run on a token-merging model (its blocks carry token "
                          "sizes): use reconstruct: auto or none here; slim's merge mode reconstructs before merging")
    if not cfg.enabled:
        return {"mode": "none", **({"asked": asked} if asked != cfg.mode else {})}
    if teacher is None:
        raise VitoptError("reconstruction needs the dense teacher model")
    blocks, dense_blocks = getattr(model, "blocks", None), getattr(teacher, "blocks", None)
    if blocks is None or dense_blocks is None or len(blocks) != len(dense_blocks):
        raise VitoptError("reconstruction needs the compressed and the dense model to have the same blocks")
    from ..methods.lowrank.calibrate import capture_input
    from ..progress import progress
    t0 = time.perf_counter()
    log = ctx.log if ctx.log is not None and is_main() else (lambda s: None)
    seed = ctx.seed if cfg.seed is None else cfg.seed
    device = torch.device(ctx.device)
    model.eval().to(device)
    teacher.eval().to(device)
    batches, n = calibration_images(ctx, model, cfg.images, cfg.batch_size)
    held_all = held_out(n, cfg.holdout, seed)
    with torch.no_grad():
        hc = torch.cat([capture_input(model, "blocks.0", x.to(device)) for _, x in batches])
        hd = torch.cat([capture_input(teacher, "blocks.0", x.to(device)) for _, x in batches])
    index = torch.cat([i for i, _ in batches]) if batches else torch.zeros(0, dtype=torch.long)
    held = held_all[index].to(device)
    fit = ~held if bool(held_all.any()) else torch.ones_like(held)
    pos_c = pos_d = list(range(hc.shape[1]))
    size = cfg.batch_size
    sizes = sorted({int(g) for g in group_sizes}) if group_sizes else [size]
    if any(g < 1 for g in sizes):
        raise VitoptError(f"group sizes must be positive, got {list(group_sizes)}")
    # one stream of compressed block inputs per group size (they differ only under gates)
    hcs = {g: hc for g in sizes}
    del hc
    rows = []
    log(f"reconstruct: {cfg.mode} over {len(blocks)} blocks, {n} images ({int(held_all.sum())} held out)")
    for i in progress(range(len(blocks)), desc="reconstruct"):
        tb = time.perf_counter()
        bc, bd = blocks[i], dense_blocks[i]
        pos_c, pos_d = _positions(bc, pos_c), _positions(bd, pos_d)
        where = {p: j for j, p in enumerate(pos_d)}
        if any(p not in where for p in pos_c):
            raise VitoptError(f"block {i} keeps tokens the dense block does not output: cannot compare them")
        token_idx = torch.as_tensor([where[p] for p in pos_c], device=device)
        with torch.no_grad():
            hd_next = torch.cat([bd(hd[sl]) for sl in _chunks(hd.shape[0], size)])
            target = hd_next[:, token_idx]
        judge = held if bool(held_all.any()) else fit
        judged = [(h[judge], g) for g, h in hcs.items()]
        err = _error(bc, judged, target[judge])
        row = {"block": i, "error_before": err}
        kept = []
        if cfg.closed_form:
            saved = copy.deepcopy(bc.state_dict())
            fitted, df, tf = [(h[fit], g) for g, h in hcs.items()], hd[fit], target[fit]
            info = {name: _refit(bc, name, fitted, df, tf, bd, token_idx, cfg.ridge) for name in cfg.layers}
            del fitted, df, tf
            e = _error(bc, judged, target[judge])
            row["closed_form"] = {"error": e, "layers": info}
            if e < err or not bool(held_all.any()):
                err = e
                kept.append("closed_form")
            else:
                bc.load_state_dict(saved)
        if cfg.blockwise:
            saved = copy.deepcopy(bc.state_dict())
            info = tune_block(bc, hcs[sizes[-1]][fit], target[fit], cfg.steps, cfg.lr, size,
                              seed * 100003 + i * 101 + rank_world()[0])
            e = _error(bc, judged, target[judge])
            row["blockwise"] = {"error": e, **info}
            if e < err or not bool(held_all.any()):
                err = e
                kept.append("blockwise")
            else:
                bc.load_state_dict(saved)
        row.update(error_after=err, kept=kept, seconds=round(time.perf_counter() - tb, 2))
        rows.append(row)
        log(f"reconstruct: block {i}: held-out error {row['error_before']:.4g} -> {err:.4g} "
            f"({'+'.join(kept) or 'rolled back'}, {row['seconds']} s)")
        del judged
        with torch.no_grad():
            hcs = {g: torch.cat([bc(h[sl]) for sl in _chunks(h.shape[0], g)]) for g, h in hcs.items()}
        hd = hd_next
    model.eval()
    return {"mode": cfg.mode, **({"asked": asked} if asked != cfg.mode else {}), "images": n, "held_out": int(held_all.sum()),
            "judged_on": "held-out" if bool(held_all.any()) else "fitting images", "group_sizes": sizes,
            "seconds": round(time.perf_counter() - t0, 2), "blocks": rows}

"""``factorize_linears``: calibrate, allocate ranks, fit each layer, and the registered ``apply``.

Order of work:
1. one dense pass over the calibration images: input Gram XᵀX of every candidate Linear
   (and the input of the first block, for sequential calibration);
2. per layer, the singular values of W·L give its error at every rank; the budget is split
   greedily across layers (``allocate.allocate_ranks``);
3. per layer, in execution order: activation-aware SVD at the allocated rank, then the
   error-compensation term. With ``sequential`` (default) block i is calibrated on the outputs
   of the already-factorised blocks 0..i-1 (and a layer on its own block's factorised earlier
   layers), with the dense model's outputs as the target; otherwise all layers use the dense
   activations of step 1 (one pass, "independent").
"""
from __future__ import annotations

import copy
import time
from typing import Iterable, Optional

import torch
import torch.nn as nn

from ...compress.registry import StepResult
from ...counting import count_macs, count_params
from ...errors import VitoptError
from .allocate import DENSE, LayerCost, allocate_ranks, saving_rank
from .calibrate import cached_dense_pass, pair_grams, run_block
from .compensate import closed_form, compensate_adam, unwhiten, whitened_target
from ...reconstruct import reconstruct_model
from .config import LowRankConfig
from .module import LowRankLinear, lowrank_structure, merge_for_export, set_submodule
from .svd import Whitening, output_error, tail_energy, whitened_svd, whitening


class _Tail(nn.Module):
    """What follows the blocks of a timm ViT (final norm, pooling, head), for calibrating the head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m.forward_head(self.m.norm(x))


def candidate_paths(model: nn.Module, cfg: LowRankConfig) -> list:
    """Paths of the Linears this config may factorise, in execution order."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise VitoptError(f"{type(model).__name__} has no .blocks: lowrank supports timm ViT-style models")
    paths = []
    for i, blk in enumerate(blocks):
        for name, m in blk.named_modules():
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in cfg.layers:
                paths.append(f"blocks.{i}.{name}")
    if cfg.include_head:
        head = getattr(model, "head", None)
        if isinstance(head, nn.Linear) and head.out_features > 0:
            paths.append("head")
    if not paths:
        raise VitoptError("no Linear layers to factorise (already factorised, or none of the chosen kinds)")
    return paths


def _layer_costs(model, paths, dense, cfg, table=None) -> tuple:
    """(LayerCost list, fixed cost, total cost, whitenings) in the budget's unit; errors from the
    fitting Grams. With a latency ``table`` every layer's rank is capped at its measured break-even,
    and under the latency budget costs are the table's milliseconds."""
    per_module = count_macs(model).per_module if cfg.budget_kind == "macs" else None
    if cfg.budget_kind == "latency":
        total = float(table.model["ms"])
    else:
        total = count_params(model) if per_module is None else sum(per_module.values())
    layers, whitenings, spent = [], {}, 0.0
    for p in paths:
        m = model.get_submodule(p)
        W = m.weight.detach()
        wh = whitening(dense.grams[p].fit, cfg.damp) if cfg.whiten else Whitening(None, 0.0)
        whitenings[p] = wh
        _, S, _ = whitened_svd(W, wh)
        shape = (dense.tokens[p], m.in_features, m.out_features)
        rank_costs = None
        if cfg.budget_kind == "latency":
            unit, full, rank_costs = 0.0, table.dense_ms(*shape), table.rank_ms(*shape)
        elif per_module is None:
            unit, full = m.in_features + m.out_features, m.in_features * m.out_features
        else:
            tokens = per_module.get(p, 0) / (m.in_features * m.out_features)
            unit, full = tokens * (m.in_features + m.out_features), per_module.get(p, 0)
        cap = table.breakeven(*shape) if table is not None else None
        L = LayerCost(p, m.in_features, m.out_features, unit, full, tail_energy(S), rank_costs, cap)
        if rank_costs is not None:
            wanted = range(cfg.multiple, L.max_rank(cfg.multiple) + 1, cfg.multiple)
            missing = [r for r in wanted if r not in rank_costs]
            if missing:
                raise VitoptError(f"latency table has no time for rank {missing[0]} of {p}: it was measured at "
                                  f"other rank multiples than multiple={cfg.multiple}")
        layers.append(L)
        spent += full
    return layers, total - spent, total, whitenings


def measure_model_table(model: nn.Module, paths: list, tokens: dict, cfg: LowRankConfig, log=print,
                        rounds: int = 5, iters: int = 3):
    """ONNX Runtime latency table for ``model``'s Linears ``paths`` (``tokens``: path -> tokens per image)
    at ``cfg.latency_batch``/``latency_threads``, plus the whole dense model's time."""
    from pathlib import Path
    from ...export import onnx_from_torch
    from .latency import measure_ort_table
    shapes = []
    for p in paths:
        m = model.get_submodule(p)
        shapes.append((tokens[p], m.in_features, m.out_features,
                       saving_rank(m.in_features, m.out_features, cfg.multiple)))
    from ...fileio import temp_dir
    with temp_dir("vitopt-lowrank-") as tmp:
        # the whole dense model's time: what the layers' savings are a fraction of
        onnx_path = Path(tmp) / "dense.onnx"
        onnx_from_torch(copy.deepcopy(model).cpu().eval(), onnx_path)
        return measure_ort_table(shapes, cfg.multiple, cfg.latency_batch, cfg.latency_threads, rounds, iters,
                                 model_onnx=str(onnx_path),
                                 model_info={"class": type(model).__name__, "params": count_params(model)}, log=log)


def _latency_table(model, paths, dense, cfg, log, loaded=None):
    """The LatencyTable this config asks for (None when it uses none): measured now, or ``loaded``
    from ``cfg.latency_table`` (read before the calibration pass so a bad file fails fast)."""
    if cfg.latency_source is None:
        return None
    if loaded is None:
        table = measure_model_table(model, paths, dense.tokens, cfg, log)
    else:
        table = loaded
        for p in paths:
            m = model.get_submodule(p)
            table.entry(dense.tokens[p], m.in_features, m.out_features)   # raises when a shape is missing
    if cfg.budget_kind == "latency":
        info, params = table.model or {}, count_params(model)
        if "ms" not in info:
            raise VitoptError("the latency budget needs the whole model's time in the latency table "
                              "(measure it for this model: latency_table=ort)")
        if info.get("params") not in (None, params):
            raise VitoptError(f"latency table was measured on a model with {info.get('params')} parameters, "
                              f"this one has {params}: measure one for this model (latency_table=ort)")
    return table


@torch.no_grad()
def _sensitivities(model, layers, whitenings, probe, cfg) -> dict:
    """Per layer: KL(dense ‖ model with only this layer truncated) / that layer's relative error.

    Each layer is truncated to half its largest saving rank on the probe images; the ratio says
    how much one unit of this layer's output error moves the logits (a layer whose output only
    matters for tokens the head never reads, e.g. the last MLP on patch tokens, scores low).
    Normalised to mean 1 and floored at 1 % of the median so no layer is treated as free.
    """
    if not probe:
        return {}
    from .svd import factors_from_svd
    x = torch.cat(probe)
    ref = torch.log_softmax(model(x).double(), -1)
    raw = {}
    for L in layers:
        r = max(cfg.multiple, (L.max_rank(cfg.multiple) // 2) // cfg.multiple * cfg.multiple)
        if L.max_rank(cfg.multiple) < cfg.multiple or r >= min(L.in_features, L.out_features):
            continue
        m = model.get_submodule(L.path)
        W = m.weight.detach().clone()
        wh = whitenings[L.path]
        U, S, Vh = whitened_svd(W, wh)
        up, down = factors_from_svd(U, S, Vh, wh, 0, r)
        m.weight.copy_((up @ down).to(W.dtype))
        try:
            out = torch.log_softmax(model(x).double(), -1)
        finally:
            m.weight.copy_(W)
        kl = float((ref.exp() * (ref - out)).sum(-1).mean())
        raw[L.path] = max(kl, 0.0) / max(float(L.errors[r]), 1e-12)
    if not raw:
        return {}
    vals = sorted(raw.values())
    floor = 0.01 * vals[len(vals) // 2]
    mean = sum(max(v, floor) for v in vals) / len(vals)
    return {p: max(v, floor) / mean for p, v in raw.items()} if mean > 0 else {}


def _fit_layer(m: nn.Linear, rank: int, cfg: LowRankConfig, wh: Whitening, cc, cd, dd, seed: int,
               kind: str = "") -> tuple:
    """A LowRankLinear of total rank ``rank`` for ``m`` and its per-layer report.

    cc/cd/dd: Grams objects (fit + held) of X_cᵀX_c, X_cᵀX_d, X_dᵀX_d (cd/dd None = no drift).
    """
    W = m.weight.detach().to(torch.float64)
    compensates = cfg.compensates and kind in cfg.comp_layers
    if cfg.whiten:
        wh = whitening(cc.fit, cfg.damp)
    U, S, Vh = whitened_svd(W, wh)
    r2 = min(max(1, round(rank * cfg.comp_fraction)), rank - 1) if compensates and rank > 1 else 0
    r1 = rank - r2
    # the (up, z) pairs live in the whitened space of ``wh``: z = down · L
    s = S[:rank].sqrt()
    up_all, z_all = U[:, :rank] * s, s[:, None] * Vh[:rank]

    def err(W_new, held):
        g = (lambda x: None if x is None else (x.held if held else x.fit))
        c = g(cc)
        if c is None:
            return None
        return round(output_error(W_new, W, c, g(cd), g(dd)), 6)

    base = up_all @ unwhiten(z_all, wh)
    info = {"rank": rank, "ranks": [r1, r2], "in": m.in_features, "out": m.out_features,
            "err_fit_svd": err(base, False), "err_held_svd": err(base, True), "lambda": wh.damp,
            "fallback_plain": wh.fallback}
    down_all = unwhiten(z_all, wh)
    factors = [(up_all[:, :r1], down_all[:r1])] + ([(up_all[:, r1:], down_all[r1:])] if r2 else [])
    if compensates and cc is not None and cc.fit is not None:
        # the compensation works in the whitened space of the compressed-input Gram, with its own
        # (larger) ridge: fitting the dense outputs from drifted inputs is a regression that overfits
        wc = whitening(cc.fit, cfg.comp_damp)
        lift = (lambda d: d @ wc.L) if wc.L is not None else (lambda d: d)
        terms = [(u, lift(d)) for u, d in factors]
        T = whitened_target(W, wc, None if cd is None else cd.fit)
        if cfg.comp_solver == "closed":
            up, z = closed_form(T, rank)
            terms = [(up[:, :r1], z[:r1])] + ([(up[:, r1:], z[r1:])] if r2 else [])
        else:
            terms, hist = compensate_adam(T, terms, cfg.comp_steps, cfg.comp_lr, cfg.refine_first, seed)
            info["comp_loss"] = [round(h, 6) for h in hist]
        info["comp_lambda"] = wc.damp
        factors = [(u, unwhiten(z, wc)) for u, z in terms]
    W_new = sum(u @ d for u, d in factors)
    info["err_fit"], info["err_held"] = err(W_new, False), err(W_new, True)
    lr = LowRankLinear(m.in_features, m.out_features, (r1, r2), bias=m.bias is not None)
    flat = [t for pair in factors for t in pair]
    lr.set_factors(*flat, bias=None if m.bias is None else m.bias.detach())
    p = m.weight
    return lr.to(device=p.device, dtype=p.dtype), info


@torch.no_grad()
def factorize_linears(model: nn.Module, cfg: LowRankConfig, batches: Iterable[torch.Tensor],
                      log=print, seed: int = 0, cache_dir=None, cache_key: Optional[dict] = None) -> tuple:
    """Replace the chosen Linears of ``model`` (in place) by low-rank ones meeting ``cfg``'s budget.

    ``batches`` yields image tensors (B, 3, H, W) for calibration. Returns (model, structure, report).
    ``cache_dir``/``cache_key``: keep the calibration statistics for a later call on the same model and images.
    Example: ``factorize_linears(model, LowRankConfig(params_ratio=0.5), [images])``
    """
    t0 = time.perf_counter()
    paths = candidate_paths(model, cfg)
    loaded = None
    if cfg.latency_source not in (None, "ort"):
        from .latency import LatencyTable
        loaded = LatencyTable.load(cfg.latency_source)
    dense_params, dense_macs = count_params(model), count_macs(model).macs
    dense = cached_dense_pass(cache_dir, cache_key or {}, model, batches, paths, cfg.heldout_every,
                              keep_block_inputs=cfg.sequential,
                              probe_images=cfg.probe_images if cfg.allocation == "sensitivity" else 0, log=log)
    t_pass = time.perf_counter() - t0
    table = _latency_table(model, paths, dense, cfg, log, loaded)
    layers, fixed, total, whitenings = _layer_costs(model, paths, dense, cfg, table)
    sens = _sensitivities(model, layers, whitenings, dense.probe, cfg) if cfg.allocation == "sensitivity" else {}
    for L in layers:
        L.errors = L.errors * sens.get(L.path, 1.0)
    budget = cfg.ratio * total - fixed
    ranks = allocate_ranks(layers, budget, cfg.multiple)
    chosen = {p: r for p, r in ranks.items() if r != DENSE}
    log(f"lowrank: {len(chosen)}/{len(paths)} layers factorised, ranks {sorted(set(chosen.values()))}")
    latency = _latency_report(table, layers, ranks, dense.tokens) if table is not None else None

    per_layer = {}
    reference = copy.deepcopy(model).eval() if cfg.sequential else None
    blocks = model.blocks
    by_block = {}
    for p in paths:
        key = int(p.split(".")[1]) if p.startswith("blocks.") else "tail"
        by_block.setdefault(key, []).append(p)
    h_d = h_c = dense.block0_inputs if cfg.sequential else None
    for key, group in by_block.items():
        if cfg.sequential:
            blk_c = blocks[key] if key != "tail" else _Tail(model)
            blk_d = reference.blocks[key] if key != "tail" else _Tail(reference)
            prefix = f"blocks.{key}." if key != "tail" else "m."
        for p in group:
            if p not in chosen:
                continue
            m = model.get_submodule(p)
            dd = dense.grams[p]
            if cfg.sequential:
                sub = p[len(f"blocks.{key}."):] if key != "tail" else "m." + p
                cc, cd = pair_grams(blk_d, blk_c, sub, h_d, h_c, m.in_features)
            else:
                cc, cd, dd = dd, None, None
            new, info = _fit_layer(m, chosen[p], cfg, whitenings[p], cc, cd, dd, seed, kind=p.rsplit(".", 1)[-1])
            set_submodule(model, p, new)
            per_layer[p] = info
        if cfg.sequential and key != "tail":
            h_c = run_block(blk_c, h_c)
            h_d = run_block(blk_d, h_d)
    del reference, h_c, h_d

    if cfg.merge:
        merge_for_export(model)
    new_params, new_macs = count_params(model), count_macs(model).macs
    kept = [p for p in paths if p not in chosen]
    report = {
        "budget": cfg.budget_kind, "target_ratio": cfg.ratio,
        "params_ratio": round(new_params / dense_params, 5), "macs_ratio": round(new_macs / dense_macs, 5),
        "params": new_params, "dense_params": dense_params, "macs": new_macs, "dense_macs": dense_macs,
        "factorised": len(chosen), "kept_dense": kept, "allocation": cfg.allocation,
        "sensitivity": {p: round(v, 5) for p, v in sens.items()},
        "latency": latency,
        "calib_images": dense.images, "calib_mode": "sequential" if cfg.sequential else "independent",
        "svd": "activation-aware" if cfg.whiten else "plain",
        "mean_err_held_svd": _mean([i["err_held_svd"] for i in per_layer.values()]),
        "mean_err_held": _mean([i["err_held"] for i in per_layer.values()]),
        "dense_pass_seconds": round(t_pass, 2), "calibration_seconds": round(time.perf_counter() - t0, 2),
        "layers": per_layer,
    }
    return model, lowrank_structure(model), report


def _latency_report(table, layers, ranks, tokens) -> dict:
    """Break-even caps, per-layer predicted times and the predicted model latency ratio (None when the
    table lacks the time of a chosen rank, e.g. measured at other rank multiples)."""
    per_layer, dense_sum, new_sum, complete = {}, 0.0, 0.0, True
    for L in layers:
        shape = (tokens[L.path], L.in_features, L.out_features)
        d = table.dense_ms(*shape)
        r = ranks[L.path]
        ms = d if r == DENSE else table.rank_ms(*shape).get(r)
        per_layer[L.path] = {"rank": None if r == DENSE else r, "breakeven_rank": L.cap,
                             "dense_ms": round(d, 4), "ms": None if ms is None else round(ms, 4)}
        dense_sum += d
        new_sum += d if ms is None else ms
        complete = complete and ms is not None
    model_ms = (table.model or {}).get("ms")
    predicted = round((model_ms - dense_sum + new_sum) / model_ms, 4) if model_ms and complete else None
    return {"backend": table.backend, "batch": table.batch, "threads": table.threads,
            "predicted_latency_ratio": predicted, "layers": per_layer, "latency_table": table.to_dict()}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 6) if xs else None


def calibration_batches(ctx, model, cfg: LowRankConfig):
    """Evenly spaced calibration images from ``ctx.calib_dir`` with the model's eval transform, as
    ``(global index of the first image, images)``; under torchrun each process reads every world-th batch."""
    from torch.utils.data import Subset
    from ... import distributed as dist
    if not ctx.calib_dir:
        raise VitoptError("lowrank needs calibration images (--calib DIR)")
    with dist.agree_on_errors():
        ds = ctx.calib_dataset(model)
    from ...data.folder import spaced_indices
    loader = dist.sharded_loader(Subset(ds, spaced_indices(len(ds), cfg.calib_images)), cfg.batch_size,
                                 shuffle=False, workers=ctx.workers, whole_batches=True)
    rank, world = dist.rank_world()
    device = torch.device(ctx.device)
    for k, batch in enumerate(loader):
        if batch.images.numel():
            yield (rank + k * world) * cfg.batch_size, batch.images.to(device)


def apply(model, cfg: LowRankConfig, ctx) -> StepResult:
    """Registered transform: factorise, then optionally fine-tune from the dense teacher."""
    model.eval().to(ctx.device)
    # reconstruction compares with the model entering this step when no dense teacher is given
    teacher = ctx.teacher if ctx.teacher is not None or not cfg.reconstruct.enabled else copy.deepcopy(model)
    key = {"calib": str(ctx.calib_dir), "images": cfg.calib_images, "batch_size": cfg.batch_size}
    model, structure, report = factorize_linears(model, cfg, calibration_batches(ctx, model, cfg),
                                                 log=ctx.log, seed=ctx.seed, cache_dir=ctx.work_dir, cache_key=key)
    report["reconstruct"] = reconstruct_model(model, teacher, ctx, cfg.reconstruct)
    if cfg.recovery.enabled:
        from ...distill import recover
        if ctx.teacher is None:
            raise VitoptError("lowrank recovery needs the dense teacher (ctx.teacher)")
        report["recovery"] = recover(model, ctx.teacher, ctx, cfg.recovery.distill_config())
        model.eval()
    return StepResult(model, structure, report)

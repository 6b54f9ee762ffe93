"""The masked ViT used only during the search, and the search loop.

``SearchModel`` wraps a prunable timm ViT (``make_prunable``) without changing it: each
``SearchBlock`` shares the block's submodules and adds soft masks
  mask_attn  (heads, head_dim)  multiplied into q, k and v alike (initialised to 1)
  mask_mlp   (hidden,)          multiplied after the MLP activation (initialised to 1)
and the model holds per-block token logits z (blocks, tokens), gate = relu(tanh(z)), z0 = 3.
Token gates are chained over depth, g_l = prod_{j<=l} gate_j, so they are monotone by
construction: a token removed from block l is removed from every later block. A gate acts on
attention as a key weight, softmax(s + log g): with binary gates this is exactly the removal of
the token from the block (the sliced model's static gather), so hard-masked == sliced.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import VitoptError
from ...models.blocks import PrunedBlock, make_prunable
from ...progress import progress

_EPS = 1e-6


class SearchBlock(nn.Module):
    """A ``PrunedBlock``'s computation with soft masks (shares the block's submodules)."""

    def __init__(self, block: PrunedBlock):
        super().__init__()
        if block.token_index is not None:
            raise VitoptError("the slim search needs a model whose blocks keep every token (search before slicing)")
        mlp = block.mlp
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            raise VitoptError("MLPs with a hidden-layer norm are not supported by the slim search")
        self.block = block
        attn = block.attn
        self.mask_attn = nn.Parameter(torch.ones(attn.num_heads, attn.head_dim))
        self.mask_mlp = nn.Parameter(torch.ones(mlp.fc1.out_features))
        # hard token decision: bool (tokens,) or None
        self.keep_tokens: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
        b = self.block
        x = x + b.ls1(self._attention(b.norm1(x), gate))
        mlp = b.mlp
        h = mlp.act(mlp.fc1(b.norm2(x))) * self.mask_mlp
        x = x + b.ls2(mlp.fc2(h))
        return x

    def _attention(self, x: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
        a = self.block.attn
        B, N, _ = x.shape
        qkv = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim) * self.mask_attn
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.keep_tokens is not None:
            bias = self.keep_tokens.to(x.device)[None, None, None, :]          # bool: True takes part
        elif gate is not None:
            bias = torch.log(gate.clamp_min(_EPS))[None, None, None, :].to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=a.scale)
        return a.proj(x.transpose(1, 2).reshape(B, N, a.attn_dim))


class SearchModel(nn.Module):
    """Soft-masked view of a timm ViT; ``model`` itself is left structurally unchanged."""

    def __init__(self, model: nn.Module, prune_tokens: bool = True, token_init: float = 3.0):
        super().__init__()
        for name in ("patch_embed", "_pos_embed", "norm", "forward_head", "blocks"):
            if not hasattr(model, name):
                raise VitoptError(f"{type(model).__name__} is not a timm VisionTransformer (no .{name})")
        if prune_tokens and getattr(model, "global_pool", "token") != "token":
            raise VitoptError(f"token pruning needs class-token pooling; this model pools by "
                              f"'{model.global_pool}' (set prune_tokens=false)")
        self.model = make_prunable(model)
        self.sblocks = nn.ModuleList(SearchBlock(b) for b in self.model.blocks)
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.num_tokens = self._count_tokens()
        self.token_z = (nn.Parameter(torch.full((len(self.sblocks), self.num_tokens), float(token_init)))
                        if prune_tokens else None)

    def _count_tokens(self) -> int:
        pe = self.model.patch_embed
        n = getattr(pe, "num_patches", None)
        if n is None:
            raise VitoptError("cannot tell the number of tokens (patch_embed has no num_patches)")
        return int(n) + self.num_prefix

    def token_gates(self) -> Optional[torch.Tensor]:
        """(blocks, tokens) chained gates in [0, 1]; prefix tokens (class token) always 1."""
        if self.token_z is None:
            return None
        g = torch.relu(torch.tanh(self.token_z))
        if self.num_prefix:
            g = torch.cat([torch.ones_like(g[:, : self.num_prefix]), g[:, self.num_prefix:]], dim=1)
        return torch.cumprod(g, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x) if hasattr(m, "patch_drop") else x
        x = m.norm_pre(x) if hasattr(m, "norm_pre") else x
        if x.shape[1] != self.num_tokens:
            raise VitoptError(f"input gives {x.shape[1]} tokens, the search was set up for {self.num_tokens}")
        gates = self.token_gates()
        for i, blk in enumerate(self.sblocks):
            x = blk(x, None if gates is None else gates[i])
        return m.forward_head(m.norm(x))

    def mask_parameters(self) -> list:
        ps = [p for b in self.sblocks for p in (b.mask_attn, b.mask_mlp)]
        return ps + ([self.token_z] if self.token_z is not None else [])

    def penalty(self, w_attn: float, w_mlp: float, w_token: float) -> torch.Tensor:
        """l1 penalties of the paper, one weight per mask type."""
        p = sum(w_attn * b.mask_attn.abs().sum() + w_mlp * b.mask_mlp.abs().sum() for b in self.sblocks)
        if self.token_z is not None:
            p = p + w_token * torch.tanh(self.token_z[:, self.num_prefix:]).abs().sum()
        return p

    def set_hard(self, decision: Optional[list]) -> None:
        """Binary token sets per block (list of original positions kept), or None for soft gates."""
        for i, b in enumerate(self.sblocks):
            if decision is None:
                b.keep_tokens = None
            else:
                keep = torch.zeros(self.num_tokens, dtype=torch.bool)
                keep[torch.as_tensor(decision[i], dtype=torch.long)] = True
                b.keep_tokens = keep


@dataclass
class SearchResult:
    """Mask values and importance scores per block, as the budget solver reads them.

    attn_mask/attn_score (heads, head_dim); mlp_mask/mlp_score (hidden,); token_gate/token_score
    (blocks, tokens) or None. ``*_mask`` are the values to fold into the sliced weights; scores rank
    units (learned: mask value for per-type ranking, Taylor score of the masked model for global).
    """
    attn_mask: list
    mlp_mask: list
    attn_score: list
    mlp_score: list
    token_gate: Optional[torch.Tensor] = None
    token_score: Optional[torch.Tensor] = None
    num_prefix: int = 1
    importance: str = "learned"
    report: dict = field(default_factory=dict)

    def tensors(self) -> dict:
        t = {}
        for i in range(len(self.attn_mask)):
            t[f"attn_mask.{i}"] = self.attn_mask[i]
            t[f"mlp_mask.{i}"] = self.mlp_mask[i]
            t[f"attn_score.{i}"] = self.attn_score[i]
            t[f"mlp_score.{i}"] = self.mlp_score[i]
        if self.token_gate is not None:
            t["token_gate"], t["token_score"] = self.token_gate, self.token_score
        return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


def result_from_search_model(sm: SearchModel, taylor: dict, importance: str = "learned", report=None) -> SearchResult:
    gates = sm.token_gates()
    n = len(sm.sblocks)
    return SearchResult(
        attn_mask=[b.mask_attn.detach().clone() for b in sm.sblocks],
        mlp_mask=[b.mask_mlp.detach().clone() for b in sm.sblocks],
        attn_score=[taylor[f"attn.{i}"].clone() for i in range(n)],
        mlp_score=[taylor[f"mlp.{i}"].clone() for i in range(n)],
        token_gate=None if gates is None else gates.detach().clone(),
        token_score=None if sm.token_z is None else taylor["token"].clone(),
        num_prefix=sm.num_prefix, importance=importance, report=dict(report or {}))


class TaylorMeter:
    """Accumulates (m · dL/dm)^2 per mask element (Molchanov et al.'s Taylor importance)."""

    def __init__(self, sm: SearchModel):
        self.sm = sm
        n = len(sm.sblocks)
        self.acc = {f"attn.{i}": torch.zeros_like(b.mask_attn) for i, b in enumerate(sm.sblocks)}
        self.acc.update({f"mlp.{i}": torch.zeros_like(b.mask_mlp) for i, b in enumerate(sm.sblocks)})
        if sm.token_z is not None:
            self.acc["token"] = torch.zeros_like(sm.token_z)
        self.count = 0
        self._n = n

    def update(self, grads: dict) -> None:
        """``grads`` maps the keys above to dL/d(mask) of the task loss alone."""
        for i, b in enumerate(self.sm.sblocks):
            self.acc[f"attn.{i}"] += (b.mask_attn.detach() * grads[f"attn.{i}"]) ** 2
            self.acc[f"mlp.{i}"] += (b.mask_mlp.detach() * grads[f"mlp.{i}"]) ** 2
        if "token" in self.acc:
            # removing a token = its gate to 0; d L/d gate ~ d L/d z / (d gate/d z), use the z-gradient scaled by gate
            g = torch.relu(torch.tanh(self.sm.token_z.detach()))
            dz = 1 - torch.tanh(self.sm.token_z.detach()) ** 2
            self.acc["token"] += (g * grads["token"] / dz.clamp_min(1e-3)) ** 2
        self.count += 1

    def scores(self) -> dict:
        c = max(self.count, 1)
        return {k: v / c for k, v in self.acc.items()}


def mask_dict(sm: SearchModel) -> dict:
    """``{"attn.i" | "mlp.i" | "token": mask tensor}`` of a search model (saved and ranked by name)."""
    d = {f"attn.{i}": b.mask_attn for i, b in enumerate(sm.sblocks)}
    d.update({f"mlp.{i}": b.mask_mlp for i, b in enumerate(sm.sblocks)})
    if sm.token_z is not None:
        d["token"] = sm.token_z
    return d


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """τ²·KL(softmax(t/τ) || softmax(s/τ)), batch mean."""
    return F.kl_div(F.log_softmax(student_logits / tau, 1), F.log_softmax(teacher_logits / tau, 1),
                    log_target=True, reduction="batchmean") * tau * tau


class TeacherCache:
    """Teacher logits per image path: deterministic transforms make them reusable across epochs."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        self.cache: dict = {}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, paths: list) -> torch.Tensor:
        missing = [i for i, p in enumerate(paths) if p not in self.cache]
        if missing:
            out = self.teacher(images[missing]).float()
            for j, i in enumerate(missing):
                self.cache[paths[i]] = out[j].cpu()
        return torch.stack([self.cache[p] for p in paths]).to(images.device)


def _trainable(sm: SearchModel, freeze_weights: bool) -> list:
    """Non-mask parameters the search updates: LayerNorms only when weights are frozen."""
    if not freeze_weights:
        return [p for p in sm.model.parameters()]
    return [p for m in sm.model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]


def search_masks(model: nn.Module, cfg, ctx, teacher: Optional[nn.Module] = None) -> SearchResult:
    """Learn soft masks on ``model`` (its norms, or all weights, are updated in place).

    Loss: KD from ``teacher`` (no labels) + l1 penalties per mask type. AdamW; resumable from
    ``ctx.work_dir/slim_search.pt``. Returns the mask values and Taylor scores of the masked model.

    Under torchrun every rank takes its part of the same global batches (``distributed.sharded_loader``),
    its loss is its images' share of the global batch mean and the gradients are summed over ranks
    before the step, so N processes learn the masks one process learns (within float rounding).
    Rank 0 writes the checkpoint; every rank resumes from it.
    """
    from ... import distributed as dist
    from ...mixed_precision import mixed_precision
    if teacher is None:
        raise VitoptError("the slim search needs the dense teacher (ctx.teacher)")
    device = ctx.device
    sm = SearchModel(model, prune_tokens=cfg.prune_tokens, token_init=cfg.token_init).to(device)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with dist.agree_on_errors():
        ds = ctx.calib_dataset(model)
    per_epoch = math.ceil(len(ds) / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else max(1, int(math.ceil(cfg.epochs * per_epoch)))
    masks = mask_dict(sm)
    for name, p in masks.items():
        on = {"attn": cfg.prune_attention, "mlp": cfg.prune_mlp, "token": cfg.prune_tokens}[name.split(".")[0]]
        p.requires_grad_(on)
    mask_params = [p for p in masks.values() if p.requires_grad]
    trainable = _trainable(sm, cfg.freeze_weights)
    for p in sm.model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": mask_params, "lr": cfg.mask_lr, "weight_decay": 0.0},
                             {"params": trainable, "lr": cfg.lr, "weight_decay": cfg.weight_decay}])
    mp = mixed_precision(device, getattr(cfg, "amp", False))
    meter = TaylorMeter(sm)
    step, t_spent = 0, 0.0
    ckpt = Path(ctx.work_dir) / "slim_search.pt" if ctx.work_dir else None
    key = {"search": cfg.search_key, "seed": ctx.seed, "calib": str(ctx.calib_dir)}
    resumable = False
    if ckpt is not None:
        from ...workdir import check_or_init, fingerprint
        with dist.agree_on_errors():
            if dist.is_main():   # rank 0 owns the work directory; the others follow its decision
                resumable = check_or_init(ctx.work_dir, fingerprint(model, config=key, data=ctx.calib_dir),
                                          progress=ckpt, log=ctx.say)
        resumable = dist.broadcast_object(resumable)
    if resumable:
        with dist.agree_on_errors():
            state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("key") == key:
            sm.load_state_dict(state["search_model"])
            opt.load_state_dict(state["optimizer"])
            meter.acc, meter.count = state["taylor"], state["taylor_count"]
            step, t_spent = state["step"], state.get("seconds", 0.0)
            ctx.say(f"slim: resuming the mask search at step {step}/{total} from {ckpt}")
        else:
            ctx.say(f"slim: ignoring {ckpt} (written by a search with other settings)")
    cache = TeacherCache(teacher)
    sm.train()
    t0 = time.perf_counter()
    bar = progress(range(total), desc="slim search", unit="step", initial=step)
    losses = []
    params = mask_params + trainable
    unreadable = 0
    while step < total:
        epoch, skip = divmod(step, per_epoch)
        loader = dist.sharded_loader(ds, cfg.batch_size, seed=ctx.seed, epoch=epoch, workers=ctx.workers,
                                     start=skip)
        for batch in loader:
            if step >= total:
                break
            n_local = batch.images.shape[0]
            n_all, failed = dist.all_sum([n_local, len(batch.failed)])
            unreadable += int(failed)
            if n_all == 0:
                # an all-unreadable batch still uses up its slot: step is also the loader position that
                # a resume (and the next pass of this loop) skips to, so not counting it would revisit
                # the same empty batch forever
                step += 1
                bar.update(1)
                continue
            opt.zero_grad(set_to_none=True)
            task_local = torch.zeros((), device=device)
            if n_local:
                x = batch.images.to(device)
                with mp.autocast():
                    t_logits = cache(x, batch.paths)
                    s_logits = sm(x)
                # this rank's share of the global batch's mean KD: the ranks' gradients then sum to it
                task_local = kd_loss(s_logits.float(), t_logits.float(), cfg.tau) * (n_local / n_all)
                mp.scaler.scale(task_local).backward()
            dist.sum_gradients(params)
            mp.scaler.unscale_(opt)
            task = dist.all_sum([float(task_local.detach())])[0]
            grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in masks.items()}
            if all(bool(torch.isfinite(g).all()) for g in grads.values()):
                meter.update(grads)
            pen = sm.penalty(cfg.w_attn, cfg.w_mlp, cfg.w_token)
            if mask_params:
                pg = torch.autograd.grad(pen, mask_params, allow_unused=True)
                for p, g in zip(mask_params, pg):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
            mp.scaler.step(opt)
            mp.scaler.update()
            losses.append(task)
            step += 1
            bar.update(1)
            bar.set_postfix(kd=f"{task:.4f}", l1=f"{float(pen.detach()):.3f}")
            if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == total):
                _save_checkpoint(ckpt, sm, opt, meter, step, key, t_spent + time.perf_counter() - t0)
    bar.close()
    seconds = t_spent + time.perf_counter() - t0
    sm.eval()
    for p in sm.model.parameters():
        p.requires_grad_(True)
    report = {"steps": total, "seconds": round(seconds, 1), "final_kd": losses[-1] if losses else None,
              "mean_kd_last10": sum(losses[-10:]) / max(len(losses[-10:]), 1) if losses else None,
              "device": str(device), "freeze_weights": cfg.freeze_weights, "world_size": dist.rank_world()[1],
              "precision": mp.dtype, "unreadable_images": unreadable}
    return result_from_search_model(sm, meter.scores(), "learned", report)


def _save_checkpoint(path: Path, sm, opt, meter, step, key, seconds) -> None:
    from ...distributed import save_on_main
    save_on_main(path, {"search_model": sm.state_dict(), "optimizer": opt.state_dict(), "taylor": meter.acc,
                        "taylor_count": meter.count, "step": step, "key": key, "seconds": seconds})

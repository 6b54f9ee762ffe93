"""``recover``: fine-tune a compressed student from its frozen teacher on an image folder.

One loop serves every compression method's recovery step and ``vitopt distill``:
AdamW (no decay on norms, biases, position embeddings and prefix tokens), linear warm-up then
cosine decay per step, timm's training augmentation, optional EMA, gradient clipping, mixed
precision on CUDA, periodic evaluation (top-1 and agreement with the teacher), resumable
checkpoints in ``ctx.work_dir``, and DistributedDataParallel when a process group exists
(``torchrun --nproc_per_node N``; gloo on CPU). The teacher runs under ``no_grad`` in eval mode
and is never updated.

Determinism: epoch e visits the images in global batches of ``batch_size`` drawn from (seed, e)
(``distributed.global_batches``); under torchrun each rank takes its part of every global batch and
weights its loss by its share of the batch's images, so DDP's gradient average is the gradient of
the whole batch's mean loss: N processes train as one does for the per-image losses (CE, KD; the
manifold terms relate the images within a rank's part, and the L_rand sample of step s on rank r is
drawn from (seed, r, s)). An image's augmentation is drawn from (seed, epoch, image index), so a
resumed run skips the batches already seen and continues bit-for-bit.
"""
from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..errors import VitoptError
from .. import distributed as _dist  # the process-group helpers; short local name
from .config import DistillConfig
from .features import BlockTap, matched_features
from .loss import ManifoldDistillLoss

STATE_FILE = "distill_state.pt"
STATE_FORMAT = "vitopt-distill-state"
# config fields that may change between a run and its resumption
_RESUMABLE_CHANGES = {"val_dir", "eval_every", "eval_limit", "eval_at_start", "save_every", "log_every"}


def lr_at(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to ``base·min_ratio``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def param_groups(model: nn.Module, weight_decay: float, lr_scale: Optional[Callable[[str], float]] = None) -> list:
    """timm's rule: no weight decay on 1-D tensors (norms, biases) and the model's no_weight_decay set.

    With ``lr_scale`` every (weight decay, scale) pair gets its own group that carries ``lr_scale`` for
    the schedule; parameters scaled by 0 are left out (frozen)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    buckets: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        if not math.isfinite(scale) or scale < 0:
            raise VitoptError(f"learning-rate scale of {name} is {scale}: it must be a finite number >= 0")
        if scale == 0.0:
            continue
        decays = not (p.ndim <= 1 or name in skip)
        buckets.setdefault((decays, scale), []).append(p)
    if lr_scale is None:
        return [{"params": buckets.get((True, 1.0), []), "weight_decay": weight_decay},
                {"params": buckets.get((False, 1.0), []), "weight_decay": 0.0}]
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


class ModelEma:
    """Exponential moving average of a model's parameters (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)


def _fingerprint(model: nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _seed_everything(seed: int) -> None:
    # timm's RandAugment draws from numpy, its crops from `random`; DataLoader workers reseed all three
    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _val_loader(cfg: DistillConfig, ctx, model, log):
    from ..data import build_loader
    try:
        return build_loader(cfg.val_dir, model, batch_size=cfg.batch_size, synsets=ctx.synsets, labeled=True,
                            workers=ctx.workers, limit=cfg.eval_limit)
    except VitoptError as e:
        if "not found" in str(e):
            raise
        log(f"distill: {cfg.val_dir} has no usable labels ({e}); reporting agreement only")
        return build_loader(cfg.val_dir, model, batch_size=cfg.batch_size, labeled=False,
                            workers=ctx.workers, limit=cfg.eval_limit)


def _evaluate(model, teacher, loader, device) -> dict:
    from ..evaluation import evaluate
    r = evaluate(model, loader, reference=teacher, device=str(device), desc="distill eval").to_dict()
    r.pop("failed", None)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


class HoldoutGuard:
    """Mean KL(teacher || student) on held-out training images, and the best weights seen.

    Label-free early stopping: the held-out images (every k-th of the training folder) are removed
    from training; ``check`` scores the current weights (``optimizer.evaluation.evaluate`` against
    the teacher) and keeps a CPU copy when they are the best so far, ``restore_best`` loads that
    copy. A resumed run starts its history at the resumed weights (the earlier best is not kept).
    """

    def __init__(self, loader, teacher, device, keep_best: bool = True):
        self.loader, self.teacher, self.device, self.keep_best = loader, teacher, device, keep_best
        self.history: list = []
        self.best: Optional[dict] = None
        self._best_state: Optional[dict] = None

    @classmethod
    def split(cls, ds, fraction: float, transform, teacher, device, batch_size: int, workers: int,
              keep_best: bool = True):
        """Move every round(1/fraction)-th sample of ``ds`` into the guard's own loader."""
        from ..data.folder import collate
        k = max(2, round(1.0 / fraction))
        held = ds.samples[::k]
        ds.samples = [s for i, s in enumerate(ds.samples) if i % k]
        if not held or not ds.samples:
            raise VitoptError(f"holdout {fraction} leaves no images to train on or to check with")
        loader = torch.utils.data.DataLoader(ds.with_samples(held, transform), batch_size=batch_size,
                                             shuffle=False, num_workers=workers, collate_fn=collate)
        return cls(loader, teacher, device, keep_best)

    def score(self, model: nn.Module) -> dict:
        from ..evaluation import evaluate
        was = model.training
        try:
            r = evaluate(model, self.loader, reference=self.teacher, device=str(self.device), desc="held-out check")
        finally:
            model.train(was)
        if not r.images:
            raise VitoptError("no held-out image could be read: lower holdout or check the training folder")
        return {"mean_kl": round(r.mean_kl, 6), "agreement": round(r.agreement, 3), "images": r.images}

    def check(self, model: nn.Module, step: int, say) -> dict:
        r = {"step": step, **self.score(model)}
        self.history.append(r)
        if self.best is None or r["mean_kl"] < self.best["mean_kl"]:
            self.best = r
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        say(f"distill: held-out check at step {step}: KL {r['mean_kl']:.4f} agreement {r['agreement']:.2f} % "
            f"({r['images']} images; best at step {self.best['step']})")
        return r

    def restore_best(self, model: nn.Module, say) -> None:
        last = self.history[-1]
        if self.best is not None and self.best["step"] != last["step"]:
            model.load_state_dict(self._best_state)
            say(f"distill: kept the weights of step {self.best['step']} (held-out KL {self.best['mean_kl']:.4f} "
                f"< {last['mean_kl']:.4f} at the end)")

    def report(self) -> dict:
        return {"images": self.history[0]["images"] if self.history else 0, "history": self.history,
                "best_step": self.best["step"] if self.best else None,
                "returned_step": (self.best["step"] if self.keep_best else self.history[-1]["step"])
                if self.history else None}


def recover(student: nn.Module, teacher: Optional[nn.Module], ctx, cfg: Optional[DistillConfig] = None,
            *, resume: bool = False, before_step: Optional[Callable[[int, int], None]] = None,
            extra_loss: Optional[Callable[[int], dict]] = None,
            lr_scale: Optional[Callable[[str], float]] = None) -> dict:
    """Fine-tune ``student`` (in place) from the frozen ``teacher`` on ``ctx.calib_dir``.

    Args:
        student: the compressed model; trained in place (left in eval mode, EMA weights if enabled).
            Parameters with requires_grad=False stay fixed, unless all are (then all train).
        teacher: the dense original; None only when ``cfg.alpha == cfg.beta == 0`` (plain CE).
        ctx: ``CompressContext`` (calib_dir, device, workers, seed, work_dir, log, synsets).
        cfg: ``DistillConfig`` (default: official manifold-distillation weights, one epoch).
        resume: continue from ``ctx.work_dir``'s checkpoint (error when there is none).
        before_step: called as ``before_step(step, batch)`` before each student forward (e.g. the gates
            step sets its gate groups for that batch here, so the backbone is tuned under them).
    Returns:
        report dict: steps, epochs, images, seconds, images_per_s, lr, first/final losses, evals, world_size.
    Raises:
        VitoptError on a missing teacher/data, unpaired layers, unlabelled data with alpha < 1,
        or a checkpoint written for another model or config.
    Example: ``recover(slim, dense, CompressContext(calib_dir="train/"), DistillConfig(steps=300))``
    """
    cfg = cfg or DistillConfig()
    log = ctx.log if ctx.log is not None else (lambda s: None)
    seed = ctx.seed if cfg.seed is None else cfg.seed
    rank, world = _dist.rank_world()
    device = torch.device(ctx.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", _dist.local_rank())
    if not ctx.calib_dir:
        raise VitoptError("distillation needs training images (calib_dir / --data DIR)")
    if cfg.needs_teacher and teacher is None:
        raise VitoptError("alpha > 0 or beta > 0 needs a teacher model")
    use_teacher = cfg.needs_teacher
    if teacher is not None:
        teacher.eval().requires_grad_(False).to(device)
    try:
        pairs = cfg.layer_pairs(len(student.blocks), len(teacher.blocks)) if cfg.beta > 0 else []
    except ValueError as e:
        raise VitoptError(str(e)) from None
    is_main = rank == 0
    say = log if is_main else (lambda s: None)

    # data: this rank's share of each epoch, augmented with timm's training transform
    from ..data.folder import ImageFolderData, eval_transform, train_transform
    tf = train_transform(student) if cfg.augment else eval_transform(student)
    ds = ImageFolderData(ctx.calib_dir, tf, synsets=ctx.synsets, labeled=cfg.needs_labels, limit=cfg.limit,
                         num_classes=getattr(student, "num_classes", None))
    guard = None
    if cfg.holdout > 0:
        guard = HoldoutGuard.split(ds, cfg.holdout, eval_transform(student), teacher, device, cfg.batch_size,
                                   ctx.workers, cfg.keep_best)
    if len(ds) < world:
        raise VitoptError(f"{len(ds)} training images cannot be split over {world} processes")
    if cfg.needs_labels:
        top = max(lbl for _, lbl in ds.samples)
        classes = getattr(student, "num_classes", None)
        if classes is not None and top >= classes:
            raise VitoptError(f"label {top} in {ctx.calib_dir} is outside the model's {classes} classes")
    # batch_size is the global batch, whatever the number of processes
    steps_per_epoch = math.ceil(len(ds) / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * steps_per_epoch))
    warmup = int(cfg.warmup_frac * total)
    base_lr = cfg.lr if cfg.lr is not None else 5e-4 * cfg.batch_size / 512

    student.to(device).train()
    if not any(p.requires_grad for p in student.parameters()):
        # a copy of a frozen teacher: train everything (a partial freeze is respected as given)
        say("distill: every student parameter was frozen; training all of them")
        student.requires_grad_(True)
    groups = param_groups(student, cfg.weight_decay, lr_scale)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999))
    from ..mixed_precision import mixed_precision
    precision = mixed_precision(device, cfg.amp)     # bf16 (else fp16 + loss scaling) on CUDA, fp32 on CPU
    scaler = precision.scaler
    loss_fn = ManifoldDistillLoss.from_config(cfg)

    start, history = 0, []
    state_path = Path(ctx.work_dir) / STATE_FILE if ctx.work_dir else None
    ema_state = None
    if state_path is not None and is_main:
        from ..workdir import check_or_init, fingerprint, weights_sha256
        # the config is recorded in the state file and compared by _load_state, which knows which
        # fields may change on resume; the fingerprint adds what it cannot see: weights and data
        extra = {"teacher": weights_sha256(teacher)} if teacher is not None else {}
        check_or_init(ctx.work_dir, fingerprint(student, config={}, data=ctx.calib_dir, **extra),
                      progress=state_path, resume=resume, log=say)
    if resume:
        start, history, ema_state = _load_state(state_path, cfg, student, opt, scaler)
        say(f"distill: resumed at step {start}/{total} from {state_path}")

    model = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # DDP broadcasts rank 0's weights here, so the EMA copy below starts identical on every rank
        model = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
    ema = ModelEma(student, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None and ema_state is not None:
        ema.module.load_state_dict(ema_state)

    val_loader = _val_loader(cfg, ctx, student, say) if (cfg.val_dir and is_main) else None

    def run_eval(step_now: int) -> None:
        if val_loader is not None:
            t = time.perf_counter()
            r = _evaluate(ema.module if ema else student, teacher, val_loader, device)
            r.update(step=step_now, seconds=round(time.perf_counter() - t, 2))
            history.append(r)
            say(f"distill: eval at step {step_now}: top-1 {r.get('top1')}  agreement {r.get('agreement')}")
            student.train()
        _dist.barrier()

    if cfg.eval_at_start and start == 0:
        run_eval(0)
    if guard is not None:
        guard.check(student, start, say)
        student.train()

    s_layers, t_layers = [s for s, _ in pairs], [t for _, t in pairs]
    tap_s, tap_t = BlockTap(student, s_layers), BlockTap(teacher, t_layers) if pairs else None
    window: list = []
    first: Optional[dict] = None
    images = 0
    failed: list = []
    bar = _progress(total, start) if is_main else None
    autocast = precision.autocast
    index_cache: dict = {}
    t0 = time.perf_counter()
    step = start
    try:
        epoch, offset = divmod(start, steps_per_epoch)
        while step < total:
            _seed_everything(seed * 7919 + epoch * 131 + offset + rank * 1_000_003)
            loader = _dist.sharded_loader(ds, cfg.batch_size, seed=seed, epoch=epoch, workers=ctx.workers,
                                          start=offset)
            for batch in loader:
                if step >= total:
                    break
                failed.extend(batch.failed)
                n_local = batch.images.shape[0]
                n_all = _dist.all_sum([n_local])[0] if world > 1 else n_local
                if n_all == 0:
                    continue
                if n_local == 0:
                    # DDP needs every rank's backward: a rank whose part was unreadable (or empty: a last
                    # batch smaller than the group) runs one blank image at weight 0
                    batch = _blank_batch(ds)
                lr = lr_at(step, total, base_lr, warmup, cfg.min_lr_ratio)
                for grp in opt.param_groups:
                    grp["lr"] = lr * grp.get("lr_scale", 1.0)
                x = batch.images.to(device, non_blocking=True)
                y = batch.labels.to(device) if cfg.needs_labels else None
                # this rank's share of the global batch: DDP averages over ranks, so weight by world
                share = n_local * world / n_all
                with autocast():
                    z_t = None
                    if use_teacher:
                        with torch.no_grad():
                            z_t = teacher(x)
                    if before_step is not None:
                        before_step(step, x.shape[0])
                    z_s = model(x)
                    fs, ft = (matched_features(student, tap_s.outputs, teacher, tap_t.outputs, pairs, index_cache,
                                               tap_s.sources)
                              if pairs else ([], []))
                rand_gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7_919 + step)
                terms = loss_fn(z_s, z_t, fs, ft, y, generator=rand_gen)
                extras = extra_loss(step) if extra_loss is not None else {}
                total_loss = terms.total + sum(extras.values()) if extras else terms.total
                tap_s.outputs.clear()
                if tap_t is not None:
                    tap_t.outputs.clear()
                finite = bool(torch.isfinite(total_loss))
                if world > 1:   # every rank stops together, or none does
                    finite = _dist.all_sum([0.0 if finite else 1.0])[0] == 0
                if not finite:
                    raise VitoptError(f"distillation loss is not finite at step {step} "
                                      "(lower --lr or enable gradient clipping)")
                opt.zero_grad(set_to_none=True)
                scaler.scale(total_loss * share).backward()
                grad_norm = None
                if cfg.clip_grad is not None:
                    scaler.unscale_(opt)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad))
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(student)
                step += 1
                images += n_local
                d = terms.to_dict()
                if extras:
                    d.update({k: float(v.detach()) for k, v in extras.items()})
                    d["total"] = float(total_loss.detach())
                if grad_norm is not None:
                    d["grad_norm"] = grad_norm
                window.append(d)
                window = window[-cfg.log_every:]
                if first is None and len(window) == min(cfg.log_every, total - start):
                    first = _mean(window)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in d.items() if v}, refresh=False)
                if step % cfg.log_every == 0 or step == total:
                    m = _mean(window)
                    say(f"distill: step {step}/{total} lr {lr:.2e} " +
                        " ".join(f"{k} {v:.4g}" for k, v in m.items() if v))
                if state_path is not None and cfg.save_every and step % cfg.save_every == 0 and step < total:
                    _save_state(state_path, cfg, step, student, opt, ema, scaler, history, is_main)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    run_eval(step)
                    if guard is not None:
                        guard.check(student if ema is None else ema.module, step, say)
                        student.train()
            epoch, offset = epoch + 1, 0
    finally:
        tap_s.remove()
        if tap_t is not None:
            tap_t.remove()
        if bar is not None:
            bar.close()
    train_seconds = time.perf_counter() - t0
    if ema is not None:
        student.load_state_dict(ema.module.state_dict())
    if guard is not None:
        guard.check(student, step, say)
        if guard.keep_best:
            guard.restore_best(student, say)
    if state_path is not None and cfg.save_every:
        _save_state(state_path, cfg, step, student if ema is None else ema.module, opt, ema, scaler, history,
                    is_main)
    run_eval(step)
    student.eval()
    final = _mean(window) if window else {}
    images_all = int(_dist.all_mean([float(images)], device)[0] * world)
    report = {
        "steps": step, "start_step": start, "epochs": round(step / steps_per_epoch, 3),
        "steps_per_epoch": steps_per_epoch, "images": images_all, "world_size": world,
        "seconds": round(train_seconds, 2),
        "images_per_s": round(images_all / train_seconds, 2) if train_seconds > 0 else None,
        "lr": base_lr, "first_losses": first or {}, "final_losses": final,
        "evals": history, "final_eval": history[-1] if history else None,
        "unreadable_images": len(failed), "config": cfg.to_dict(),
        "holdout": guard.report() if guard is not None else None,
    }
    return report


def _blank_batch(ds):
    """One black image shaped like the dataset's (the stand-in of a rank without images in a step)."""
    for i in range(len(ds)):
        item = ds[i]
        if item[0] is not None:
            from ..data.folder import Batch
            return Batch(torch.zeros_like(item[0])[None], torch.tensor([max(item[1], 0)]), ["<blank>"])
    raise VitoptError("no training image could be read")


def _mean(rows: list) -> dict:
    keys = rows[0].keys()
    return {k: round(sum(r.get(k, 0.0) for r in rows) / len(rows), 6) for k in keys}


def _progress(total: int, start: int):
    from ..progress import progress
    return progress(None, total=total, initial=start, desc="distill", unit="step")


def _save_state(path: Path, cfg, step, student, opt, ema, scaler, history, is_main) -> None:
    if is_main:
        from ..fileio import atomic_path
        state = {"format": STATE_FORMAT, "version": 1, "step": step, "config": cfg.to_dict(),
                 "fingerprint": _fingerprint(student), "student": student.state_dict(),
                 "optimizer": opt.state_dict(), "ema": ema.module.state_dict() if ema else None,
                 "scaler": scaler.state_dict(), "history": history}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    _dist.barrier()


def _load_state(path: Optional[Path], cfg, student, opt, scaler) -> tuple:
    if path is None:
        raise VitoptError("resuming needs a work directory (ctx.work_dir / --work-dir)")
    if not path.is_file():
        raise VitoptError(f"nothing to resume: no checkpoint at {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise VitoptError(f"cannot read distillation checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise VitoptError(f"{path} is not a vitopt distillation checkpoint")
    if state["fingerprint"] != _fingerprint(student):
        raise VitoptError(f"checkpoint {path} was written for a different student architecture")
    old, new = state["config"], cfg.to_dict()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES)
    if changed:
        raise VitoptError(f"checkpoint {path} was written with other settings ({', '.join(changed)}); "
                          "resume with the same settings or start afresh")
    student.load_state_dict(state["student"])
    opt.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["step"]), list(state.get("history", [])), state.get("ema")

"""Top-1/top-5 accuracy and agreement with a reference model on an image folder.

Per image, the result also records whether the top-1 class was right (and equal to the
reference's), in loader order with a hash of the image names, so two models evaluated on the same
images can be compared pairwise (``paired_difference``: the standard error of a top-1 difference
is much smaller than either model's own when both get the same images right).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .progress import progress


@dataclass
class EvalResult:
    images: int
    top1: Optional[float] = None          # percent; None when labels or weights make it meaningless
    top5: Optional[float] = None
    agreement: Optional[float] = None     # percent of images whose top-1 class equals the reference's
    mean_kl: Optional[float] = None       # mean KL(reference || model) per image, nats
    reference_top1: Optional[float] = None
    failed: list = field(default_factory=list)
    # per image, loader order: "1" right / "0" wrong / "-" unlabelled; agree: "1" same top-1 as the reference
    per_image: dict = field(default_factory=dict)    # {"images_sha256", "correct", "agree"}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed_count"] = len(self.failed)
        return d


def images_sha256(paths: Sequence[str]) -> str:
    """Hash of the ordered image names (folder/file, not the machine's absolute path)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).parent.name}/{Path(p).name}\n".encode())
    return h.hexdigest()


def paired_difference(a: dict, b: dict) -> Optional[tuple]:
    """(top-1 of a − top-1 of b, its paired standard error), in points, from two ``per_image`` records.

    None when the records are not over the same images or either has no labels."""
    if not a or not b or a.get("images_sha256") != b.get("images_sha256"):
        return None
    pairs = [(x == "1", y == "1") for x, y in zip(a.get("correct", ""), b.get("correct", "")) if x != "-" and y != "-"]
    n = len(pairs)
    if n < 2:
        return None
    return _mean_and_se([int(x) - int(y) for x, y in pairs])


def agreement_standard_error(per_image: dict) -> Optional[float]:
    """Standard error (points) of the agreement with the reference, from a ``per_image`` record: both
    models saw the same images, so it is the standard error of the mean of the per-image agree bits.

    None without a reference or with fewer than two images."""
    agree = (per_image or {}).get("agree") or ""
    if len(agree) < 2:
        return None
    return _mean_and_se([int(c == "1") for c in agree])[1]


def _mean_and_se(values: Sequence[int]) -> tuple:
    """(mean, standard error of the mean), both in points (x100), of 0/±1 per-image values."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return 100.0 * mean, 100.0 * math.sqrt(var / n)


def weights_sha256(model) -> str:
    """Hash of a model's state_dict (names and values): equal hashes = the same weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _ReferenceCache:
    """The reference model's logits per image, kept in a file between evaluations of several models
    (a sweep's variants) on the same images; any mismatch (other weights, other images) recomputes."""

    def __init__(self, path, reference):
        self.path, self.reference = (Path(path) if path else None), reference
        self.key = weights_sha256(reference) if self.path else None
        self.stored, self.new_paths, self.new_logits, self.pos, self.computed = None, [], [], 0, False
        if self.path is not None and self.path.is_file():
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache is only a cache: recompute
                obj = None
            if isinstance(obj, dict) and obj.get("key") == self.key:
                self.stored = obj

    def __call__(self, x, paths):
        b = x.shape[0]
        if self.stored is not None and self.stored["paths"][self.pos:self.pos + b] == list(paths):
            out = self.stored["logits"][self.pos:self.pos + b].to(x.device)
        else:
            self.stored, self.computed = None, True
            out = self.reference(x).float()
        self.pos += b
        self.new_paths += list(paths)
        self.new_logits.append(out.detach().cpu())
        return out

    def save(self):
        if self.path is None or not self.computed:
            return
        from .fileio import atomic_path
        with atomic_path(self.path) as tmp:
            torch.save({"key": self.key, "paths": self.new_paths, "logits": torch.cat(self.new_logits)}, tmp)


@torch.no_grad()
def evaluate(model, loader, reference=None, device: str = "cpu", desc: str = "eval",
             reference_cache: Optional[str | os.PathLike] = None) -> EvalResult:
    """Accuracy of ``model`` (and agreement/KL against ``reference``) over ``loader`` batches.

    ``reference_cache``: a file keeping the reference's logits, so evaluating several models against
    the same reference on the same images runs the reference once.
    A loader from ``distributed.sharded_loader`` (its ``sharded`` flag) gives each torchrun rank part of
    every batch: the counts are summed and the per-image record gathered in the global order, so every
    rank returns what one process returns (the reference cache is then not kept).
    Example: ``evaluate(slim, build_loader("val/", slim, 64), reference=dense).agreement``
    """
    from . import distributed as dist
    sharded = bool(getattr(loader, "sharded", False)) and dist.rank_world()[1] > 1
    model.eval().to(device)
    ref_fn = None
    if reference is not None:
        reference.eval().to(device)
        ref_fn = _ReferenceCache(None if sharded else reference_cache, reference)
    n = c1 = c5 = agree = rc1 = 0
    kl_sum = 0.0
    labeled = 0
    failed: list = []
    paths, correct, agrees = [], [], []
    per_batch = []        # (paths, correct, agrees) added by each batch: gathered over ranks when sharded
    for batch in progress(loader, desc=desc, unit="batch"):
        failed.extend(batch.failed)
        per_batch.append((len(paths), len(correct), len(agrees)))
        if batch.images.numel() == 0:
            continue
        x, y = batch.images.to(device), batch.labels.to(device)
        logits = model(x).float()
        n += x.shape[0]
        has = y >= 0
        labeled += int(has.sum())
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = (top5[:, 0] == y)
        c1 += int(hit[has].sum())
        c5 += int((top5 == y[:, None]).any(1)[has].sum())
        paths += list(batch.paths)
        correct += ["-" if not h else ("1" if t else "0") for h, t in zip(has.tolist(), hit.tolist())]
        if reference is not None:
            ref = ref_fn(x, batch.paths)
            same = ref.argmax(1) == top5[:, 0]
            agree += int(same.sum())
            agrees += ["1" if v else "0" for v in same.tolist()]
            rc1 += int((ref.argmax(1) == y)[has].sum())
            kl_sum += float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(ref, 1), log_target=True,
                                     reduction="sum"))
    if ref_fn is not None:
        ref_fn.save()
    if sharded:
        n, c1, c5, agree, rc1, labeled = (int(v) for v in dist.all_sum([n, c1, c5, agree, rc1, labeled]))
        kl_sum = dist.all_sum([kl_sum])[0]
        failed = [f for part in dist.gather_objects(failed) for f in part]
        paths, correct, agrees = _in_global_order(per_batch, paths, correct, agrees)
    res = EvalResult(images=n, failed=failed,
                     per_image={"images_sha256": images_sha256(paths), "correct": "".join(correct),
                                "agree": "".join(agrees) or None})
    if labeled:
        res.top1, res.top5 = 100.0 * c1 / labeled, 100.0 * c5 / labeled
    if reference is not None and n:
        res.agreement, res.mean_kl = 100.0 * agree / n, kl_sum / n
        if labeled:
            res.reference_top1 = 100.0 * rc1 / labeled
    return res


class OnnxModel:
    """An ONNX file run by ONNX Runtime and called like a PyTorch model (image tensor in, logits out), so
    ``evaluate`` measures an exported graph itself: a quantized graph's accuracy is its own, not its model's.

    Example: ``with OnnxModel("model.int8_dynamic.onnx") as m: evaluate(m, loader, reference=dense)``
    """

    def __init__(self, path, threads: Optional[int] = None):
        from .runners import OrtRunner
        self.runner = OrtRunner(path, threads=threads)

    def __enter__(self) -> "OnnxModel":
        self.runner.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    def eval(self) -> "OnnxModel":
        return self

    def to(self, device) -> "OnnxModel":
        if str(device) != "cpu":   # the session runs where its provider says; evaluate's tensors stay on CPU
            from .errors import VitoptError
            raise VitoptError(f"an ONNX model is evaluated on the CPU, not {device}")
        return self

    def __call__(self, x):
        out = self.runner.infer({self.runner.input_name: x.detach().cpu().float().numpy()})
        return torch.from_numpy(out[self.runner.output_names[0]])


def _in_global_order(starts: list, paths: list, correct: list, agrees: list) -> tuple:
    """Per-image records of every rank, batch by batch and rank by rank within a batch: the order one
    process reads a sharded loader's global batches in (each rank holds a contiguous part of each)."""
    from .distributed import gather_objects
    ends = starts[1:] + [(len(paths), len(correct), len(agrees))]
    mine = [(paths[a[0]:b[0]], correct[a[1]:b[1]], agrees[a[2]:b[2]]) for a, b in zip(starts, ends)]
    ranks = gather_objects(mine)
    out = ([], [], [])
    for k in range(max(len(r) for r in ranks)):
        for r in ranks:
            if k < len(r):
                for acc, part in zip(out, r[k]):
                    acc.extend(part)
    return out

"""Top-1/top-5 accuracy and agreement with a reference model on an image folder."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed_count"] = len(self.failed)
        return d


@torch.no_grad()
def evaluate(model, loader, reference=None, device: str = "cpu", desc: str = "eval") -> EvalResult:
    """Accuracy of ``model`` (and agreement/KL against ``reference``) over ``loader`` batches."""
    model.eval().to(device)
    if reference is not None:
        reference.eval().to(device)
    n = c1 = c5 = agree = rc1 = 0
    kl_sum = 0.0
    labeled = 0
    failed: list = []
    for batch in progress(loader, desc=desc, unit="batch"):
        failed.extend(batch.failed)
        if batch.images.numel() == 0:
            continue
        x, y = batch.images.to(device), batch.labels.to(device)
        logits = model(x).float()
        n += x.shape[0]
        has = y >= 0
        labeled += int(has.sum())
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        c1 += int((top5[:, 0] == y)[has].sum())
        c5 += int((top5 == y[:, None]).any(1)[has].sum())
        if reference is not None:
            ref = reference(x).float()
            agree += int((ref.argmax(1) == top5[:, 0]).sum())
            rc1 += int((ref.argmax(1) == y)[has].sum())
            kl_sum += float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(ref, 1), log_target=True,
                                     reduction="sum"))
    res = EvalResult(images=n, failed=failed)
    if labeled:
        res.top1, res.top5 = 100.0 * c1 / labeled, 100.0 * c5 / labeled
    if reference is not None and n:
        res.agreement, res.mean_kl = 100.0 * agree / n, kl_sum / n
        if labeled:
            res.reference_top1 = 100.0 * rc1 / labeled
    return res

"""Evaluation numbers against hand-computed oracles."""
import torch

from optimizer.data.folder import Batch
from optimizer.evaluation import evaluate


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.i = 0

    def forward(self, x):
        out = self.logits[self.i:self.i + x.shape[0]]
        self.i += x.shape[0]
        return out


def test_topk_agreement_kl_oracle():
    torch.manual_seed(0)
    logits = torch.randn(6, 7)
    ref_logits = logits.clone()
    ref_logits[0] = -logits[0]
    labels = logits.argmax(1).clone()
    labels[1] = (labels[1] + 1) % 7
    loader = [Batch(torch.zeros(3, 1), labels[:3], [], []), Batch(torch.zeros(3, 1), labels[3:], [], ["x.jpg: bad"])]
    res = evaluate(Fixed(logits), loader, reference=Fixed(ref_logits))
    assert res.images == 6 and res.failed == ["x.jpg: bad"]
    assert abs(res.top1 - 100 * 5 / 6) < 1e-9
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).double().mean() * 100
    assert abs(res.top5 - float(top5)) < 1e-6
    agree = (logits.argmax(1) == ref_logits.argmax(1)).double().mean() * 100
    assert abs(res.agreement - float(agree)) < 1e-6
    kl = torch.nn.functional.kl_div(logits.log_softmax(1), ref_logits.log_softmax(1), log_target=True,
                                    reduction="sum") / 6
    assert abs(res.mean_kl - float(kl)) < 1e-5

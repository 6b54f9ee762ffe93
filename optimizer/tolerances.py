"""One tolerance table per precision, shared by the product (parity gates, ``vitopt compare``) and the tests.

A ``Tolerance`` says when two runs of the same model agree (Polygraphy's per-output atol/rtol and
error statistic, plus the classifier figures a ViT deployment cares about):

* ``atol`` / ``rtol`` with ``check_error_stat``: ``"elemwise"`` passes when every element has
  ``|a - b| <= atol + rtol * |b|`` (numpy ``allclose``); ``"max"`` / ``"mean"`` / ``"median"``
  pass when that statistic of the absolute difference is ``<= atol`` or the same statistic of the
  relative difference is ``<= rtol`` (Polygraphy's ``--check-error-stat``);
* ``min_cosine``: lowest allowed cosine similarity of any one sample's output row (None: not checked);
* ``min_top1_agreement``: lowest allowed share of samples whose argmax agrees (None: not checked).

Figures (why these numbers):

* ``fp32`` — lossless steps (export, graph rules, fp32 engines): PyTorch vs ONNX Runtime differ by
  reassociation only, ~1e-5 on DeiT logits; 1e-4 leaves room for other kernels (oneDNN, TF32 off).
  Top-1 may flip on an exact tie, hence 0.99 rather than 1.
* ``fp16`` — fp16 weights and compute with fp32 normalisations: logits move by ~1e-2; the gate is
  the worst-sample cosine and the argmax, with a loose median error so a broken graph still fails.
* ``lossless_pass`` — one graph rule, ONNX Runtime before vs after: the same kernels, tighter.

Example: ``tolerance_for("fp16").min_cosine``
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

from .errors import VitoptError

ERROR_STATS = ("elemwise", "max", "mean", "median")


@dataclass(frozen=True)
class Tolerance:
    """When two runs agree; see the module docstring for the meaning of each field."""
    precision: str
    atol: float
    rtol: float
    check_error_stat: str = "elemwise"
    min_cosine: Optional[float] = None
    min_top1_agreement: Optional[float] = None

    def __post_init__(self):
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0:
                raise VitoptError(f"tolerance {name} must be a non-negative number, got {v!r}")
        if self.check_error_stat not in ERROR_STATS:
            raise VitoptError(f"check_error_stat must be one of {', '.join(ERROR_STATS)}, "
                              f"got {self.check_error_stat!r}")
        for name in ("min_cosine", "min_top1_agreement"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and -1.0 <= v <= 1.0):
                raise VitoptError(f"tolerance {name} must lie in [-1, 1] (or be None), got {v!r}")

    def with_overrides(self, **changes) -> "Tolerance":
        """A copy with the given fields replaced; None values are ignored (keep the table's)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


TOLERANCES = {
    "fp32": Tolerance("fp32", atol=1e-4, rtol=1e-3, check_error_stat="elemwise",
                      min_cosine=0.9999, min_top1_agreement=0.99),
    "fp16": Tolerance("fp16", atol=5e-2, rtol=5e-2, check_error_stat="median",
                      min_cosine=0.999, min_top1_agreement=0.95),
    "lossless_pass": Tolerance("lossless_pass", atol=1e-5, rtol=1e-5, check_error_stat="elemwise",
                               min_cosine=0.99999, min_top1_agreement=0.99),
    # int8 weights (and activations): DeiT-Tiny logits keep a worst-sample cosine ~0.99 to fp32; the
    # gate is that cosine (a few parity images make top-1 agreement too coarse to gate on)
    "int8": Tolerance("int8", atol=5e-1, rtol=5e-1, check_error_stat="median", min_cosine=0.98,
                      min_top1_agreement=None),
}


# Data-dependent discrete decisions (token merging's matching): fp32 reassociation moves the matching's
# cosine scores slightly between PyTorch and ONNX Runtime (not measured per score; the logits differ by
# <= 3e-5 on DeiT-Tiny), so a sample whose decision margin is below ``margin`` may take another decision
# in the other runtime (the flip measured on DeiT-Tiny slim 0.5 with merging: margin 6e-8 in block 2,
# cosine 0.996; per-image smallest margins there were 6e-8 and 5e-5..1e-2 otherwise). The lossless
# parity check judges such a sample by its output cosine instead of atol; every other sample still has
# to pass atol, so a broken graph fails on them.
NEAR_TIE = {"margin": 1e-5, "min_cosine": 0.99}


def tolerance_for(precision: str) -> Tolerance:
    """The table's ``Tolerance`` for ``precision`` ("fp32", "fp16", "lossless_pass").

    Raises VitoptError naming the known precisions for anything else.
    """
    key = str(precision).lower()
    if key not in TOLERANCES:
        raise VitoptError(f"no tolerance for precision {precision!r}: known {', '.join(TOLERANCES)}")
    return TOLERANCES[key]

"""The export form of a low-rank model: two-pair layers merged into one pair (two GEMMs, not four)."""
from __future__ import annotations

import contextlib
import copy

from .module import LowRankLinear, merge_for_export


@contextlib.contextmanager
def export_form(model, options: dict):
    """The registry's export form of the lowrank method: a merged copy of ``model`` when it holds
    two-pair ``LowRankLinear`` layers (the caller's model is left as it is), else ``model`` itself."""
    pairs = sum(1 for m in model.modules() if isinstance(m, LowRankLinear) and m.ranks[1])
    if not pairs:
        yield model, {}
        return
    yield merge_for_export(copy.deepcopy(model)).eval(), {"vitopt.lowrank.merged_layers": str(pairs)}

"""``MergeConfig``: how many tokens each block merges (a schedule, a constant r, or a MACs budget)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...compress.config import MethodConfig, check_ratio


@dataclass(frozen=True)
class MergeConfig(MethodConfig):
    """ToMe token merging, no training. Exactly one of:

    r           tokens merged in every block (ToMe's constant schedule), e.g. 8
    schedule    tokens merged per block, e.g. [12, 12, 10, ...] (one entry per block)
    macs_ratio  of the dense model's MACs: the static schedule (mean r spread over the blocks, the
                extra merges in the earliest ones) whose counted MACs are closest, within ``tolerance``

    Whether the counts fit the model (r at most half the tokens left, class token protected) is
    checked when the method is applied, against the model's token count.
    """

    r: Optional[int] = None
    schedule: Optional[tuple[int, ...]] = None
    macs_ratio: Optional[float] = None
    tolerance: float = 0.02

    def __post_init__(self):
        given = [name for name in ("r", "schedule", "macs_ratio") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of r (tokens merged per block, e.g. 8), schedule (one count per "
                             f"block) or macs_ratio (e.g. 0.75); got {', '.join(given) or 'none'}")
        if self.r is not None and (isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0):
            raise ValueError(f"r must be a non-negative integer, got {self.r!r}")
        if self.schedule is not None:
            if isinstance(self.schedule, (str, bytes)) or not hasattr(self.schedule, "__iter__"):
                raise ValueError(f"schedule must be a list of non-negative integers, got {self.schedule!r}")
            sched = tuple(self.schedule)
            bad = [v for v in sched if isinstance(v, bool) or not isinstance(v, int) or v < 0]
            if bad or not sched:
                raise ValueError(f"schedule must be a list of non-negative integers, got {list(sched)!r}")
            object.__setattr__(self, "schedule", sched)
        check_ratio("macs_ratio", self.macs_ratio)
        if not (0.0 < self.tolerance < 0.5):
            raise ValueError(f"tolerance must be in (0, 0.5), got {self.tolerance!r}")

"""Progress bars on stderr (quiet when stderr is not a terminal unless VITOPT_PROGRESS=1)."""
from __future__ import annotations

import os
import sys


def progress(iterable, **kwargs):
    from tqdm.auto import tqdm
    enabled = sys.stderr.isatty() or os.environ.get("VITOPT_PROGRESS") == "1"
    # under torchrun every rank runs the loop; rank 0 alone draws it
    enabled = enabled and os.environ.get("RANK", "0") == "0"
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)

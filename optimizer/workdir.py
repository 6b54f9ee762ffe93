"""Resumable work directories: saved progress is reused only for the run it was made for.

A work directory (slim's mask search, distillation) holds ``fingerprint.json``: the model's
architecture, a hash of its weights, the method config and a fingerprint of the data folder (its
file names and sizes). ``check_or_init`` compares the current run with it before any progress is
loaded, so a search made for random weights is never resumed for the real ones.

    fp = fingerprint(model, config=cfg.search_key, data=ctx.calib_dir)
    resume = check_or_init(ctx.work_dir, fp, progress=ckpt, log=ctx.log)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

from .errors import VitoptError

FINGERPRINT = "fingerprint.json"


def architecture_sha256(model) -> str:
    """Hash of the parameter and buffer names and shapes: equal for the same architecture."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
    return h.hexdigest()


def weights_sha256(model) -> str:
    """Hash of every tensor's values (and names, shapes, dtypes)."""
    import torch
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(folder) -> Optional[str]:
    """Hash of the relative paths and sizes of every file under ``folder`` (None when there is none)."""
    if not folder:
        return None
    root = Path(folder)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size};".encode())
    return h.hexdigest()


def fingerprint(model, *, config: dict, data=None, **extra) -> dict:
    """What a work directory's progress depends on; ``extra`` adds named hashes (e.g. the teacher's)."""
    import json
    return {"architecture": architecture_sha256(model), "weights": weights_sha256(model),
            "config": json.loads(json.dumps(config, default=str)), "data": data_fingerprint(data), **extra}


def check_or_init(work_dir, fp: dict, *, progress: Path, resume: Optional[bool] = None,
                  log: Callable[[str], None] = lambda s: None) -> bool:
    """Make ``work_dir`` belong to the run ``fp``; returns whether ``progress`` may be resumed.

    ``resume=None``: resume when the progress matches; ``True``: the caller must resume (a
    mismatch is an error either way); ``False``: start afresh, saying so when other progress is there.
    A mismatch with existing progress is refused in one line naming what differs.
    """
    from .fileio import read_json, write_json
    wd = Path(work_dir)
    try:
        wd.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitoptError(f"cannot create work directory {wd}: {e.strerror}") from None
    path = wd / FINGERPRINT
    has_progress = Path(progress).is_file()
    old = read_json(path, "") if path.is_file() else None
    if old == fp:
        return has_progress if resume is not False else False
    if resume is False or not has_progress:
        if has_progress or old is not None:
            log(f"work directory {wd}: starting afresh (its saved progress is replaced)")
        write_json(path, fp)
        return False
    if old is None:
        raise VitoptError(f"work directory {wd} holds progress without a {FINGERPRINT} (an older vitopt wrote "
                          "it), so it cannot be checked; remove it or give another --work-dir")
    differ = [k for k in sorted(set(old) | set(fp)) if old.get(k) != fp.get(k)]
    raise VitoptError(f"work directory {wd} was made for another run (different {', '.join(differ)}); "
                      "give another --work-dir or remove it")

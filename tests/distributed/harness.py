"""Run a test job in N gloo processes (torch.multiprocessing spawn, the environment torchrun sets)
or alone, and record which files each process wrote through ``optimizer.fileio``."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def recording_writes(log: list):
    """Every file written through ``fileio.atomic_path`` (artifacts, checkpoints, JSON) is appended to ``log``."""
    from optimizer import fileio
    original = fileio.atomic_path

    @contextlib.contextmanager
    def recorded(path):
        log.append(str(path))
        with original(path) as tmp:
            yield tmp

    fileio.atomic_path = recorded
    try:
        yield log
    finally:
        fileio.atomic_path = original


def run_alone(job, out: Path, *args) -> dict:
    """``job(*args)`` in this process without a process group; its result and writes."""
    writes: list = []
    with recording_writes(writes):
        result = job(*args)
    return {"result": result, "writes": writes}


def run_spawned(job, world: int, out: Path, *args) -> list:
    """``job(*args)`` on ``world`` spawned gloo processes; per rank {"result", "writes"} (rank order)."""
    import torch.multiprocessing as mp
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(world, free_port(), job, str(out), args), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _entry(rank, world, port, job, out, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from optimizer.distributed import init_from_env
    assert init_from_env("cpu")
    try:
        writes: list = []
        with recording_writes(writes):
            result = job(*args)
        torch.save({"result": result, "writes": writes}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def make_folder(root: Path, images: int = 14, broken: bool = True) -> Path:
    """A labelled ImageNet-style folder of small random images (and one unreadable file)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    syns = ["n00000001", "n00000003", "n00000004"]
    rows = ["index\tsynset\tname"] + [f"{i}\tn0000000{i}\tclass{i}" for i in range(5)]
    (root.parent / "synsets.tsv").write_text("\n".join(rows) + "\n")
    for i in range(images):
        d = root / syns[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"img_{i:02d}.jpg")
    if broken:
        (root / syns[1] / "img_05b.jpg").write_bytes(b"not a jpeg")
    return root

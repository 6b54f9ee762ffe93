"""torch.distributed helpers: optional, so one CPU process needs no process group."""
from __future__ import annotations

import os

import torch


def rank_world() -> tuple:
    """(rank, world size) of the current process group, (0, 1) without one."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False when run alone.

    Backend: NCCL on CUDA, gloo on CPU.
    """
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_mean(values: list, device) -> list:
    """Mean of each float over all processes (for logging the same losses everywhere)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()

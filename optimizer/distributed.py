"""The one distributed layer: torch.distributed helpers every loop uses (slim search, low-rank and
reconstruction statistics, gate training, distillation, evaluation).

Optional: one process needs no process group, and every helper is then the identity, so a loop
written with them gives the same result alone and under ``torchrun --nproc_per_node N``.
"""
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


def is_main() -> bool:
    """True on rank 0 (or alone): the only process that writes artifacts and prints progress."""
    return rank_world()[0] == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (accumulated statistics: XᵀX, counts); returns it.

    Identity when run alone. gloo reduces float64 on CPU; NCCL tensors must live on the rank's GPU.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard_indices(n: int) -> list:
    """This rank's share of ``range(n)``: every index on exactly one rank, none padded or repeated
    (statistics summed over ranks then equal one process's; unlike DistributedSampler's padding)."""
    rank, world = rank_world()
    return list(range(rank, n, world))

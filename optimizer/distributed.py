"""The one distributed layer: torch.distributed helpers every loop uses (slim search, low-rank and
reconstruction statistics, gate training, distillation, evaluation).

Optional: one process needs no process group, and every helper is then the identity, so a loop
written with them gives the same result alone and under ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

import os
from typing import Optional

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
        # rank 0 alone evaluates, exports and benchmarks between a recipe's compression steps while
        # the others wait in the next collective: allow that much longer than the default timeout
        import datetime
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
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

    Identity when run alone. The tensor may live anywhere: it is reduced where the backend wants it
    (the rank's GPU under NCCL, the CPU under gloo) and the sum copied back.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        where = _comm_device()
        if tensor.device == where:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            t = tensor.to(where)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            tensor.copy_(t)
    return tensor


def shard_indices(n: int) -> list:
    """This rank's share of ``range(n)``: every index on exactly one rank, none padded or repeated
    (statistics summed over ranks then equal one process's; unlike DistributedSampler's padding)."""
    rank, world = rank_world()
    return list(range(rank, n, world))


def all_sum(values: list) -> list:
    """Sum of each number over all processes, as floats (counts every rank must agree on)."""
    return all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64)).tolist()


def _comm_device() -> torch.device:
    """Where a communication tensor must live: the rank's GPU under NCCL, else the CPU (gloo)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_gradients(params) -> None:
    """Sum ``.grad`` of ``params`` over all processes in place (one flat all-reduce; identity alone).

    Each rank's loss is its images' share of the global batch's loss (summed per-image losses divided
    by the global image count), so the summed gradient is exactly the one-process gradient of the
    mean loss over the global batch, whatever the split. A missing ``.grad`` (a rank without images,
    or a parameter its loss did not reach) takes part as zeros.
    """
    params = [p for p in params if p.requires_grad]
    rank, world = rank_world()
    if world == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dev = _comm_device()
    flat = torch.cat([g.detach().reshape(-1).to(dev, torch.float32) for g in grads])
    all_reduce_sum(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.device, g.dtype)
        offset += n


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a decision taken once, e.g. whether to resume)."""
    import torch.distributed as dist
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
    import torch.distributed as dist
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


class agree_on_errors:
    """Context manager: a ``VitoptError`` raised on any rank inside the block is raised on every rank,
    with the lowest failing rank's message, once all ranks reached the end of the block.

    Wrap the checks and set-up that come before a loop's collectives: a rank-local error (an
    unreadable folder, a bad checkpoint) must not leave the other ranks waiting in an all-reduce.
    Alone it changes nothing.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from .errors import VitoptError
        if rank_world()[1] == 1:
            return False
        if exc is not None and not isinstance(exc, VitoptError):
            return False          # a bug: let it surface (torchrun ends the other ranks)
        mine = str(exc) if exc is not None else None
        errors = [e for e in gather_objects(mine) if e is not None]
        if errors:
            raise VitoptError(errors[0]) from None
        return False


def save_on_main(path, obj) -> None:
    """Rank 0 writes ``obj`` with torch.save atomically (``fileio.atomic_path``); every rank then waits,
    so a rank reading ``path`` afterwards sees the finished file."""
    if is_main():
        from .fileio import atomic_path
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    barrier()


def global_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list:
    """Epoch ``epoch``'s global batches: index lists over ``range(n)`` in an order drawn from (seed, epoch).

    The same on every rank and for any world size: this is what makes a sharded run's data equal to one
    process's. The last batch may be short; every index occurs once.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def rank_part(indices: list) -> list:
    """This rank's contiguous slice of one global batch (sizes differ by at most one; may be empty)."""
    rank, world = rank_world()
    n = len(indices)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return list(indices[lo:hi])


def rank_groups(indices: list, sizes: list) -> list:
    """This rank's whole groups of a global batch cut into groups of ``sizes`` (gate groups decide
    together, so a group never spans two ranks): group j goes to the rank whose share of the batch
    holds the group's first image. Returns the groups as index lists."""
    if sum(sizes) != len(indices):
        raise ValueError(f"group sizes {sizes} do not add up to the batch of {len(indices)}")
    rank, world = rank_world()
    n, out, pos = len(indices), [], 0
    for size in sizes:
        if min(world - 1, pos * world // n) == rank:
            out.append(list(indices[pos:pos + size]))
        pos += size
    return out


def sharded_loader(dataset, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                   workers: int = 0, start: int = 0, whole_batches: bool = False,
                   limit_batches: Optional[int] = None, group_sizes=None):
    """DataLoader yielding this rank's part of every global batch of epoch ``epoch`` (``Batch``es).

    Default: each global batch is split over the ranks (``rank_part``), so every rank makes the same
    number of steps (loops with a gradient all-reduce per step). ``whole_batches``: global batch i
    goes whole to rank i mod world (statistics whose unit is a batch, e.g. gate decisions per group,
    summed once at the end). ``group_sizes(i, n)``: global batch i (of n images) is cut into groups of
    these sizes and the ranks take whole groups (``rank_groups``); ``loader.groups`` then lists, per
    yielded batch, this rank's groups as index lists. ``start`` skips the first global batches
    (resume), ``limit_batches`` keeps only the first ones. Random augmentation is seeded per (seed,
    epoch, image index) (``data.folder.EpochSeeded``), so an image is transformed alike on any rank
    and world size; ``Batch.indices`` are the dataset indices of the readable images.
    """
    from torch.utils.data import DataLoader
    from .data.folder import EpochSeeded, collate
    batches = global_batches(len(dataset), batch_size, seed, epoch, shuffle)
    if limit_batches is not None:
        batches = batches[:limit_batches]
    rank, world = rank_world()
    groups = None
    if whole_batches:
        mine = [b for i, b in enumerate(batches) if i % world == rank and i >= start]
    elif group_sizes is not None:
        groups = [rank_groups(b, list(group_sizes(i, len(b)))) for i, b in enumerate(batches) if i >= start]
        mine = [[j for g in gs for j in g] for gs in groups]
    else:
        mine = [rank_part(b) for b in batches[start:]]
    loader = DataLoader(EpochSeeded(dataset, seed, epoch), batch_sampler=mine, num_workers=workers,
                        collate_fn=collate)
    loader.groups = groups
    loader.sharded = True      # evaluation sums its counts over the ranks only for such a loader
    return loader


def rank_device(device: str) -> str:
    """The device this rank computes on: ``cuda`` is the rank's own GPU (``cuda:LOCAL_RANK``) in a
    group that torchrun started, otherwise ``device`` unchanged."""
    if str(device) == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{local_rank()}"
    return str(device)


class process_group:
    """Context manager for a command under ``torchrun``: joins the group torchrun describes (NCCL on
    CUDA, gloo on CPU) and leaves it at the end; alone (no WORLD_SIZE > 1) it does nothing.

    Example: ``with process_group("cuda") as group: ...; group.main`` (True on rank 0 / alone)
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.joined = False

    @property
    def main(self) -> bool:
        return is_main()

    def __enter__(self):
        self.joined = init_from_env(self.device)
        return self

    def __exit__(self, *exc):
        if self.joined:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
        return False

"""Two CPU processes (gloo) distilling a tiny ViT stay identical replicas."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, folder, out):
    import torch.distributed as dist
    from optimizer.compress.registry import CompressContext
    from optimizer.distill import DistillConfig, recover
    from tests.distill.test_trainer import _pair
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        student, teacher = _pair()
        if rank == 1:  # DDP must broadcast rank 0's weights before the first step
            with torch.no_grad():
                for p in student.parameters():
                    p.add_(1.0)
        initial = [p.detach().clone() for p in student.parameters()]
        ctx = CompressContext(calib_dir=folder, workers=0, seed=0, log=lambda s: None)
        rep = recover(student, teacher, ctx, DistillConfig(steps=3, batch_size=2, augment=True, lr=2e-3,
                                                           eval_at_start=False, ema_decay=0.5))
        torch.save({"params": [p.detach() for p in student.parameters()], "initial": initial},
                   os.path.join(out, f"rank{rank}.pt"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(rep, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_keep_identical_replicas(image_folder, tmp_path):
    import torch.multiprocessing as mp
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    mp.spawn(_worker, args=(2, _free_port(), str(image_folder), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(r0["params"], r0["initial"]))   # it did train
    rep = json.loads((tmp_path / "rank0.json").read_text())
    assert rep["world_size"] == 2 and rep["steps"] == 3
    # 7 files (one unreadable) in global batches of 2, each rank taking its half -> 4 steps per epoch
    assert rep["steps_per_epoch"] == 4

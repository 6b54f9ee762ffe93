"""A 2-process mask search killed after a checkpoint resumes from it and ends where one process,
never interrupted, ends."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from tests.conftest import tiny_vit
from tests.distributed.harness import make_folder, run_alone, run_spawned
from tests.distributed.test_loops import KW

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def search_job(folder: str, work_dir: str, kill_at) -> dict:
    from optimizer.compress.registry import CompressContext
    from optimizer.methods.slim import SlimConfig, search_masks
    from optimizer.methods.slim import search as search_mod
    lines: list = []
    model = tiny_vit(**KW)
    ctx = CompressContext(calib_dir=folder, teacher=copy.deepcopy(model), workers=0, seed=5, work_dir=work_dir,
                          log=lines.append)
    save = search_mod._save_checkpoint

    def save_then_die(path, sm, opt, meter, step, *rest):
        save(path, sm, opt, meter, step, *rest)
        if step == kill_at:
            os._exit(17)     # killed: no clean-up, no process-group shutdown

    search_mod._save_checkpoint = save_then_die
    try:
        res = search_masks(model, SlimConfig(macs_ratio=0.7, steps=6, batch_size=4, checkpoint_every=2,
                                             mask_lr=0.05), ctx, ctx.teacher)
    finally:
        search_mod._save_checkpoint = save
    return {"tensors": res.tensors(), "log": lines}


def test_killed_two_process_search_resumes_from_its_checkpoint(tmp_path):
    import torch.multiprocessing as mp
    folder = str(make_folder(tmp_path / "imgs"))
    reference = run_alone(search_job, tmp_path / "one", folder, str(tmp_path / "work1"), None)["result"]
    work = str(tmp_path / "work2")
    with pytest.raises(mp.ProcessExitedException):
        run_spawned(search_job, 2, tmp_path / "killed", folder, work, 4)
    assert os.path.isfile(os.path.join(work, "slim_search.pt"))
    resumed = run_spawned(search_job, 2, tmp_path / "resumed", folder, work, None)
    assert any("resuming the mask search at step 4/6" in line for line in resumed[0]["result"]["log"])
    assert resumed[1]["result"]["log"] == [] and resumed[1]["writes"] == []   # rank 1 neither prints nor writes
    for rank in resumed:
        got = rank["result"]["tensors"]
        for k, v in reference["tensors"].items():
            assert torch.allclose(got[k], v, atol=1e-5, rtol=1e-4), (k, (got[k] - v).abs().max())

"""A rank-local bad input ends every rank with the same one-line error (no rank left waiting), and
gate training resumes from its checkpoint to the result of an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

from tests.distributed.harness import make_folder, run_alone, run_spawned
from tests.distributed.test_loops import _step

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def search_with_rank_local_folder(folders: list) -> str:
    """Rank r searches on folders[r]; returns the error it raised."""
    from optimizer.compress.config import RecoveryConfig
    from optimizer.distributed import rank_world
    from optimizer.errors import VitoptError
    from optimizer.methods.slim import SlimConfig
    try:
        _step("slim", SlimConfig(macs_ratio=0.7, steps=2, batch_size=4, recovery=RecoveryConfig(loss="none")),
              folders[rank_world()[0]])
    except VitoptError as e:
        return str(e)
    return "no error"


def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path):
    good = str(make_folder(tmp_path / "imgs", images=8, broken=False))
    ranks = run_spawned(search_with_rank_local_folder, 2, tmp_path / "out", [good, str(tmp_path / "missing")])
    messages = [r["result"] for r in ranks]
    assert messages[0] == messages[1] == f"data directory not found: {tmp_path / 'missing'}"


class _Killed(Exception):
    pass


def test_gate_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from optimizer.compress.config import RecoveryConfig
    from optimizer.distributed import save_on_main
    from optimizer.methods.gates import GatesConfig
    folder = str(make_folder(tmp_path / "imgs", images=12))
    cfg = GatesConfig(macs_ratio=0.6, steps=4, batch_size=4, calib_groups=(1, 3), recovery=RecoveryConfig(loss="none"),
                      lr_gates=0.05, checkpoint_every=2)
    reference = run_alone(_step, tmp_path / "ref", "gates", cfg, folder, None, 1)["result"]
    saved = []

    def save_then_die(path, obj):
        save_on_main(path, obj)
        saved.append(obj["step"])
        if obj["step"] == 2:
            raise _Killed

    import optimizer.distributed as dist
    monkeypatch.setattr(dist, "save_on_main", save_then_die)
    work = str(tmp_path / "work")
    with pytest.raises(_Killed):
        _step("gates", cfg, folder, work, 1)
    monkeypatch.undo()
    resumed = _step("gates", cfg, folder, work, 1)
    assert saved == [2] and resumed["report"]["train"]["steps"] == 4
    assert resumed["structure"] == reference["structure"]
    for k, v in reference["state"].items():
        assert torch.allclose(resumed["state"][k], v, atol=1e-6), k

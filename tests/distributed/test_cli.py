"""``vitopt sweep`` unchanged under ``torchrun --nproc_per_node 2``: the variants equal a 1-process sweep's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.harness import free_port, make_folder
from tests.sweep.conftest import TINY_RECIPE

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")

ROOT = Path(__file__).resolve().parents[2]
# the sweep tests' tiny recipe up to its eval step (export and bench are rank 0's alone anyway)
RECIPE = TINY_RECIPE.split("  - export")[0]


def _sweep(recipe: Path, out: Path, world: int) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                 "--master_addr=127.0.0.1", f"--master_port={free_port()}"] if world > 1 else [sys.executable])
    cmd = launcher + ["-m", "optimizer.cli.main", "sweep", str(recipe), "--vary", "slim.macs=0.8,0.6", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow   # two sweeps of three variants, one of them in two processes: ~1-3 min on 2 cores
def test_sweep_under_torchrun_equals_one_process(tmp_path):
    images = make_folder(tmp_path / "imgs", images=12)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(images=images, search_steps=3))
    one, two = _sweep(recipe, tmp_path / "one", 1), _sweep(recipe, tmp_path / "two", 2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("variants finished") == 1          # rank 0 alone reports
    variants = sorted(p.name for p in (tmp_path / "one" / "variants").iterdir())
    assert variants == sorted(p.name for p in (tmp_path / "two" / "variants").iterdir())
    for variant in variants:
        c1, c2 = (tmp_path / run / "variants" / variant / "compressed" / "recipe.json" for run in ("one", "two"))
        assert c1.is_file() == c2.is_file()
        if c1.is_file():   # the dense variant has no compression step
            r1, r2 = json.loads(c1.read_text()), json.loads(c2.read_text())
            assert [s["structure"] for s in r2["steps"]] == [s["structure"] for s in r1["steps"]]
        m1 = json.loads((tmp_path / "one" / "variants" / variant / "manifest.json").read_text())
        m2 = json.loads((tmp_path / "two" / "variants" / variant / "manifest.json").read_text())
        e1, e2 = m1["steps"][-1]["result"], m2["steps"][-1]["result"]
        assert (e2["images"], e2["top1"]) == (e1["images"], e1["top1"])
        assert e2["agreement"] == pytest.approx(e1["agreement"], abs=100 / 12 + 1e-9)   # at most one image flips

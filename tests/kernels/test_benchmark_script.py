"""benchmarks/kernels_gpu.py: its case plan and floors, and its refusal without CUDA."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.conftest import CUDA

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels_gpu.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_plan_lists_every_case_with_its_floor():
    out = _run("--plan", "--models", "small", "--batches", "1,32")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 * (4 + 4)            # 4 factorised layers + 4 gathered GEMMs per batch
    # DeiT-Small fc1 at batch 32, rank 152 (half of break-even 307, in multiples of 8): memory bound,
    # 2 B x (6304·384 + 152·384 + 1536·152 + 1536 + 6304·1536) / 4.8 TB/s = 5.17 us
    fc1 = next(l for l in lines if l.startswith("small lowrank fc1 b=32"))
    assert "r=152" in fc1 and "floor 5.17 us (memory)" in fc1


def test_refuses_without_cuda_in_one_line():
    if CUDA:
        pytest.skip("this machine has CUDA: the script would run")
    out = _run("--models", "tiny", "--batches", "1")
    assert out.returncode == 2
    assert out.stderr.strip() == ("kernels_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                                  "--plan works without one")

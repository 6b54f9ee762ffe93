"""`vitopt bench` on an ONNX file without torch or timm (issue 16: edge boxes that cannot install PyTorch)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP_ENV = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"} | {"PIP_CONFIG_FILE": os.devnull}

# torch and timm made unimportable: any import of them on the bench path raises ImportError
_BLOCKED = """
import sys
for name in ("torch", "timm", "torchvision", "onnxscript", "onnx_graphsurgeon"):
    sys.modules[name] = None
from optimizer.cli.main import main
rc = main(sys.argv[1:])
leaked = [m for m in ("torch", "timm") if sys.modules.get(m) is not None]
print("LEAKED", leaked) if leaked else None
sys.exit(rc)
"""


def _check_result(path: Path, onnx_file: str):
    out = json.loads(path.read_text())
    assert out["format"] == "vitopt-bench" and out["target"] == onnx_file
    assert [(r["backend"], r["batch"]) for r in out["rows"]] == [("onnxruntime", 1), ("onnxruntime", 2)]
    assert all(r["iters"] >= 3 and r["p50_ms"] > 0 for r in out["rows"])
    return out


def test_bench_onnx_path_never_imports_torch(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", _BLOCKED, "bench", path, "--batch", "1,2", "--iters", "3",
                           "--min-time", "0", "--warmup", "1", "--json", str(out)],
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LEAKED" not in proc.stdout
    _check_result(out, path)


def test_bench_engine_path_never_imports_torch(tmp_path):
    """An engine on a board without PyTorch: the runner's CUDA buffers come from cuda-python / pycuda
    (optimizer.runners.device_buffers), so the path imports no torch; here (no GPU) it says so in one line."""
    from optimizer.runners.device_buffers import available_bindings
    if available_bindings():
        pytest.skip("this machine has a GPU: tests/runners/test_device_buffers.py runs engines through each binding")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not run here")
    proc = subprocess.run([sys.executable, "-c", _BLOCKED, "bench", str(engine), "--batch", "1"],
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert "LEAKED" not in proc.stdout
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "engine cannot run here (no NVIDIA GPU)" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_bench_from_a_clean_venv_with_only_the_bench_extra(tiny_onnx, tmp_path):
    """A fresh venv with numpy + onnxruntime + psutil and vitopt installed with --no-deps (pip's cache
    makes this a download-free install where the wheels were fetched before)."""
    _, path = tiny_onnx
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    src = tmp_path / "src"            # build from a copy: an in-tree build would leave build/ in the checkout
    shutil.copytree(ROOT / "optimizer", src / "optimizer", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for args in (["numpy", "onnxruntime", "psutil"], ["--no-deps", str(src)]):
        proc = subprocess.run([py, "-m", "pip", "install", "-q", *args], env=PIP_ENV, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0 and ("Could not find" in proc.stderr or "connection" in proc.stderr.lower()):
            pytest.skip(f"pip cannot fetch the light install here: {proc.stderr.strip().splitlines()[-1]}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    check = subprocess.run([py, "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('timm'))"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "None None"
    out = tmp_path / "r.json"
    proc = subprocess.run([str(env_dir / "bin" / "vitopt"), "bench", path, "--batch", "1,2", "--iters", "3",
                           "--min-time", "0", "--warmup", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _check_result(out, path)
    assert res["rows"][0]["env"]["versions"]["torch"] is None

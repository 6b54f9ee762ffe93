"""What every benchmark row records about the machine and the software it ran on."""
from __future__ import annotations

import functools
import os
import platform
from typing import Optional

_PACKAGES = ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx", "onnx", "timm", "numpy")
_DISTS = {"tensorrt_rtx": ("tensorrt-rtx", "tensorrt_rtx"), "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def package_versions() -> dict:
    """Installed versions of the backends, read from package metadata (nothing is imported)."""
    from importlib import metadata
    out = {}
    for pkg in _PACKAGES:
        out[pkg] = None
        for dist in _DISTS.get(pkg, (pkg,)):
            try:
                out[pkg] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def gpu_name() -> Optional[str]:
    """First NVIDIA GPU's name; asks torch only when it is already imported (importing it costs
    ~0.7 GB of RSS, which would pollute the memory figures of an ONNX Runtime benchmark)."""
    import sys
    if "torch" in sys.modules:
        try:
            torch = sys.modules["torch"]
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception:
            return None
    import glob
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info) as f:
                for line in f:
                    if line.startswith("Model:"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            continue
    return None


def environment(runner=None) -> dict:
    """Machine, versions and (given a runner) its backend settings: precision, threads, ORT spinning.

    Example: ``environment(OrtRunner("m.onnx"))["ort_allow_spinning"]`` -> False
    """
    import psutil
    from ..runners.base import physical_cores
    env = {
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": physical_cores(),
        "gpu": gpu_name(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": package_versions(),
    }
    try:
        env["load_avg_1m"] = round(os.getloadavg()[0], 2)  # a busy shared machine shows up here
    except OSError:
        pass
    if runner is not None:
        info = runner.info()
        env.update({"backend": runner.backend, "device": runner.device, "precision": runner.precision,
                    "threads": info.get("threads")})
        if runner.backend == "torch":
            import torch
            env["torch_threads"] = torch.get_num_threads()
        if runner.backend == "onnxruntime":
            env["ort_allow_spinning"] = info.get("allow_spinning")
            env["ort_inter_op_threads"] = info.get("inter_op_threads")
            env["ort_providers"] = info.get("providers")
        if runner.backend == "tensorrt":
            env["trt_builder"] = info.get("builder")
    return env

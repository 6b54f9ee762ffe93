"""Which TensorRT builder is installed, and a logger that keeps what the builder says.

Two packages share one Python API for what vitopt needs (Builder, OnnxParser, ILogger,
optimization profiles, STRONGLY_TYPED networks):

* ``tensorrt`` — full TensorRT; building needs an NVIDIA GPU.
* ``tensorrt_rtx`` — TensorRT for RTX; builds ahead of time on a CPU-only machine, networks are
  always strongly typed.

``tensorrt`` is preferred when both import (it is the one that can also run engines here).
"""
from __future__ import annotations

import importlib
import re
from typing import Optional

from ..errors import MissingDependency, VitoptError

BUILDERS = ("tensorrt", "tensorrt_rtx")
INSTALL_HINT = "install vitopt[trt-rtx] or tensorrt"


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # a broken CUDA install raises OSError/RuntimeError at import, not ImportError
        return False


def available_builder() -> Optional[str]:
    """Name of the builder that ``engine_from_onnx`` would use (``tensorrt`` first), or None."""
    for name in BUILDERS:
        if _importable(name):
            return name
    return None


def import_builder(name: Optional[str] = None):
    """(module, name) of the requested builder or of ``available_builder()``.

    Raises MissingDependency (a VitoptError) naming what to install.
    """
    if name is not None and name not in BUILDERS:
        raise VitoptError(f"unknown builder {name!r}: choose one of {', '.join(BUILDERS)}")
    if name is None:
        name = available_builder()
        if name is None:
            raise MissingDependency(f"no TensorRT builder is installed: {INSTALL_HINT}")
    try:
        return importlib.import_module(name), name
    except Exception as e:
        hint = "pip install tensorrt" if name == "tensorrt" else "pip install 'vitopt[trt-rtx]'"
        raise MissingDependency(f"builder {name} cannot be imported ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}): {hint}") from None


def make_logger(trt, echo_min: str = "WARNING", keep_min: str = "INFO"):
    """An ``trt.ILogger`` that records messages at ``keep_min`` and above, and echoes ``echo_min``+ to stderr.

    ``logger.messages`` is a list of (severity name, text).
    """
    import sys
    order = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            name = str(severity).rsplit(".", 1)[-1]
            level = order.get(name, 4)
            if level <= order[keep_min]:
                self.messages.append((name, msg))
            if level <= order[echo_min]:
                print(f"[{name.lower()}] {msg}", file=sys.stderr)

        def texts(self, at_most: str = "VERBOSE"):
            return [m for s, m in self.messages if order.get(s, 4) <= order[at_most]]

    return CapturingLogger()


# Memory lines printed at INFO by TensorRT 10 / TensorRT for RTX 1.x when an engine is generated.
_MEMORY_PATTERNS = {
    "weights_bytes": r"Total Weights Memory:\s*(\d+)\s*bytes",
    "activation_bytes": r"Total Activation Memory:\s*(\d+)\s*bytes",
    "host_persistent_bytes": r"Total Host Persistent Memory:\s*(\d+)\s*bytes",
    "device_persistent_bytes": r"Total Device Persistent Memory:\s*(\d+)\s*bytes",
    "max_scratch_bytes": r"Max Scratch Memory:\s*(\d+)\s*bytes",
}
_PEAK = re.compile(r"\[MemUsageStats\].*?CPU:?\s*(\d+)\s*MiB,?\s*GPU:?\s*(\d+)\s*MiB")
_GEN_TIME = re.compile(r"Engine generation completed in\s*([\d.eE+-]+)\s*seconds")


def parse_builder_log(messages) -> dict:
    """Memory figures and timings from the builder's log lines; absent figures are None.

    The last occurrence wins (several builder passes may print them). ``missing`` lists the keys
    not found so callers can record why a value is null.
    """
    text = "\n".join(messages)
    out: dict = {}
    for key, pat in _MEMORY_PATTERNS.items():
        found = re.findall(pat, text)
        out[key] = int(found[-1]) if found else None
    peaks = _PEAK.findall(text)
    out["builder_peak_cpu_mib"] = int(peaks[-1][0]) if peaks else None
    out["builder_peak_gpu_mib"] = int(peaks[-1][1]) if peaks else None
    gen = _GEN_TIME.findall(text)
    out["engine_generation_seconds"] = float(gen[-1]) if gen else None
    out["missing"] = [k for k in ("weights_bytes", "activation_bytes") if out[k] is None]
    return out


# One line per engine layer, printed at VERBOSE when the builder config asks for DETAILED profiling
# verbosity (TensorRT 10 / TensorRT for RTX 1.x): "Name: L, LayerType: T, Inputs: [...], Constants: [...],
# Outputs: [...], TacticName: K, ...".
_LAYER = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), .*?Constants: \[(?P<consts>.*?)\], "
                    r"Outputs: .*?TacticName: (?P<tactic>[^,]*),")
_CONST = re.compile(r"\{ Name: (?P<name>[^,]+), Dimensions: \[(?P<dims>[^\]]*)\].*?Datatype: (?P<dtype>\w+)")
_DTYPE_BYTES = {"Float": 4, "Half": 2, "BFloat16": 2, "Int32": 4, "Int64": 8, "Int8": 1, "UInt8": 1, "Bool": 1,
                "FP8": 1, "Int4": 0.5}


def parse_layer_info(messages) -> Optional[dict]:
    """What the engine is made of, from the builder's per-layer lines; None when the log has none.

    Returns ``layers`` (count), ``layer_types`` (count per type), ``kernels`` (distinct tactic /
    generated-kernel names: code the engine file carries once each) and ``constant_bytes`` (bytes of
    the distinct constants the layers read, by name: the weights as the engine lays them out).
    """
    layers, types, tactics, consts = 0, {}, set(), {}
    lines = (line for m in messages for line in str(m).splitlines())  # one message holds every layer
    for m in lines:
        hit = _LAYER.match(m)
        if not hit:
            continue
        layers += 1
        types[hit["type"]] = types.get(hit["type"], 0) + 1
        if hit["tactic"].strip():
            tactics.add(hit["tactic"].strip())
        for c in _CONST.finditer(hit["consts"]):
            n = 1
            for d in c["dims"].split(","):
                if d.strip():
                    n *= max(int(d), 1)
            consts[c["name"]] = n * _DTYPE_BYTES.get(c["dtype"], 4)
    if not layers:
        return None
    return {"layers": layers, "layer_types": dict(sorted(types.items())), "kernels": len(tactics),
            "constant_bytes": int(sum(consts.values())), "constants": len(consts)}

"""ONNX -> serialized TensorRT engine (``tensorrt`` or ``tensorrt_rtx``) with a JSON sidecar.

Precision is decided in the ONNX file, not by builder flags: networks are created
``STRONGLY_TYPED`` for both builders (TensorRT for RTX only supports that), so ``fp16=True``
builds from ``optimizer.graph.convert_to_fp16`` of the given ONNX (done in memory unless the file
is already an fp16 vitopt export).

One optimization profile covers the requested batch sizes: min = smallest, max = largest,
opt = the median batch size (upper median for an even count) unless ``opt_batch`` is given.
The median is chosen because TensorRT tunes kernels for ``opt`` and the middle of the range is
the best single compromise for latency across the list; pass ``opt_batch=max(batches)`` for
throughput serving (trtexec makes you state ``--optShapes`` explicitly for the same reason).

Memory figures come from the engine API when a GPU can deserialize the engine
(``device_memory_size_v2`` for activations); otherwise from the builder's INFO log
("Total Weights Memory", "Total Activation Memory"); a value that neither gives is null and
``memory.missing_reason`` says why.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import VitoptError
from .builders import import_builder, make_logger, parse_builder_log, parse_layer_info

SIDECAR_FORMAT = "vitopt-engine"
SIDECAR_VERSION = 1


@dataclass
class BuiltEngine:
    """A serialized engine plus everything the sidecar JSON records."""
    data: bytes
    info: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def validate_batches(batch_sizes: Sequence[int]) -> list:
    try:
        bs = [int(b) for b in batch_sizes]
    except (TypeError, ValueError):
        raise VitoptError(f"batch sizes must be integers, got {batch_sizes!r}") from None
    if not bs:
        raise VitoptError("no batch sizes given")
    bad = [b for b in bs if b < 1]
    if bad:
        raise VitoptError(f"batch sizes must be positive, got {bad[0]}")
    return sorted(set(bs))


def choose_opt(batches: list, opt_batch: Optional[int] = None) -> int:
    """The profile's opt batch: ``opt_batch`` if given (must lie in [min, max]), else the upper median."""
    if opt_batch is None:
        return batches[len(batches) // 2]
    if not batches[0] <= int(opt_batch) <= batches[-1]:
        raise VitoptError(f"opt batch {opt_batch} is outside the profile range {batches[0]}..{batches[-1]}")
    return int(opt_batch)


def _load_onnx_bytes(onnx_path: Path, fp16: bool):
    """(bytes to parse, precision, note) after checking the file is a readable ONNX model."""
    import onnx
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as e:  # protobuf DecodeError and friends
        raise VitoptError(f"{onnx_path} is not a readable ONNX model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'decode error'})") from None
    if not proto.graph.node:
        raise VitoptError(f"{onnx_path} is not an ONNX model with a graph (no nodes)")
    meta = {p.key: p.value for p in proto.metadata_props}
    already16 = meta.get("vitopt.precision") == "fp16" or any(
        i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    if fp16 and not already16:
        from ..graph import convert_to_fp16
        proto = convert_to_fp16(proto, keep_io_types=True)
        return proto.SerializeToString(), "fp16", "converted to fp16 in memory (optimizer.graph.convert_to_fp16)"
    if already16:
        note = "the ONNX file is already fp16" + ("" if fp16 else ": engine precision follows the file")
        return onnx_path.read_bytes(), "fp16", note
    return onnx_path.read_bytes(), "fp32", None


def _parser_error(parser) -> str:
    n = parser.num_errors
    if n == 0:
        return "unknown parser error"
    e = parser.get_error(0)
    where = ""
    try:
        if e.node() >= 0:
            where = f" at node {e.node()}" + (f" ({e.node_operator()} '{e.node_name()}')" if e.node_operator() else "")
    except Exception:  # older parsers lack node_name/node_operator
        pass
    desc = " ".join(str(e.desc()).split())
    return f"{desc}{where}" + (f" (+{n - 1} more)" if n > 1 else "")


def _dtype_name(trt, dt) -> str:
    try:
        import numpy as np
        return np.dtype(trt.nptype(dt)).name
    except Exception:  # types numpy has no name for (bf16, fp8, int4)
        return str(dt).rsplit(".", 1)[-1].lower()


def _network_io(trt, network) -> list:
    io = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io.append({"name": t.name, "mode": "input", "shape": list(t.shape), "dtype": _dtype_name(trt, t.dtype)})
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io.append({"name": t.name, "mode": "output", "shape": list(t.shape), "dtype": _dtype_name(trt, t.dtype)})
    return io


def _engine_facts(trt, logger, data: bytes) -> Optional[dict]:
    """Memory and I/O from the deserialized engine; None when no GPU can load it."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            return None
        facts = {"activation_bytes": int(engine.device_memory_size_v2)}
        try:
            facts["streamable_weights_bytes"] = int(engine.streamable_weights_size)
        except AttributeError:
            pass
        io = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            io.append({"name": name, "mode": mode, "shape": list(engine.get_tensor_shape(name)),
                       "dtype": _dtype_name(trt, engine.get_tensor_dtype(name))})
        facts["io"] = io
        facts["gpu"] = torch.cuda.get_device_name(0)
        return facts
    except Exception as e:  # a GPU that cannot run this plan: fall back to the log
        return {"error": f"{type(e).__name__}: {e}"}


def _set_compute_capability(trt, name: str, config, cc: str) -> None:
    known = [k for k in getattr(getattr(trt, "ComputeCapability", None), "__members__", {})
             if k not in ("NONE", "CURRENT")]
    if not known:
        raise VitoptError(f"{name} {trt.__version__} cannot target a compute capability (a TensorRT for RTX option)")
    if str(cc).upper() not in known:
        raise VitoptError(f"unknown compute capability {cc!r}: {name} knows {', '.join(known)}")
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, str(cc).upper()), 0)


def engine_from_onnx(onnx_path, batch_sizes: Sequence[int] = (1, 8, 32), fp16: bool = False, *,
                     builder: Optional[str] = None, opt_batch: Optional[int] = None,
                     workspace_mib: Optional[int] = None, verbose: bool = False,
                     layer_info: bool = False, compute_capability: Optional[str] = None) -> BuiltEngine:
    """Parse ``onnx_path`` and build one engine covering ``batch_sizes`` (dynamic batch axis 0).

    Args:
        onnx_path: ONNX file with one image input whose axis 0 is dynamic.
        batch_sizes: profile batches; min/max are the extremes, opt the median (see module doc).
        fp16: build from the fp16 conversion of the graph (strongly typed), else fp32 as exported.
        builder: "tensorrt" or "tensorrt_rtx"; default ``available_builder()``.
        opt_batch: explicit opt batch instead of the median.
        workspace_mib: cap on the builder's workspace pool.
        verbose: echo the builder's INFO messages to stderr (warnings are always echoed).
        layer_info: ask the builder for its per-layer report (DETAILED profiling verbosity, kept
            from the VERBOSE log; the engine bytes are the same) and record ``info["layers"]``:
            layer count, distinct kernels and the bytes of the constants the layers read
            (``parse_layer_info``) — where an engine's bytes go besides weights.
        compute_capability: TensorRT for RTX only: build kernels for this GPU architecture alone
            (e.g. "SM89"; the builder's names, ``tensorrt_rtx.ComputeCapability``) instead of its
            default set; the engine then runs on that architecture only.

    Returns: BuiltEngine(data, info) — ``save_engine`` writes both.
    Raises: VitoptError (MissingDependency when no builder imports) with a one-line reason.

    Example: ``save_engine(engine_from_onnx("m.onnx", (1, 8, 32), fp16=True), "m.engine")``
    """
    onnx_path = Path(onnx_path)
    batches = validate_batches(batch_sizes)
    opt = choose_opt(batches, opt_batch)
    if not onnx_path.is_file():
        raise VitoptError(f"ONNX file not found: {onnx_path}")
    if workspace_mib is not None and int(workspace_mib) < 1:
        raise VitoptError(f"workspace must be a positive number of MiB, got {workspace_mib}")
    trt, name = import_builder(builder)
    payload, precision, precision_note = _load_onnx_bytes(onnx_path, fp16)

    logger = make_logger(trt, echo_min="INFO" if verbose else "WARNING",
                         keep_min="VERBOSE" if layer_info else "INFO")
    t0 = time.perf_counter()
    b = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = b.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(payload, str(onnx_path)):
        raise VitoptError(f"{name} cannot parse {onnx_path}: {_parser_error(parser)}")
    if network.num_inputs != 1:
        raise VitoptError(f"expected one network input, {onnx_path} has {network.num_inputs}")
    inp = network.get_input(0)
    shape = list(inp.shape)
    if len(shape) < 1 or any(d < 0 for d in shape[1:]):
        raise VitoptError(f"input {inp.name!r} has shape {shape}: only the batch axis (0) may be dynamic")
    if shape[0] >= 0 and batches != [shape[0]]:
        raise VitoptError(f"input {inp.name!r} has a fixed batch of {shape[0]}; re-export with a dynamic batch "
                          f"to build for batches {batches}")
    dims = {k: [bb] + shape[1:] for k, bb in (("min", batches[0]), ("opt", opt), ("max", batches[-1]))}
    config = b.create_builder_config()
    if layer_info:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if compute_capability is not None:
        _set_compute_capability(trt, name, config, compute_capability)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    profile = b.create_optimization_profile()
    profile.set_shape(inp.name, dims["min"], dims["opt"], dims["max"])
    config.add_optimization_profile(profile)
    io = _network_io(trt, network)
    serialized = b.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        errs = logger.texts("ERROR")
        raise VitoptError(f"{name} failed to build {onnx_path}: " + (errs[-1].splitlines()[0] if errs else
                                                                   "no error message from the builder"))
    data = bytes(serialized)
    del parser, network, config, b

    log = parse_builder_log(logger.texts("INFO"))
    facts = _engine_facts(trt, logger, data)
    memory = {"weights_bytes": log["weights_bytes"], "activation_bytes": log["activation_bytes"],
              "host_persistent_bytes": log["host_persistent_bytes"],
              "device_persistent_bytes": log["device_persistent_bytes"],
              "max_scratch_bytes": log["max_scratch_bytes"],
              "builder_peak_cpu_mib": log["builder_peak_cpu_mib"],
              "builder_peak_gpu_mib": log["builder_peak_gpu_mib"],
              "source": "builder log", "missing_reason": None}
    if facts and "activation_bytes" in facts:
        memory["activation_bytes"] = facts["activation_bytes"]
        memory["source"] = "engine API (activations) + builder log (weights)"
        if facts.get("streamable_weights_bytes") is not None:
            memory["streamable_weights_bytes"] = facts["streamable_weights_bytes"]
        io = facts.get("io", io)
    missing = [k for k in ("weights_bytes", "activation_bytes") if memory[k] is None]
    if missing:
        memory["missing_reason"] = (f"{name} {trt.__version__} printed no "
                                    + " / ".join({"weights_bytes": "'Total Weights Memory'",
                                                  "activation_bytes": "'Total Activation Memory'"}[k]
                                                 for k in missing)
                                    + " line at INFO and no GPU was available to query the engine")
    info = {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
        "onnx": str(onnx_path),
        "builder": {"package": name, "version": trt.__version__},
        "precision": precision, "precision_note": precision_note, "strongly_typed": True,
        "compute_capability": str(compute_capability).upper() if compute_capability else "builder default",
        "profile": {"input": inp.name, "batch_sizes": batches, "opt_rule": "explicit" if opt_batch else "median",
                    **dims},
        "engine_size_bytes": len(data),
        "memory": memory,
        "io": io,
        "build_seconds": round(seconds, 3),
        "engine_generation_seconds": log["engine_generation_seconds"],
        "gpu": (facts or {}).get("gpu"),
        "warnings": logger.texts("WARNING")[:20],
    }
    if layer_info:
        info["layers"] = parse_layer_info(logger.texts("VERBOSE"))
    return BuiltEngine(data, info)


def sidecar_path(engine_path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def save_engine(built: BuiltEngine, path, json_path=None) -> Path:
    """Write the engine atomically and its sidecar ``<path>.json`` (or ``json_path``); returns the engine path."""
    from ..fileio import atomic_path, sha256_file, write_json
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(built.data)
    info = dict(built.info)
    info["engine"] = path.name
    info["engine_sha256"] = sha256_file(path)
    try:
        info["onnx_sha256"] = sha256_file(info["onnx"]) if info.get("onnx") and os.path.isfile(info["onnx"]) else None
    except OSError:
        info["onnx_sha256"] = None
    write_json(json_path or sidecar_path(path), info)
    built.info = info
    return path


def read_sidecar(engine_path) -> dict:
    """The sidecar JSON written by ``save_engine`` for ``engine_path``."""
    from ..fileio import read_json
    p = sidecar_path(engine_path)
    info = read_json(p, f"no sidecar {p} next to the engine")
    if info.get("format") != SIDECAR_FORMAT:
        raise VitoptError(f"{p} is not a vitopt engine sidecar")
    return info

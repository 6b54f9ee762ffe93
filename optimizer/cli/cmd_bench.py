"""``vitopt bench``: latency percentiles, throughput and peak memory per backend and batch size.

FILE decides what can run: an ``.onnx`` file runs in ONNX Runtime (and TensorRT, built on the
fly, on a GPU machine), an ``.engine`` in TensorRT, a timm model name or a compressed model
directory in PyTorch — and in ONNX Runtime after a temporary export. Every backend goes through
``optimizer.bench.benchmark``; the table printed is ``optimizer.bench.to_markdown``.
``--backend triton`` serves a Triton model repository (or an ONNX file / model, prepared as a
python-ort model in a temporary repository) with the bundled server on loopback and measures
served latency per concurrency (``optimizer.bench.served_benchmark``).

The ONNX Runtime path imports neither torch nor timm: a light install (numpy, onnxruntime,
psutil and vitopt without its dependencies) benchmarks ONNX files on an edge box.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import VitoptError
from .common import parse_batches, positive_int, timing_images

BACKENDS = ("onnxruntime", "torch", "tensorrt", "triton")
_ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch", "pytorch": "torch",
            "tensorrt": "tensorrt", "trt": "tensorrt", "triton": "triton"}
SKIP_TRT = "tensorrt: skipped, engine cannot run here (no NVIDIA GPU)"


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency p50/p90/p99, throughput and peak memory per backend and batch size",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("target", metavar="FILE|MODEL|REPO",
                   help=".onnx file, .engine file, timm model name, compressed model directory, or a Triton "
                        "model repository (--backend triton)")
    p.add_argument("--backend", default=None,
                   help="comma list of onnxruntime, torch, tensorrt, triton (default: onnxruntime for .onnx, "
                        "tensorrt for .engine, torch for a model, triton for a repository)")
    p.add_argument("--concurrency", default="1,4,16",
                   help="triton: comma list of requests kept in flight (default 1,4,16)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http", help="triton: client protocol")
    p.add_argument("--serve-model", metavar="NAME", help="triton: the model in REPO (default: its only model)")
    p.add_argument("--max-time", default="30",
                   help="triton: at most this many seconds per (batch, concurrency) window (default 30)")
    p.add_argument("--batch", default="1,8,32", help="comma list of batch sizes (default 1,8,32)")
    p.add_argument("--threads", default=None,
                   help="CPU threads: ONNX Runtime intra-op and torch (default: physical cores for ORT, "
                        "torch's own setting)")
    p.add_argument("--spinning", action="store_true",
                   help="let ONNX Runtime's idle threads spin (ORT's default; off here unless given)")
    p.add_argument("--warmup", default="10", help="untimed iterations per batch size (default 10)")
    p.add_argument("--iters", default="50", help="at least this many timed iterations per batch size (default 50)")
    p.add_argument("--min-time", default="1.0",
                   help="and at least this many seconds of timed iterations per batch size (default 1.0)")
    p.add_argument("--fp16", action="store_true",
                   help="half precision: torch casts the model, ONNX Runtime runs an FP16-converted graph "
                        "(a prebuilt .engine keeps its own precision)")
    p.add_argument("--kernels", action="store_true",
                   help="torch backend on CUDA: factorised and gated layers run vitopt's Triton kernels "
                        "(kernels/) instead of the PyTorch reference")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="torch device / ONNX Runtime provider (default cpu; TensorRT always runs on the GPU)")
    p.add_argument("--checkpoint", default=os.environ.get("VITOPT_CHECKPOINT") or None,
                   help="weights for a timm model name (default: $VITOPT_CHECKPOINT; none: random weights, "
                        "fine for latency)")
    p.add_argument("--images", metavar="DIR",
                   help="time on real images from DIR (evenly spaced, eval transform; rows cycled to fill a "
                        "batch) instead of random data: input-adaptive (gated) models do content-dependent work")
    p.add_argument("--interleaved", action="store_true",
                   help="with two or more backends, also time them round-robin in one run (10 rounds) and "
                        "report speedups vs the first backend")
    p.add_argument("--json", metavar="PATH", help="write the rows (with environments) as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the Markdown table")
    p.set_defaults(func=run)


def _kind(target: str) -> str:
    if target.endswith(".onnx"):
        return "onnx"
    if target.endswith((".engine", ".plan", ".trt")):
        return "engine"
    if os.path.isdir(target) and any(os.path.isfile(os.path.join(target, d, "config.pbtxt"))
                                     for d in os.listdir(target)):
        return "repo"
    return "model"


def _parse_backends(text, kind) -> list:
    if text is None:
        return [{"onnx": "onnxruntime", "engine": "tensorrt", "model": "torch", "repo": "triton"}[kind]]
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in _ALIASES:
            raise VitoptError(f"unknown backend '{part}' (choose from {', '.join(BACKENDS)})")
        if _ALIASES[part] not in out:
            out.append(_ALIASES[part])
    if not out:
        raise VitoptError("no backend given")
    return out


def _check_output(path, flag) -> None:
    if path and os.path.isdir(path):
        raise VitoptError(f"{flag} {path} is a directory, expected a file path")


def _validate(args):
    from ..fileio import require_file
    kind = _kind(args.target)
    backends = _parse_backends(args.backend, kind)
    batches = parse_batches(args.batch)
    warmup = int(args.warmup) if str(args.warmup).strip().isdigit() else None
    if warmup is None:
        raise VitoptError(f"--warmup must be a non-negative integer, got {args.warmup!r}")
    iters = positive_int(args.iters, "--iters")
    try:
        min_time = float(args.min_time)
    except ValueError:
        raise VitoptError(f"--min-time must be a number of seconds, got {args.min_time!r}") from None
    if not (0 <= min_time < float("inf")):
        raise VitoptError(f"--min-time must be a finite number >= 0, got {args.min_time}")
    threads = positive_int(args.threads, "--threads") if args.threads is not None else None
    _check_output(args.json, "--json")
    _check_output(args.markdown, "--markdown")
    if args.images is not None:
        from ..fileio import require_dir
        require_dir(args.images, "--images directory")
    if kind == "onnx":
        require_file(args.target, "ONNX model")
    elif kind == "engine":
        require_file(args.target, "TensorRT engine")
    if kind != "model" and args.checkpoint and args.checkpoint != os.environ.get("VITOPT_CHECKPOINT"):
        raise VitoptError(f"--checkpoint applies to a timm model name, not to {args.target}")
    if kind == "repo" and backends != ["triton"]:
        raise VitoptError(f"{args.target} is a Triton model repository: only --backend triton serves it")
    if "triton" in backends and kind == "engine":
        raise VitoptError("--backend triton: the bundled Triton server has no TensorRT backend; prepare the engine "
                          "with `vitopt serve-prepare` and serve it on a Triton with TensorRT")
    if "triton" not in backends and (args.concurrency != "1,4,16" or args.serve_model):
        raise VitoptError("--concurrency / --serve-model apply to --backend triton")
    for b in backends:
        if b == "torch" and kind != "model":
            raise VitoptError(f"backend torch needs a timm model name or compressed model directory, "
                              f"not the {kind} file {args.target}")
        if b == "onnxruntime" and kind == "engine":
            raise VitoptError(f"backend onnxruntime cannot run the TensorRT engine {args.target}")
    if args.device == "cuda" and any(b != "tensorrt" for b in backends):
        from ..runners import gpu_available
        if not gpu_available():
            raise VitoptError("--device cuda: torch sees no CUDA GPU on this machine")
    return kind, backends, batches, warmup, iters, min_time, threads


def _served_rows(args, kind, onnx_path, batches, warmup, iters, min_time, threads, tmp: Path, inputs):
    """Rows of ``--backend triton``: the bundled server on loopback serving the repository (or a
    temporary python-ort repository of the ONNX file) under each concurrency."""
    from ..bench import served_benchmark
    from ..runners.triton_runner import TritonRunner
    from ..serve import ServeConfig, prepare_repository
    from ..serve.check import model_dirs
    from ..serve.server import TritonServer
    concurrency = parse_batches(args.concurrency)
    try:
        max_time = float(args.max_time)
    except ValueError:
        raise VitoptError(f"--max-time must be a number of seconds, got {args.max_time!r}") from None
    if not max_time >= min_time:
        raise VitoptError(f"--max-time ({args.max_time}) must be at least --min-time ({min_time:g})")
    if kind == "repo":
        repo = Path(args.target)
        dirs = model_dirs(repo, args.serve_model)
        if len(dirs) > 1:
            raise VitoptError(f"{repo} holds {len(dirs)} models ({', '.join(d.name for d in dirs)}): "
                              "name one with --serve-model")
        name = dirs[0].name
    else:
        repo, name = tmp / "repo", "model"
        prepare_repository(onnx_path, repo, ServeConfig(name, platform="python-ort", max_batch=max(batches),
                                                        preferred=(), threads=threads))
        print(f"triton: serving {Path(onnx_path).name} as a python-ort model (max_batch_size {max(batches)}, "
              "dynamic batching)", file=sys.stderr)
    print(f"triton: batch {','.join(map(str, batches))} x concurrency {','.join(map(str, concurrency))}, "
          f">= {iters} requests and >= {min_time:g} s, <= {max_time:g} s per window ({args.protocol})",
          file=sys.stderr)
    with TritonServer(repo, [name]) as server:
        url = server.http_url if args.protocol == "http" else server.grpc_url
        return served_benchmark(lambda: TritonRunner(url, name, protocol=args.protocol), batches, concurrency,
                                warmup=warmup, min_requests=iters, min_time_s=min_time,
                                max_requests=max(iters, 100000), max_time_s=max_time, inputs=inputs,
                                name=f"triton:{name}")


def _export_onnx(loaded, path: Path) -> str:
    """Temporary ONNX for the onnxruntime/tensorrt backends: what ``vitopt export`` ships with its
    default options (the deployment chain, parity-gated on seeded random inputs)."""
    from ..deploy import deploy_model, write_onnx
    print(f"onnxruntime: exporting {loaded.arch} to a temporary ONNX file with optimizer.deploy (vitopt export's "
          "defaults)", file=sys.stderr)
    result = deploy_model(loaded.model, description=loaded.describe())
    if result.report["export"]["fallback_reason"]:
        print(f"onnxruntime: export fell back to the TorchScript exporter: {result.report['export']['fallback_reason']}",
              file=sys.stderr)
    write_onnx(result, path)
    return str(path)


def _fp16_onnx(src: str, dst: Path) -> str:
    """``src`` through the deployment chain's fp16 precision step: the graph ``vitopt export --precision
    fp16`` ships (LayerNorm/Softmax and graph I/O stay FP32)."""
    import onnx
    from ..deploy import precision_step
    from ..export import save_onnx
    print(f"onnxruntime: converting {Path(src).name} to FP16 with the deployment chain's fp16 precision step "
          "(inputs/outputs stay FP32)", file=sys.stderr)
    proto, _ = precision_step(onnx.load(src), "fp16")
    save_onnx(proto, dst)
    return str(dst)


def _trt_runner(kind, target, onnx_path, fp16, tmp: Path, batches):
    from ..runners import TrtRunner
    if kind == "engine":
        if fp16:
            print("tensorrt: --fp16 ignored, a prebuilt engine keeps the precision it was built with", file=sys.stderr)
        return TrtRunner(target)
    from ..engine import engine_from_onnx, save_engine
    print(f"tensorrt: building a temporary engine from {Path(onnx_path).name} "
          f"({'fp16' if fp16 else 'fp32'}, batch {min(batches)}..{max(batches)})", file=sys.stderr)
    engine_path = tmp / "model.engine"
    save_engine(engine_from_onnx(onnx_path, batch_sizes=tuple(batches), fp16=fp16), engine_path)
    return TrtRunner(engine_path)


def run(args) -> int:
    from ..bench import benchmark, interleaved_latency, interleaved_to_markdown, rows_to_dict, to_markdown
    from ..fileio import temp_dir, write_json, write_text
    from ..runners import OrtRunner, TorchRunner, gpu_available

    kind, backends, batches, warmup, iters, min_time, threads = _validate(args)
    loaded = None
    if kind == "model":
        from ..models.loading import load_model
        loaded = load_model(args.target, args.checkpoint)
        print(f"model: {loaded.describe()}", file=sys.stderr)
    from ..resources import check_batch_memory, sample_shape_of
    check_batch_memory(max(batches), sample_shape_of(kind, args.target, loaded), args.device)
    rows, skipped, notes, runners, inter = [], [], [], {}, None
    inputs, inputs_note = None, "random standard-normal input (seed 0)"
    with temp_dir("vitopt-bench-") as td:
        tmp = Path(td)
        onnx_path = args.target if kind == "onnx" else None
        for backend in backends:
            if backend == "triton":
                if onnx_path is None and kind == "model":
                    onnx_path = _export_onnx(loaded, tmp / "model.onnx")
                if args.images is not None and inputs is None:
                    if onnx_path is None:
                        raise VitoptError("--images with a Triton repository: give the ONNX file or model instead "
                                          "(the repository's preprocessing is applied by `vitopt serve-check`)")
                    with OrtRunner(onnx_path) as probe:
                        inputs = timing_images(args.images, max(batches), loaded, probe)
                    inputs_note = f"{inputs.shape[0]} images from {args.images}"
                rows += _served_rows(args, kind, onnx_path, batches, warmup, iters, min_time, threads, tmp, inputs)
                continue
            if backend == "tensorrt" and not gpu_available():
                print(SKIP_TRT)
                skipped.append({"backend": "tensorrt", "reason": "no NVIDIA GPU"})
                continue
            if backend in ("onnxruntime", "tensorrt") and onnx_path is None and kind == "model":
                onnx_path = _export_onnx(loaded, tmp / "model.onnx")
                notes.append("onnxruntime/tensorrt ran a temporary ONNX export of the model")
            if backend == "torch":
                if args.kernels:
                    if args.device != "cuda":
                        raise VitoptError("--kernels runs Triton kernels on a GPU: add --device cuda")
                    import kernels
                    n = kernels.enable(loaded.model)
                    print(f"torch: {n} layers run vitopt's Triton kernels", file=sys.stderr)
                    if n == 0:
                        notes.append("--kernels: the model has no factorised or gated layer; nothing changed")
                runner = TorchRunner(loaded.model, device=args.device, dtype="fp16" if args.fp16 else None,
                                     threads=threads)
            elif backend == "onnxruntime":
                path = _fp16_onnx(onnx_path, tmp / "model_fp16.onnx") if args.fp16 else onnx_path
                runner = OrtRunner(path, threads=threads, allow_spinning=args.spinning,
                                   providers="cuda" if args.device == "cuda" else None)
            else:
                runner = _trt_runner(kind, args.target, onnx_path, args.fp16, tmp, batches)
            if args.images is not None and inputs is None:
                inputs = timing_images(args.images, max(batches), loaded, runner)
                inputs_note = f"{inputs.shape[0]} images from {args.images}"
            print(f"{backend}: batch {','.join(map(str, batches))}, warmup {warmup}, "
                  f">= {iters} iterations and >= {min_time:g} s per batch size", file=sys.stderr)
            rows += benchmark(runner, batches, warmup=warmup, iters=iters, min_time_s=min_time, inputs=inputs)
            runners[backend] = runner
        if args.interleaved and len(runners) >= 2:
            per_round = max(1, -(-iters // 10))
            print(f"interleaved: {', '.join(runners)}, 10 rounds x {per_round} iterations each", file=sys.stderr)
            inter = interleaved_latency(runners, batches, rounds=10, iters_per_round=per_round, warmup=warmup,
                                        inputs=inputs)
        elif args.interleaved:
            print("interleaved: skipped, needs two backends that ran", file=sys.stderr)
        for r in runners.values():     # --images activates a runner early; free it before its files go
            r.deactivate()
    if not rows:
        raise VitoptError("nothing was benchmarked: every requested backend was skipped")
    md = to_markdown(rows, title=f"vitopt bench {args.target}")
    if inter is not None:
        md += "\n" + interleaved_to_markdown(inter, title="interleaved (same run)")
    print(md, end="")
    out = rows_to_dict(rows)
    out.update({"target": args.target, "model": loaded.to_dict() if loaded else None, "skipped": skipped,
                "notes": notes, "settings": {"batch_sizes": batches, "warmup": warmup, "iters": iters,
                                             "min_time_s": min_time, "threads": threads,
                                             "ort_allow_spinning": args.spinning, "fp16": args.fp16, "kernels": args.kernels,
                                             "device": args.device, "inputs": inputs_note,
                                             "concurrency": parse_batches(args.concurrency)
                                             if "triton" in backends else None},
                "interleaved": inter})
    if args.json:
        write_json(args.json, out)
    if args.markdown:
        write_text(args.markdown, md)
    return 0

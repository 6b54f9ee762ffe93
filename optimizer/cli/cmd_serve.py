"""``vitopt serve-prepare`` / ``vitopt serve-check``: Triton model repositories, and proof they serve.

serve-prepare writes REPO/NAME/config.pbtxt and the next version folder from an ONNX file, an
engine with its sidecar, or a compressed model directory / timm name (exported first);
serve-check loads a repository in the Triton server bundled with nvidia-pytriton on 127.0.0.1 and
compares what it serves (HTTP and gRPC) with ONNX Runtime in process.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..fileio import temp_dir
from ..errors import VitoptError
from .common import parse_batches, positive_int, write_json_result


def register(sub) -> None:
    p = sub.add_parser("serve-prepare", help="write a Triton model repository entry (config, version, labels, client)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL",
                   help=".onnx file, engine (.engine/.plan with its .json sidecar), compressed model directory "
                        "or timm model name")
    p.add_argument("-o", "--output", required=True, metavar="REPO", help="model repository folder")
    p.add_argument("--name", help="Triton model name (default: the file or model name, sanitised)")
    p.add_argument("--platform", choices=("onnxruntime", "tensorrt", "python-ort"), default=None,
                   help="onnxruntime_onnx, tensorrt_plan, or a Python-backend model running ONNX Runtime "
                        "(default: tensorrt for an engine, onnxruntime otherwise)")
    p.add_argument("--bench", metavar="RESULT.json",
                   help="a `vitopt bench --json` result: preferred batch sizes from its throughput knee "
                        "and the batcher's queue delay")
    p.add_argument("--max-batch", help="max_batch_size (ONNX; default: the largest benchmarked batch, else 32; "
                                       "an engine's profile max; 0 disables batching)")
    p.add_argument("--preferred", help="comma list of preferred batch sizes (overrides the --bench knee)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="leave dynamic_batching out")
    p.add_argument("--instances", default="1", help="instance_group count (default 1)")
    p.add_argument("--kind", choices=("cpu", "gpu"), default=None,
                   help="instance kind (default gpu for tensorrt, cpu otherwise)")
    p.add_argument("--threads", help="CPU threads per instance (ONNX Runtime intra-op)")
    p.add_argument("--trt-accelerator", action="store_true",
                   help="onnxruntime on GPU: the TensorRT execution accelerator (FP16 when the model is fp16)")
    p.add_argument("--labels", metavar="SYNSETS", help="synset list for labels.txt (synsets.tsv / synset_words.txt; "
                                                       "default class_<i>)")
    p.add_argument("--data-config", metavar="TIMM_NAME",
                   help="for an ONNX file or engine: the timm model whose preprocessing the client applies")
    p.add_argument("--checkpoint", default=os.environ.get("VITOPT_CHECKPOINT") or None,
                   help="weights for a timm model name (default: $VITOPT_CHECKPOINT)")
    p.add_argument("--json", metavar="PATH", help="write what was prepared as JSON")
    p.set_defaults(func=run_prepare, output_grows=True)

    c = sub.add_parser("serve-check", help="load a model repository in the bundled Triton server and compare "
                                           "served outputs with ONNX Runtime")
    c.add_argument("repo", metavar="REPO", help="model repository folder")
    c.add_argument("--model", help="check only this model (default: every model in REPO)")
    c.add_argument("--images", default=os.environ.get("VITOPT_DATA") or None, metavar="DIR",
                   help="images to send (default $VITOPT_DATA; none: seeded random inputs)")
    c.add_argument("--count", default="4", help="images per request (default 4, at most max_batch_size)")
    c.add_argument("--timeout", default="120", help="seconds to wait for the server to become ready (default 120)")
    c.add_argument("--http-port", help="HTTP port (default: a free one; gRPC and metrics always take free ones)")
    c.add_argument("--json", metavar="PATH", help="write the check result as JSON")
    c.set_defaults(func=run_check)


def _default_name(model: str) -> str:
    import re
    stem = Path(model.rstrip("/")).name
    for suf in (".onnx", ".engine", ".plan", ".trt"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).lstrip(".-")
    return name or "model"


def _float(text, flag) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise VitoptError(f"{flag} must be a number, got {text!r}") from None
    if not v > 0:
        raise VitoptError(f"{flag} must be positive, got {text}")
    return v


def run_prepare(args) -> int:
    from ..fileio import read_json
    from ..serve import ServeConfig, prepare_repository
    from ..serve.preprocess import spec_for_timm_name
    from ..serve.source import resolve_source
    is_engine = args.model.endswith((".engine", ".plan", ".trt"))
    platform = args.platform or ("tensorrt" if is_engine else "onnxruntime")
    max_batch = None
    if args.max_batch is not None:
        if str(args.max_batch).strip() == "0":
            max_batch = 0
        else:
            max_batch = positive_int(args.max_batch, "--max-batch")
    cfg = ServeConfig(name=args.name or _default_name(args.model), platform=platform, max_batch=max_batch,
                      instances=positive_int(args.instances, "--instances"),
                      kind=args.kind or ("gpu" if platform == "tensorrt" else "cpu"),
                      dynamic_batching=not args.no_dynamic_batching,
                      preferred=tuple(parse_batches(args.preferred)) if args.preferred else None,
                      threads=positive_int(args.threads, "--threads") if args.threads else None,
                      trt_accelerator=args.trt_accelerator)
    bench = read_json(args.bench, f"--bench result not found: {args.bench}") if args.bench else None
    if args.labels and not os.path.isfile(args.labels):
        raise VitoptError(f"--labels file not found: {args.labels}")
    with temp_dir("vitopt-serve-") as td:
        source = resolve_source(args.model, args.checkpoint, Path(td))
        spec = source.preprocess
        if args.data_config:
            spec = spec_for_timm_name(args.data_config)
        if cfg.trt_accelerator:
            from ..serve.signature import signature_of
            import dataclasses
            cfg = dataclasses.replace(cfg, fp16=signature_of(source.path).precision == "fp16")
        res = prepare_repository(source.path, args.output, cfg, bench=bench, labels=args.labels, preprocess=spec)
    c = res.config
    print(f"wrote {res.repo}/{res.name} version {res.version} ({c['platform']}, max_batch_size {c['max_batch_size']}"
          + (f", preferred {c['preferred_batch_size']}" if c["preferred_batch_size"] else "")
          + f", {c['instances']} x {c['kind']})")
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    out = res.to_dict()
    out["exported_from"] = source.exported_from
    write_json_result(args.json, out)
    return 0


def run_check(args) -> int:
    from ..serve.check import check_repository
    if args.images is not None and not os.path.isdir(args.images):
        raise VitoptError(f"--images directory not found: {args.images}")
    http_port = None
    if args.http_port is not None:
        http_port = positive_int(args.http_port, "--http-port")
    res = check_repository(args.repo, model=args.model, timeout_s=_float(args.timeout, "--timeout"),
                           images=args.images, count=positive_int(args.count, "--count"), http_port=http_port)
    for m in res["models"]:
        line = f"{m['name']} v{m['version']} ({m['platform']}): {m['status']}"
        if "http" in m:
            line += (f"; HTTP max |diff| {m['http']['max_abs_diff']:.2e} top-1 {100 * m['http']['top1_agreement']:.0f} %"
                     f", gRPC max |diff| {m['grpc']['max_abs_diff']:.2e} top-1 "
                     f"{100 * m['grpc']['top1_agreement']:.0f} % on {m['inputs']}")
        elif m.get("reason"):
            line += f" ({m['reason'][:200]})"
        print(line)
    write_json_result(args.json, res)
    if not res["passed"]:
        print("vitopt serve-check: FAILED: " + ", ".join(m["name"] for m in res["models"] if not m["passed"]),
              file=sys.stderr)
        return 1
    return 0

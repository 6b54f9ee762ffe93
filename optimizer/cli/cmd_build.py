"""``vitopt build``: ONNX -> TensorRT engine (tensorrt or tensorrt_rtx) + ``<engine>.json`` sidecar."""
from __future__ import annotations

import os

from .common import add_json_arg, parse_batches, positive_int, write_json_result


def register(sub) -> None:
    p = sub.add_parser("build", help="build a TensorRT engine from an ONNX file (one profile over the batch sizes)")
    p.add_argument("onnx", metavar="FILE.onnx", help="ONNX model with a dynamic batch axis (from vitopt export)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.engine",
                   help="engine file; the sidecar FILE.engine.json is written beside it")
    p.add_argument("--batch", default="1,8,32",
                   help="batch sizes the profile must cover, e.g. 1,8,32 (min/max = extremes, opt = median)")
    p.add_argument("--opt-batch", help="explicit opt batch of the profile (default: the median of --batch)")
    p.add_argument("--fp16", action="store_true",
                   help="fp16 engine: builds from the fp16 conversion of the ONNX (strongly typed network)")
    p.add_argument("--builder", choices=["tensorrt", "tensorrt_rtx"],
                   help="builder package (default: tensorrt if importable, else tensorrt_rtx)")
    p.add_argument("--workspace", metavar="MiB", help="cap on the builder workspace")
    p.add_argument("--verbose", action="store_true", help="echo the builder's INFO log")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine import engine_from_onnx, save_engine
    from ..errors import VitoptError
    from ..fileio import require_file
    batches = parse_batches(args.batch)
    opt = positive_int(args.opt_batch, "--opt-batch") if args.opt_batch else None
    workspace = positive_int(args.workspace, "--workspace") if args.workspace else None
    require_file(args.onnx, "ONNX file")
    if os.path.isdir(args.output):
        raise VitoptError(f"output {args.output} is a directory; give a file name like model.engine")
    print(f"building {'fp16' if args.fp16 else 'fp32'} engine for batches {batches} from {args.onnx} ...")
    built = engine_from_onnx(args.onnx, batches, fp16=args.fp16, builder=args.builder, opt_batch=opt,
                             workspace_mib=workspace, verbose=args.verbose)
    save_engine(built, args.output)
    info = built.info
    mem = info["memory"]

    def mb(v):
        return "n/a" if v is None else f"{v / 2**20:.1f} MiB"
    prof = info["profile"]
    print(f"engine {args.output}: {info['engine_size_bytes'] / 2**20:.1f} MiB, {info['precision']}, "
          f"{info['builder']['package']} {info['builder']['version']}, built in {info['build_seconds']:.1f} s")
    print(f"profile {prof['input']}: min {prof['min']} opt {prof['opt']} max {prof['max']}")
    print(f"weights {mb(mem['weights_bytes'])}, activations {mb(mem['activation_bytes'])} (from {mem['source']})"
          + (f"; {mem['missing_reason']}" if mem.get("missing_reason") else ""))
    print(f"sidecar {args.output}.json")
    write_json_result(args.json, info)
    return 0

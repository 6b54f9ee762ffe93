"""``vitopt quantize``: FP32 ONNX -> INT8 ONNX (static Q/DQ calibrated on images, or dynamic)."""
from __future__ import annotations

import os
import sys

from .common import add_json_arg, positive_int, write_json_result


def register(sub) -> None:
    p = sub.add_parser("quantize", help="INT8 post-training quantization of an ONNX file (Q/DQ for TensorRT "
                                        "and ONNX Runtime, or dynamic for ONNX Runtime CPU)")
    p.add_argument("onnx", metavar="IN.onnx", help="FP32 ONNX model (from vitopt export)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="quantized model, written atomically")
    p.add_argument("--calib", required=True, metavar="DIR", help="image folder for calibration (and held-out images)")
    p.add_argument("--calibrator", default="max", choices=["max", "percentile", "entropy", "mse"],
                   help="how static activation ranges are chosen (default max: the best static agreement on DeiT-Tiny, benchmarks/results/quant.md)")
    p.add_argument("--percentile", type=float, default=99.99, help="clip percentile of |x| for --calibrator percentile")
    p.add_argument("--mode", default="static", choices=["static", "dynamic"],
                   help="static: calibrated Q/DQ (TensorRT, ORT); dynamic: per-batch activations (ORT CPU)")
    p.add_argument("--min-agreement", type=float, default=0.0, metavar="A",
                   help="return the costliest layers to FP32 until top-1 agreement with FP32 on held-out "
                        "images reaches A (a fraction, e.g. 0.99)")
    p.add_argument("--calib-images", default="128", metavar="N", help="calibration images (default 128)")
    p.add_argument("--held-images", default=None, metavar="N",
                   help="held-out images for agreement and the fallback (default 64 with --min-agreement, else 0)")
    p.add_argument("--rank-images", type=int, default=None, metavar="N",
                   help="rank layers for the fallback on the first N held-out images (one evaluation per layer; "
                        "default all), then check agreement on all of them")
    p.add_argument("--max-fallback", type=int, default=8, metavar="K", help="most layers returned to FP32 (default 8)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: ONNX Runtime's int8 kernels on AVX2 CPUs without VNNI saturate otherwise")
    p.add_argument("--exclude", default="", metavar="NODE,...", help="node names kept in FP32")
    p.add_argument("--model", metavar="NAME",
                   help="timm model name whose eval preprocessing to use "
                        "(default: ImageNet mean/std, bicubic, crop 0.875)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import onnx
    from ..data.folder import list_images
    from ..errors import VitoptError
    from ..export import save_onnx
    from ..fileio import require_dir, require_file
    from ..quant import QuantConfig, quantize_onnx
    from ..data.arrays import folder_images
    from ..quant.images import onnx_input_shape
    from ..quant.placement import check_quantizable
    require_file(args.onnx, "ONNX file")
    if os.path.isdir(args.output):
        raise VitoptError(f"output {args.output} is a directory; give a file name like model.int8.onnx")
    calib_dir = require_dir(args.calib, "calibration folder")
    n_calib = positive_int(args.calib_images, "--calib-images")
    held = (positive_int(args.held_images, "--held-images") if args.held_images not in (None, "0")
            else (64 if args.min_agreement > 0 else 0))
    try:
        cfg = QuantConfig(calibrator=args.calibrator, percentile=args.percentile, mode=args.mode,
                          calib_images=n_calib, min_agreement=args.min_agreement, reduce_range=args.reduce_range,
                          rank_images=args.rank_images, max_fallback=args.max_fallback,
                          exclude=tuple(x for x in args.exclude.split(",") if x))
    except ValueError as e:
        raise VitoptError(str(e)) from None
    try:
        proto = onnx.load(args.onnx)
    except Exception as e:  # protobuf raises DecodeError and friends for a file that is not ONNX
        raise VitoptError(f"cannot read {args.onnx} as ONNX: {type(e).__name__}") from None
    check_quantizable(proto, cfg)  # before reading images: fail fast
    shape = onnx_input_shape(proto)
    available = len(list_images(calib_dir))
    if available <= held:
        raise VitoptError(f"{calib_dir} holds {available} images: not enough for {held} held-out images "
                          "plus calibration images")
    # dynamic mode calibrates nothing: one image is enough to feed the call
    take = min(n_calib, available - held) if cfg.mode == "static" else 1
    model = None
    if args.model:
        from ..models.loading import create_architecture
        model = create_architecture(args.model)
    sets = folder_images(calib_dir, [take] + ([held] if held else []), shape, model=model)
    q, rep = quantize_onnx(proto, sets[0], cfg, eval_inputs=sets[1] if held else None)
    size = save_onnx(q, args.output)
    print(rep)
    for layer in rep.layers:
        if not layer.quantized:
            print(f"  FP32 {layer.node} ({layer.op_type}): {layer.reason}", file=sys.stderr)
    in_size = os.path.getsize(args.onnx)
    print(f"wrote {args.output}: {size / 1e6:.2f} MB ({size / in_size:.2f} of {in_size / 1e6:.2f} MB)")
    write_json_result(args.json, {"input": args.onnx, "output": args.output, "size_bytes": size,
                                  "input_size_bytes": in_size, "report": rep.to_dict()})
    return 0

"""``vitopt compress``: apply one compression method and save recipe + safetensors."""
from __future__ import annotations

import os
import sys

from ..resources import resolve_device
from .common import (add_json_arg, add_model_args, load_model_from_args, non_negative_int,
                     write_json_result)


def register(sub) -> None:
    from ..compress.registry import method_names
    p = sub.add_parser("compress", help=f"compress a model with one method ({', '.join(method_names())})")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(method_names())}")
    add_model_args(p)
    p.add_argument("--calib", help="calibration / training image folder (labels optional)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--macs", help="target MACs ratio vs the input model, in (0, 1]")
    budget.add_argument("--params", help="target parameter ratio vs the input model, in (0, 1]")
    budget.add_argument("--latency", help="target predicted latency ratio vs the input model, in (0, 1], for a "
                        "method with a latency budget (its config's latency_ratio), e.g. from a per-shape ONNX "
                        "Runtime table (--set latency_table=ort|FILE)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field of the method (repeatable), e.g. --set epochs=2")
    p.add_argument("--teacher", help="dense teacher (timm name) for distillation; default: the input model")
    p.add_argument("--teacher-checkpoint", help="weights of --teacher")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when a GPU is present, else cpu")
    p.add_argument("--workers", default="2", help="data loader workers")
    p.add_argument("--seed", default="0")
    p.add_argument("--work-dir", help="keep resumable method checkpoints here")
    p.add_argument("-o", "--output", required=True, help="output directory (recipe.json + model.safetensors)")
    add_json_arg(p)
    p.set_defaults(func=run, output_kind="compressed")


def run(args) -> int:
    from ..compress.runner import build_config, compress_loaded, parse_set_options
    from ..compress.saving import save_compressed
    from ..counting import count_macs
    from ..errors import VitoptError
    opts = parse_set_options(args.set)
    if args.macs is not None:
        opts["macs"] = args.macs
    if args.params is not None:
        opts["params"] = args.params
    if args.latency is not None:
        opts["latency"] = args.latency
    cfg = build_config(args.method, opts)
    out = args.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise VitoptError(f"output {out} exists and is not a directory")
    args.device = resolve_device(args.device)
    workers, seed = non_negative_int(args.workers, "--workers"), non_negative_int(args.seed, "--seed")
    from ..distributed import process_group, rank_device
    # under torchrun every rank runs the method's loops on its share of the images; rank 0 saves
    with process_group(args.device) as group:
        loaded = load_model_from_args(args) if group.main else _load_quietly(args)
        teacher = None
        if args.teacher:
            from ..models.loading import load_model
            teacher = load_model(args.teacher, args.teacher_checkpoint).model
        before = count_macs(loaded.model)
        cm = compress_loaded(loaded, [cfg], args.calib, teacher=teacher, device=rank_device(args.device),
                             workers=workers, seed=seed, work_dir=args.work_dir,
                             log=lambda s: print(s, file=sys.stderr) if group.main else None)
        if not group.main:
            return 0
    cm.model.to("cpu")
    after = count_macs(cm.model)
    save_compressed(out, cm)
    pr, mr = after.params / before.params, after.macs / before.macs
    print(f"{args.method}: params {before.mparams:.2f} M -> {after.mparams:.2f} M ({pr:.3f}x)   "
          f"MACs {before.gmacs:.3f} G -> {after.gmacs:.3f} G ({mr:.3f}x)   saved to {out}")
    write_json_result(args.json, {"method": args.method, "config": cfg.to_dict(), "output": out,
                                  "before": before.to_dict(), "after": after.to_dict(),
                                  "params_ratio": pr, "macs_ratio": mr, "report": cm.steps[-1]["report"]})
    return 0


def _load_quietly(args):
    from ..models.loading import load_model
    return load_model(args.model, args.checkpoint)

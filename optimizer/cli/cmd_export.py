"""``vitopt export``: a model through the deployment chain (``optimizer.deploy``) to one ONNX file."""
from __future__ import annotations

import os
import sys

from .common import add_json_arg, add_model_args, load_model_from_args, positive_int, write_json_result


def add_export_options(p) -> None:
    """The options of ``DeployOptions`` as flags; method export options come from the method registry."""
    from ..compress.registry import export_options
    from ..deploy import DeployOptions
    d = DeployOptions()
    p.add_argument("--opset", default=str(d.opset), help=f"ONNX opset (default {d.opset})")
    p.add_argument("--legacy", action="store_true",
                   help="use the legacy TorchScript exporter instead of the torch.export (dynamo) one")
    p.add_argument("--no-cleanup", action="store_true",
                   help="write the exporter's graph as is (no constant folding / rules)")
    p.add_argument("--rules", default=None, metavar="A,B",
                   help="graph rules to run, comma separated (default: the default rules)")
    from ..deploy.precision import get_precision, precision_names
    p.add_argument("--precision", default=None, metavar="|".join(precision_names()),
                   help="graph precision (default fp32): " + "; ".join(
                       f"{n}: {get_precision(n).help}" for n in precision_names()))
    p.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    p.add_argument("--parity-images", default=str(d.parity_images),
                   help=f"number of images for the parity check (default {d.parity_images})")
    p.add_argument("--atol", default=str(d.atol),
                   help=f"largest allowed |PyTorch - ONNX| of the fp32 logits (default {d.atol:g})")
    for name, opt in export_options().items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="|".join(opt.choices),
                       help=opt.help)


def export_options_from_args(args):
    """DeployOptions from the flags of ``add_export_options``."""
    from ..compress.registry import export_options
    from ..deploy import DeployOptions
    from ..errors import VitoptError
    opset = positive_int(args.opset, "--opset")
    try:
        atol = float(args.atol)
    except ValueError:
        raise VitoptError(f"--atol must be a number, got {args.atol!r}") from None
    if not atol > 0:
        raise VitoptError(f"--atol must be positive, got {args.atol}")
    rules = None if args.rules is None else tuple(r.strip() for r in args.rules.split(",") if r.strip())
    if args.fp16 and args.precision not in (None, "fp16"):
        raise VitoptError(f"--fp16 contradicts --precision {args.precision}")
    precision = "fp16" if args.fp16 else (args.precision or "fp32")
    return DeployOptions.from_dict({
        "opset": opset, "exporter": "legacy" if args.legacy else "dynamo", "cleanup": not args.no_cleanup,
        "rules": rules, "precision": precision,
        "parity_images": positive_int(args.parity_images, "--parity-images"), "atol": atol,
        **{name: getattr(args, name) for name in export_options() if getattr(args, name) is not None}})


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX with a dynamic batch axis, clean the graph, "
                                      "check parity in ONNX Runtime")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="output ONNX file (written atomically)")
    p.add_argument("--parity-data", default=os.environ.get("VITOPT_DATA") or None, metavar="DIR",
                   help="images for the parity check (default: $VITOPT_DATA; random inputs without it)")
    add_export_options(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..deploy import deploy_model, parity_inputs, write_onnx
    from ..errors import VitoptError
    options = export_options_from_args(args)
    if args.parity_data and not os.path.isdir(args.parity_data):
        raise VitoptError(f"parity data directory not found: {args.parity_data}")
    if os.path.isdir(args.output):
        raise VitoptError(f"output {args.output} is a directory; give a file name like model.onnx")
    loaded = load_model_from_args(args)
    model = loaded.model.eval()
    inputs = parity_inputs(model, args.parity_data, options.parity_images)
    result = deploy_model(model, options, inputs, description=loaded.describe(), log=print)
    size = write_onnx(result, args.output)
    out = {"model": loaded.to_dict(), "output": args.output, "options": options.to_dict(), **result.report,
           "size_bytes": size}
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")
    if loaded.is_random:
        print("note: the model has RANDOM weights; the file is only good for plumbing and timing", file=sys.stderr)
    write_json_result(args.json, out)
    return 0

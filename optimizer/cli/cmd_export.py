"""``vitopt export``: PyTorch -> ONNX (dynamic batch), graph clean-up, parity check, optional fp16."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import add_json_arg, add_model_args, load_model_from_args, positive_int, write_json_result

PARITY_IMAGES = 8
FP16_MIN_COSINE = 0.99


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX with a dynamic batch axis, clean the graph, "
                                      "check parity in ONNX Runtime")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="output ONNX file (written atomically)")
    p.add_argument("--opset", default="18", help="ONNX opset (default 18)")
    p.add_argument("--legacy", action="store_true",
                   help="use the legacy TorchScript exporter instead of the torch.export (dynamo) one")
    p.add_argument("--no-cleanup", action="store_true",
                   help="write the exporter's graph as is (no constant folding / rules)")
    p.add_argument("--fp16", action="store_true",
                   help="convert weights and compute to fp16 (LayerNorm/Softmax and graph I/O stay fp32)")
    p.add_argument("--parity-data", default=os.environ.get("VITOPT_DATA") or None, metavar="DIR",
                   help="images for the parity check (default: $VITOPT_DATA; random inputs without it)")
    p.add_argument("--parity-images", default=str(PARITY_IMAGES),
                   help=f"number of images for the parity check (default {PARITY_IMAGES})")
    p.add_argument("--gates-k", default=None, metavar="MODE",
                   help="models with a gates step: 'data' (default: K = count of gate scores over the threshold, "
                        "input-adaptive) or 'fixed' (each module's calibrated mean K: static shapes)")
    p.add_argument("--atol", default="1e-4", help="largest allowed |PyTorch - ONNX| of the fp32 logits (default 1e-4)")
    add_json_arg(p)
    p.set_defaults(func=run)


def _parity_inputs(model, data_dir, n: int):
    """(inputs, description): real images when a folder is given, else seeded random tensors."""
    import torch
    from ..errors import VitoptError
    from ..export import input_shape_of
    if data_dir:
        if not os.path.isdir(data_dir):
            raise VitoptError(f"parity data directory not found: {data_dir}")
        from ..data.folder import ImageFolderData, eval_transform
        ds = ImageFolderData(data_dir, eval_transform(model), labeled=False)
        # spread over the folder (sorted by class) rather than the first class only
        picks = sorted({round(i * (len(ds) - 1) / max(n - 1, 1)) for i in range(min(n, len(ds)))})
        items = [ds[i] for i in picks]
        imgs = [it[0] for it in items if it[0] is not None]
        if not imgs:
            raise VitoptError(f"no readable images in {data_dir} for the parity check")
        return torch.stack(imgs), f"{len(imgs)} images from {data_dir}"
    g = torch.Generator().manual_seed(0)
    shape = input_shape_of(model, n)
    return torch.randn(*shape, generator=g), f"{n} random inputs (no --parity-data or $VITOPT_DATA given)"


def run(args) -> int:
    import onnx
    from ..errors import VitoptError
    from ..export import check_parity, compare_outputs, onnx_from_torch, save_onnx, set_metadata
    from ..export.parity import ort_session
    from ..fileio import _check_parent, temp_dir
    from ..methods.gates.export import GATES_K_MODES, gates_k_mode
    opset = positive_int(args.opset, "--opset")
    if args.gates_k is not None and args.gates_k not in GATES_K_MODES:
        raise VitoptError(f"--gates-k must be one of {', '.join(GATES_K_MODES)}, got {args.gates_k!r}")
    n_images = positive_int(args.parity_images, "--parity-images")
    try:
        atol = float(args.atol)
    except ValueError:
        raise VitoptError(f"--atol must be a number, got {args.atol!r}") from None
    if not atol > 0:
        raise VitoptError(f"--atol must be positive, got {args.atol}")
    if args.parity_data and not os.path.isdir(args.parity_data):
        raise VitoptError(f"parity data directory not found: {args.parity_data}")
    if os.path.isdir(args.output):
        raise VitoptError(f"output {args.output} is a directory; give a file name like model.onnx")
    _check_parent(Path(os.path.abspath(args.output)))  # fail before the slow export, not after
    loaded = load_model_from_args(args)
    model = loaded.model.eval()
    out = {"model": loaded.to_dict(), "output": args.output}
    with gates_k_mode(model, args.gates_k) as gates_meta, temp_dir("vitopt-export-") as tmp:
        if gates_meta:
            print(f"gates: K {gates_meta['vitopt.gates.k']} in {gates_meta['vitopt.gates.modules']} gated modules")
            out["gates_k"] = gates_meta["vitopt.gates.k"]
        raw = os.path.join(tmp, "raw.onnx")
        info = onnx_from_torch(model, raw, opset=opset, dynamo=not args.legacy, description=loaded.describe())
        print(f"exported with the {info.exporter} exporter, opset {opset}, dynamic batch "
              f"({info.seconds:.1f} s)" + (f" [{info.fallback_reason}]" if info.fallback_reason else ""))
        out["export"] = info.to_dict()
        x, where = _parity_inputs(model, args.parity_data, n_images)
        print(f"parity check on {where}")
        out["parity_inputs"] = where
        res = check_parity(model, raw, x, atol=atol)
        print(f"exported graph:  {res}")
        out["parity_export"] = res.to_dict()
        proto = onnx.load(raw)
        final_path = raw
        if not args.no_cleanup:
            from ..graph import cleanup_graph
            proto, report = cleanup_graph(proto)
            print(report)
            out["cleanup"] = report.to_dict()
            final_path = os.path.join(tmp, "clean.onnx")
            save_onnx(proto, final_path)
            res = check_parity(model, final_path, x, atol=atol)
            print(f"cleaned graph:   {res}")
            out["parity_cleaned"] = res.to_dict()
        if args.fp16:
            import numpy as np
            import torch
            from ..graph import convert_to_fp16
            proto = convert_to_fp16(proto, keep_io_types=True)
            final_path = os.path.join(tmp, "fp16.onnx")
            save_onnx(proto, final_path)
            sess = ort_session(final_path)
            with torch.no_grad():
                ref = model(x).float().numpy()
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
            r16 = compare_outputs(ref, got, atol=float("inf"))
            print(f"fp16 graph:      max |diff| {r16.max_abs_diff:.3g}, min cosine {r16.cosine:.5f}, "
                  f"top-1 agreement {100 * r16.top1_agreement:.1f} %")
            out["parity_fp16"] = r16.to_dict()
            if not r16.cosine >= FP16_MIN_COSINE:
                raise VitoptError(f"fp16 model diverges from PyTorch: min cosine {r16.cosine:.4f} < "
                                  f"{FP16_MIN_COSINE} on {where}")
        set_metadata(proto, {"vitopt.cleanup": str(not args.no_cleanup).lower(),
                             "vitopt.precision": "fp16" if args.fp16 else "fp32", **gates_meta})
        size = save_onnx(proto, args.output)
    out["size_bytes"] = size
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")
    if loaded.is_random:
        print("note: the model has RANDOM weights; the file is only good for plumbing and timing", file=sys.stderr)
    write_json_result(args.json, out)
    return 0

"""``vitopt compare``: the same real images through PyTorch and each runtime backend; exit 0 pass / 1 fail.

ARTIFACT is an ONNX file (runs in ONNX Runtime here, and in TensorRT through a temporary engine on
a GPU machine) or a TensorRT engine (GPU only). With ``--model`` the PyTorch model is the
reference every backend is compared with; without it the first backend is the reference for the
others. Per output: max / mean / median abs and relative difference, cosine (overall and worst
sample), top-1 agreement; the verdict uses the tolerance row of ``optimizer.tolerances`` for the
artifact's precision (ONNX metadata ``vitopt.precision``, the engine sidecar's ``precision``, or
``--precision``). Bad input (unreadable artifact, images that do not fit the model's input, an
engine that cannot run here) is one line on stderr and exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..fileio import temp_dir
from ..errors import VitoptError
from ..bench.environment import environment
from .common import add_json_arg, load_model_from_args, positive_int, timing_images, write_json_result

BACKENDS = ("onnxruntime", "tensorrt")
_ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "trt": "tensorrt"}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
RESULT_FORMAT = "vitopt-compare"
RESULT_VERSION = 1


def register(sub) -> None:
    p = sub.add_parser("compare", help="run the same images through PyTorch and the runtime backends; "
                                       "exit 0 when every output is within tolerance, 1 when not",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx file or TensorRT .engine")
    p.add_argument("--model", default=None,
                   help="PyTorch reference: timm model name or compressed model directory (without it the "
                        "backends are compared with each other)")
    p.add_argument("--checkpoint", default=None, help="weights for --model (.pth / .safetensors)")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of real images")
    p.add_argument("--backends", default=None,
                   help="comma list of onnxruntime, tensorrt (default: onnxruntime for .onnx, plus tensorrt "
                        "on a GPU machine; tensorrt for an engine)")
    p.add_argument("--batch", default="8", help="images per inference (default 8)")
    p.add_argument("--images", default="32", help="number of images, evenly spaced over the folder (default 32)")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16"),
                   help="tolerance row to use (default: the artifact's recorded precision)")
    p.add_argument("--atol", default=None, help="override the tolerance row's atol")
    p.add_argument("--rtol", default=None, help="override the tolerance row's rtol")
    add_json_arg(p)
    p.set_defaults(func=run)


def _float_or_none(text, name):
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise VitoptError(f"{name} must be a number, got {text!r}") from None
    if not v >= 0:
        raise VitoptError(f"{name} must be non-negative, got {text}")
    return v


def artifact_kind(path: Path) -> tuple:
    """("onnx", precision) or ("engine", precision) for ``path``; VitoptError for anything else."""
    from ..fileio import require_file
    require_file(path, "artifact")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        from ..runners.trt_runner import engine_sidecar
        meta = engine_sidecar(path) or {}
        return "engine", meta.get("precision") if meta.get("precision") in ("fp32", "fp16") else None
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        first = str(e).splitlines()[0] if str(e) else "decode error"
        raise VitoptError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first}); "
                          f"engines need one of the suffixes {', '.join(ENGINE_SUFFIXES)}") from None
    if not proto.graph.node:
        raise VitoptError(f"{path} is not an ONNX model with a graph (no nodes)")
    meta = {p.key: p.value for p in proto.metadata_props}
    precision = meta.get("vitopt.precision")
    if precision not in ("fp32", "fp16"):
        from ..runners.ort_runner import onnx_precision
        precision = onnx_precision(path)
    return "onnx", precision


def _backends(text, kind: str) -> list:
    from ..runners import gpu_available
    if text is None:
        if kind == "engine":
            return ["tensorrt"]
        if gpu_available():
            return ["onnxruntime", "tensorrt"]
        print("tensorrt: skipped, an engine cannot run here (no NVIDIA GPU)", file=sys.stderr)
        return ["onnxruntime"]
    out = []
    for part in str(text).split(","):
        name = _ALIASES.get(part.strip().lower())
        if name is None:
            raise VitoptError(f"unknown backend {part.strip()!r}: choose from {', '.join(BACKENDS)}")
        if name not in out:
            out.append(name)
    if kind == "engine" and out != ["tensorrt"]:
        raise VitoptError("an engine runs in TensorRT only: use --backends tensorrt (or an .onnx artifact)")
    return out


def _runner(backend: str, kind: str, artifact: Path, batch: int, tmp: Path):
    from ..runners import OrtRunner, TrtRunner, gpu_available
    from ..runners.trt_runner import NO_GPU
    if backend == "onnxruntime":
        return OrtRunner(artifact)
    if not gpu_available():
        raise VitoptError(f"{NO_GPU}: {artifact.name} cannot run in TensorRT here "
                          "(build engines on this machine, compare them on one with a GPU)")
    if kind == "engine":
        return TrtRunner(artifact)
    from ..engine import engine_from_onnx, save_engine
    engine = tmp / "compare.engine"
    print(f"tensorrt: building a temporary engine from {artifact.name} (batch 1..{batch})", file=sys.stderr)
    save_engine(engine_from_onnx(artifact, batch_sizes=(1, batch)), engine)
    return TrtRunner(engine)


def _images(data_dir: str, count: int, loaded, runner):
    """Real images for every backend, and a one-line error when they do not fit the artifact's input."""
    x = timing_images(data_dir, count, loaded, runner)
    runner.activate()
    want = runner.sample_shape
    if want is not None and tuple(x.shape[1:]) != tuple(want):
        src = "the model's eval transform" if loaded is not None else "ImageNet preprocessing"
        raise VitoptError(f"{runner.name} expects inputs of shape {'x'.join(map(str, want))}; the images from "
                          f"{data_dir} ({src}) are {'x'.join(map(str, x.shape[1:]))}: is --model the model "
                          "this artifact was exported from?")
    return x


def _run_batched(runner, x, batch: int) -> dict:
    import numpy as np
    runner.activate()
    parts: dict = {}
    for i in range(0, x.shape[0], batch):
        out = runner.infer({runner.input_name: x[i:i + batch]})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _print_comparison(name: str, against: str, cmp: dict) -> None:
    for out, r in cmp.items():
        top1 = "-" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f} %"
        print(f"{name} vs {against} [{out}]: max |diff| {r['max_abs']:.3g}, max rel {r['max_rel']:.3g}, "
              f"median |diff| {r['median_abs']:.3g}, cosine {r['cosine']:.6f} (worst sample "
              f"{r['min_sample_cosine']:.6f}), top-1 agreement {top1}: "
              + ("PASS" if r["passed"] else "FAIL (" + "; ".join(r["failures"]) + ")"))


def run(args) -> int:
    from ..fileio import require_dir
    from ..runners import TorchRunner, compare_outputs, outputs_match
    from ..tolerances import tolerance_for

    artifact = Path(args.artifact)
    batch = positive_int(args.batch, "--batch")
    count = positive_int(args.images, "--images")
    atol, rtol = _float_or_none(args.atol, "--atol"), _float_or_none(args.rtol, "--rtol")
    require_dir(args.data, "--data directory")
    kind, recorded = artifact_kind(artifact)
    precision = args.precision or recorded or "fp32"
    tol = tolerance_for(precision).with_overrides(atol=atol, rtol=rtol)
    backends = _backends(args.backends, kind)
    if args.model is None and len(backends) < 2:
        raise VitoptError(f"nothing to compare {artifact.name} with: give --model (the PyTorch reference) or "
                          "two backends that can run here")
    loaded = None
    if args.model is not None:
        loaded = load_model_from_args(args)
    print(f"{artifact.name}: {kind}, precision {precision} (tolerance: atol {tol.atol:g}, rtol {tol.rtol:g}, "
          f"{tol.check_error_stat}, min cosine {tol.min_cosine}, min top-1 {tol.min_top1_agreement})")

    outputs, comparisons = {}, []
    with temp_dir("vitopt-compare-") as td:
        runners = [_runner(b, kind, artifact, batch, Path(td)) for b in backends]
        try:
            x = _images(args.data, count, loaded, runners[0])
            if loaded is not None:
                with TorchRunner(loaded.model) as t:
                    outputs["torch"] = _run_batched(t, x, batch)
            for r in runners:
                outputs[r.name] = _run_batched(r, x, batch)
                r.deactivate()
        finally:
            for r in runners:
                r.deactivate()
    names = list(outputs)
    reference = names[0]
    for name in names[1:]:
        cmp = compare_outputs(outputs[reference], outputs[name], tolerance=tol)
        _print_comparison(name, reference, cmp)
        comparisons.append({"backend": name, "against": reference, "outputs": cmp, "passed": outputs_match(cmp)})
    passed = all(c["passed"] for c in comparisons)
    failing = [f"{c['backend']}:{o}" for c in comparisons for o, r in c["outputs"].items() if not r["passed"]]
    print("PASS" if passed else f"FAIL: {', '.join(failing)} outside the {precision} tolerance")
    write_json_result(args.json, {
        "format": RESULT_FORMAT, "version": RESULT_VERSION, "artifact": artifact.name, "kind": kind,
        "precision": precision, "tolerance": tol.to_dict(), "reference": reference,
        "model": loaded.to_dict() if loaded else None,
        "inputs": {"images": int(x.shape[0]), "data": str(args.data), "batch": batch},
        "comparisons": comparisons, "failing": failing, "passed": passed, "environment": environment()})
    return 0 if passed else 1

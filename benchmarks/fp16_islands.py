"""FP16 DeiT-Tiny: which fp32 islands the per-node probe finds, and what each choice of islands costs.

    flock /tmp/vitopt-heavy.lock python benchmarks/fp16_islands.py [--images 491] [--probe-images 16]

For both exporters (torch.export opset 18: native LayerNormalization; legacy opset 16: decomposed
LayerNorm), the fp32 graph of the deployment chain (``optimizer.deploy``: what ``vitopt export``
ships, no exporter fallback), then ``convert_to_fp16`` four ways:
  fixed list   the fixed op list (``FP32_OPS``, normalisations and their reductions) in fp32
  probe only   only the nodes ``probe_fp16`` flags on real training images
  fixed+probe  both (the probe adds to the list)
  all fp16     no fp32 islands at all
Each is compared with the fp32 graph on real validation images (ONNX Runtime CPU) with the one
comparator and the fp16 tolerance row; the fixed+probe graph is built with TensorRT for RTX (fp16,
batch 1/8/32) to show the builder takes it. Note: ONNX Runtime's CPU provider runs several fp16
ops in fp32 internally, so its figures bound the error from below; the probe emulates fp16
rounding explicitly.

Writes benchmarks/results/fp16_islands.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import SHARED, provenance, write_result  # noqa: E402
from engine_size import dense_model  # noqa: E402

ARCH = "deit_tiny_patch16_224"
# DeployOptions per export; no fallback: a row named dynamo is the dynamo exporter's graph
EXPORTS = {"dynamo_opset18": {"exporter": "dynamo", "opset": 18, "fallback": False},
           "legacy_opset16": {"exporter": "legacy", "opset": 16, "fallback": False}}


def images(folder: Path, n: int, model):
    import numpy as np
    from optimizer.data.folder import ImageFolderData, collate, eval_transform
    ds = ImageFolderData(folder, eval_transform(model), labeled=False)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    return collate([ds[int(i)] for i in idx]).images.numpy()


def run(proto, x, batch: int = 32):
    import numpy as np
    from optimizer.runners.base import physical_cores
    from optimizer.runners.ort_runner import ort_session
    sess = ort_session(proto.SerializeToString(), threads=physical_cores())
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=491, help="validation images (default: all 491)")
    ap.add_argument("--probe-images", type=int, default=16, help="training images the probe runs on")
    ap.add_argument("--out", default="benchmarks/results/fp16_islands")
    args = ap.parse_args()
    from optimizer.deploy import DeployOptions, deploy_model
    from optimizer.engine import engine_from_onnx
    from optimizer.export import save_onnx
    from optimizer.graph import FP32_OPS, convert_to_fp16
    from optimizer.graph.fp16_probe import probe_fp16
    from optimizer.runners.compare import compare_arrays
    from optimizer.tolerances import tolerance_for

    model = dense_model()
    xv = images(SHARED / "data" / "imagenet-mini" / "val", args.images, model)
    xp = images(SHARED / "data" / "imagenet-mini" / "train", args.probe_images, model)
    tol = tolerance_for("fp16")
    rows, probes, builds = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="fp16-islands-") as td:
        for ename, kw in EXPORTS.items():
            proto = deploy_model(model, DeployOptions(**kw), description=ARCH).proto   # fp32, rules on
            ref = run(proto, xv)
            t0 = time.perf_counter()
            probe = probe_fp16(proto, xp)
            probes[ename] = {**probe.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{ename}: probe kept {probe.islands()}", file=sys.stderr, flush=True)
            ways = {"fixed list": {}, "probe only": {"fp32_ops": (), "fp32_nodes": probe.kept},
                    "fixed+probe": {"fp32_nodes": probe.kept}, "all fp16": {"fp32_ops": ()}}
            for way, opts in ways.items():
                f16 = convert_to_fp16(proto, **opts)
                r = compare_arrays(ref, run(f16, xv), tol)
                rows.append({"export": ename, "islands": way, "top1_agreement": r["top1_agreement"],
                             "cosine": r["cosine"], "min_sample_cosine": r["min_sample_cosine"],
                             "max_abs": r["max_abs"], "median_abs": r["median_abs"], "passed": r["passed"],
                             "casts": sum(1 for n in f16.graph.node if n.op_type == "Cast"),
                             "fp32_ops": sorted(FP32_OPS) if "fp32_ops" not in opts else [],
                             "probe_nodes": len(opts.get("fp32_nodes", []))})
                if way == "fixed+probe":
                    p16 = Path(td) / f"{ename}_fp16.onnx"
                    save_onnx(f16, p16)
                    try:
                        built = engine_from_onnx(p16, (1, 8, 32), builder="tensorrt_rtx")
                        builds[ename] = {"built": True, "engine_bytes": built.size_bytes,
                                         "precision": built.info["precision"],
                                         "weights_bytes": built.info["memory"]["weights_bytes"]}
                    except Exception as e:  # record why, the table says so
                        builds[ename] = {"built": False, "error": f"{type(e).__name__}: {e}"[:300]}
                print(rows[-1], file=sys.stderr, flush=True)
    prov = provenance()
    env = prov["environment"]
    res = {"command": prov["command"], "commit": prov["git_commit"], "exports": EXPORTS,
           "data": {"val": "../shared/data/imagenet-mini/val", "val_images": int(len(xv)),
                    "probe": "../shared/data/imagenet-mini/train", "probe_images": int(len(xp))},
           "tolerance": tol.to_dict(), "rows": rows, "probes": probes, "tensorrt_rtx_fp16_build": builds}
    md = ["# FP16 DeiT-Tiny: fp32 islands by op list vs by probing", "",
          f"{env.get('cpu')}, GPU: {env.get('gpu') or 'none'}; ONNX Runtime CPU; {len(xv)} val images, probe on "
          f"{len(xp)} train images (../shared/data/imagenet-mini); fp32 graphs from the deployment chain", "",
          "| export | fp32 islands | top-1 agreement | cosine | worst-sample cosine | max abs | median abs "
          "| Casts | passes fp16 row |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['export']} | {r['islands']} | {100 * r['top1_agreement']:.2f} % | {r['cosine']:.6f} "
                  f"| {r['min_sample_cosine']:.6f} | {r['max_abs']:.3g} | {r['median_abs']:.3g} | {r['casts']} "
                  f"| {r['passed']} |")
    md += ["", "Probe (nodes whose own fp16 error exceeds the tolerance or that overflow fp16):", ""]
    for ename, p in probes.items():
        worst = ", ".join(f"{w['op']} {w['rel_error']:.2g}" for w in p["worst"][:5])
        md.append(f"- {ename}: {p['probed']} nodes probed in {p['seconds']} s, kept {p['islands'] or 'none'} "
                  f"(tolerance {p['tolerance']}); largest errors: {worst}")
    md += ["", "TensorRT for RTX fp16 build of the fixed+probe graph (batch 1/8/32, CPU build):", ""]
    for ename, b in builds.items():
        md.append(f"- {ename}: " + (f"built, {b['engine_bytes'] / 1e6:.2f} MB, weights "
                                    f"{(b['weights_bytes'] or 0) / 1e6:.2f} MB" if b["built"] else
                                    f"NOT built: {b['error']}"))
    write_result(ROOT / args.out, res, md, prov=prov)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

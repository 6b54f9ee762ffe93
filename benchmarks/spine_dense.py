"""Dense baselines for issue 2: export parity, FP32/FP16 engines and ONNX Runtime / PyTorch latency.

For each model: export (dynamo, opset 18) + clean-up, parity on real val images, FP16 ONNX,
TensorRT engines (FP32 and FP16, one profile over 1/8/32) with their sidecar memory figures,
then latency at batch 1/8/32 (ONNX Runtime FP32 with spinning off, PyTorch eager).

    python benchmarks/spine_dense.py [--models deit_tiny_patch16_224,deit_small_patch16_224]

Writes benchmarks/results/spine_dense.{json,md}. Weights: ../shared/weights (DeiT-Tiny only; other
models use random weights, which changes no latency or memory figure).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="deit_tiny_patch16_224,deit_small_patch16_224")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-latency", action="store_true",
                    help="only export, parity and engines (latency: see bench_deit_tiny_cpu.md, taken uncontended)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spine_dense"))
    args = ap.parse_args()
    import onnx
    import torch
    from optimizer.bench import benchmark, environment, rows_to_dict, to_markdown
    from optimizer.counting import count_macs
    from optimizer.data import build_loader
    from optimizer.engine import available_builder, engine_from_onnx, save_engine
    from optimizer.export import check_parity, onnx_from_torch
    from optimizer.export.torch_to_onnx import save_onnx
    from optimizer.fileio import write_json, write_text
    from optimizer.graph import cleanup_graph, convert_to_fp16
    from optimizer.models.loading import load_model
    from optimizer.runners import OrtRunner, TorchRunner

    batches = [int(b) for b in args.batch.split(",")]
    results, rows_all = [], []
    tmp = Path(tempfile.mkdtemp(prefix="spine_dense_"))
    for name in args.models.split(","):
        ckpt = SHARED / "weights" / f"{name}.pth"
        loaded = load_model(name, str(ckpt) if ckpt.is_file() else None)
        model = loaded.model
        counts = count_macs(model)
        rec = {"model": name, "weights": loaded.weights, "params": counts.params, "gmacs": round(counts.gmacs, 4)}
        p32 = tmp / f"{name}.onnx"
        info = onnx_from_torch(model, p32, opset=18)
        proto, rep = cleanup_graph(onnx.load(str(p32)))
        save_onnx(proto, p32)
        rec["export"] = {"exporter": info.exporter, "seconds": info.seconds, "nodes_before": rep.nodes_before,
                         "nodes_after": rep.nodes_after, "bytes": p32.stat().st_size}
        val = SHARED / "data" / "imagenet-mini" / "val"
        if val.is_dir():
            x = next(iter(build_loader(val, model, batch_size=32, workers=0, limit=32))).images
            what = "32 real val images"
        else:
            x, what = torch.randn(8, 3, 224, 224), "8 random inputs"
        par = check_parity(model, p32, x, atol=1e-4, raise_on_fail=False)
        rec["parity_fp32"] = {**par.to_dict(), "inputs": what}
        p16 = tmp / f"{name}.fp16.onnx"
        save_onnx(convert_to_fp16(onnx.load(str(p32))), p16)
        par16 = check_parity(model, p16, x, atol=1.0, raise_on_fail=False)
        rec["parity_fp16_onnx"] = {**par16.to_dict(), "inputs": what}
        rec["engines"] = {}
        if available_builder():
            for prec, src in (("fp32", p32), ("fp16", p16)):
                t0 = time.perf_counter()
                built = engine_from_onnx(src, batch_sizes=batches, fp16=prec == "fp16")
                save_engine(built, tmp / f"{name}.{prec}.engine")
                mem = built.info.get("memory", {})
                rec["engines"][prec] = {"builder": built.info["builder"], "build_seconds": round(time.perf_counter() - t0, 2),
                                        "engine_bytes": built.size_bytes, "weights_bytes": mem.get("weights_bytes"),
                                        "activation_bytes": mem.get("activation_bytes"), "memory_source": mem.get("source"),
                                        "profile": built.info["profile"]}
        rows = []
        if not args.no_latency:
            with OrtRunner(p32) as r:
                rows = benchmark(r, batches, warmup=5, iters=args.iters)
            with TorchRunner(model) as r:
                rows += benchmark(r, batches, warmup=5, iters=args.iters)
        for row in rows:
            row.name = f"{name} {row.backend}"
        rows_all += rows
        rec["latency"] = rows_to_dict(rows)["rows"]
        results.append(rec)
        print(json.dumps({k: rec[k] for k in ("model", "params", "gmacs", "parity_fp32", "engines")}, indent=1), flush=True)
    md = ["# Dense baselines (issue 2)", "",
          f"Machine: {environment().get('cpu', '?')}, 2 cores, no GPU. Command: `python benchmarks/spine_dense.py --no-latency`. "
          "MACs = multiply-accumulates per 224 px image.", "",
          "| model | weights | params M | GMACs | FP32 parity max abs diff | FP16 ONNX cosine | engine | size MB | weights MB | activations MB | build s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in results:
        for prec, e in (rec["engines"] or {"-": {}}).items():
            mb = lambda v: f"{v / 2**20:.1f}" if v else "-"
            md.append(f"| {rec['model']} | {rec['weights']} | {rec['params'] / 1e6:.2f} | {rec['gmacs']:.2f} | "
                      f"{rec['parity_fp32']['max_abs_diff']:.2e} | {rec['parity_fp16_onnx']['cosine']:.5f} | "
                      f"{prec} ({(e.get('builder') or {}).get('package', '-')}) | {mb(e.get('engine_bytes'))} | "
                      f"{mb(e.get('weights_bytes'))} | {mb(e.get('activation_bytes'))} | {e.get('build_seconds', '-')} |")
    md += ["", "Engine memory comes from the TensorRT-for-RTX builder log (no GPU here); engines cannot run without one.",
           "", "## Latency (median of timed iterations; ONNX Runtime FP32, intra-op threads = physical cores, spinning off)", "",
           to_markdown(rows_all) if rows_all else "not measured in this run (--no-latency): see bench_deit_tiny_cpu.md"]
    write_json(args.out + ".json", {"environment": environment(), "results": results})
    write_text(args.out + ".md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

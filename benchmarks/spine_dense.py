"""Dense baselines for issue 2: export parity, FP32/FP16 engines and ONNX Runtime / PyTorch latency.

For each model: the product's deployment chain (``optimizer.deploy``: dynamo export, opset 18,
graph rules, FP32 and FP16, each parity-gated on real val images) — the files ``vitopt export``
ships —, TensorRT engines (FP32 and FP16, one profile over 1/8/32) with their sidecar memory
figures, then latency at batch 1/8/32 (ONNX Runtime FP32 with spinning off, PyTorch eager).

    python benchmarks/spine_dense.py [--models deit_tiny_patch16_224,deit_small_patch16_224]

Writes benchmarks/results/spine_dense.{json,md} (with the command, commit and environment:
benchmarks/_harness.py). Weights: ../shared/weights (DeiT-Tiny only; other models use random
weights, which changes no latency or memory figure).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _harness import SHARED, scrub, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="deit_tiny_patch16_224,deit_small_patch16_224")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-latency", action="store_true",
                    help="only export, parity and engines (latency: see bench_deit_tiny_cpu.md, taken uncontended)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spine_dense"))
    args = ap.parse_args()
    from optimizer.bench import benchmark, environment, rows_to_dict, to_markdown
    from optimizer.counting import count_macs
    from optimizer.deploy import DeployOptions, deploy_models, parity_inputs, write_onnx
    from optimizer.engine import available_builder, engine_from_onnx, save_engine
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
        p32, p16 = tmp / f"{name}.onnx", tmp / f"{name}.fp16.onnx"
        val = SHARED / "data" / "imagenet-mini" / "val"
        x = parity_inputs(model, str(val) if val.is_dir() else None, 32)
        # parity gates: fp32 within 1e-4 of PyTorch, fp16 by its cosine (the chain raises past them)
        deployed = deploy_models(model, DeployOptions(opset=18), x, ("fp32", "fp16"), description=loaded.describe())
        write_onnx(deployed["fp32"], p32)
        write_onnx(deployed["fp16"], p16)
        rep = deployed["fp16"].report
        rec["export"] = {"exporter": rep["export"]["exporter"], "seconds": rep["export"]["seconds"],
                         "nodes_before": rep["cleanup"]["nodes_before"], "nodes_after": rep["cleanup"]["nodes_after"],
                         "bytes": p32.stat().st_size}
        rec["parity_fp32"] = {**rep["parity_cleaned"], "inputs": x.source}
        rec["parity_fp16_onnx"] = {**rep["parity_fp16"], "inputs": x.source}
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
          f"Machine: {environment().get('cpu', '?')}, {environment().get('physical_cores', '?')} cores, "
          f"GPU: {environment().get('gpu') or 'none'}. ONNX from the deployment chain (what `vitopt export` ships). "
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
    write_result(args.out, {"results": results}, md)
    print("\n".join(scrub(md)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving cost and batching gain: DeiT-Tiny dense and slim 0.75 through the bundled Triton server.

Per variant, one ONNX file (exported by ``optimizer.serve.source.onnx_for_model``) is

- run in process by ONNX Runtime at batch 1/4/16 (``optimizer.bench.benchmark``), and
- served by the tritonserver bundled with nvidia-pytriton as a ``python-ort`` model, twice in one
  server: without dynamic batching and with it (preferred sizes from the knee of the in-process
  result, ``optimizer.serve.batching``), under 1/4/16 concurrent single-image requests
  (``optimizer.bench.served_benchmark``, HTTP on loopback).

Served windows are interleaved (no-batching, batching, in turn, ``--rounds`` times per concurrency)
and reported as medians over rounds, so machine noise hits both alike. The client threads share
the CPU with the server: on a 2-core machine that is part of what is measured.

    flock /tmp/vitopt-heavy.lock python benchmarks/serve.py --slim /tmp/slim75      # ~10 min, 2 CPU cores

``--no-dense --append`` measures only the slim variant and adds it to an existing result (each
variant records its own command, commit and environment).

``--slim DIR``: the output of ``vitopt compress --method slim --macs 0.75 --model deit_tiny_patch16_224
--checkpoint ../shared/weights/deit_tiny_patch16_224.pth --calib ../shared/data/imagenet-mini/train -o DIR``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import SHARED, commit_label, provenance, relative, write_result  # noqa: E402
from optimizer.bench import benchmark, served_benchmark  # noqa: E402
from optimizer.cli.common import parse_batches  # noqa: E402
from optimizer.runners import OrtRunner  # noqa: E402
from optimizer.runners.triton_runner import TritonRunner  # noqa: E402
from optimizer.serve import ServeConfig, knee_batch_sizes, prepare_repository  # noqa: E402
from optimizer.serve.batching import queue_delay_us  # noqa: E402
from optimizer.serve.server import TritonServer  # noqa: E402
from optimizer.serve.source import onnx_for_model  # noqa: E402

WEIGHTS = SHARED / "weights" / "deit_tiny_patch16_224.pth"


def _rel(p) -> str:
    """A path as results write it (``_harness.relative``: relative to the repository, no machine paths)."""
    return relative(str(Path(p).resolve()))


def _median_row(rows):
    return {"p50_ms": statistics.median(r.p50_ms for r in rows), "p99_ms": statistics.median(r.p99_ms for r in rows),
            "throughput_ips": statistics.median(r.throughput_ips for r in rows), "requests": sum(r.iters for r in rows),
            "rounds": len(rows)}


def run_variant(label, onnx_path, args, tmp: Path) -> dict:
    levels = parse_batches(args.concurrency)
    print(f"[{label}] in-process ONNX Runtime at batch {levels}", file=sys.stderr)
    ort_rows = benchmark(OrtRunner(onnx_path, threads=args.threads), levels, warmup=5, iters=args.requests,
                         min_time_s=args.min_time)
    knee, preferred = knee_batch_sizes({r.batch: r.throughput_ips for r in ort_rows}, max(levels))
    delay = queue_delay_us(next(r.p50_ms for r in ort_rows if r.batch == 1) if 1 in levels else None)
    repo = tmp / f"repo_{label}"
    names = {"no batching": f"{label}_plain", "dynamic batching": f"{label}_batched"}
    prepare_repository(onnx_path, repo, ServeConfig(names["no batching"], platform="python-ort",
                                                     max_batch=max(levels), dynamic_batching=False, preferred=(),
                                                     threads=args.threads))
    prepare_repository(onnx_path, repo, ServeConfig(names["dynamic batching"], platform="python-ort",
                                                     max_batch=max(levels), preferred=tuple(preferred),
                                                     max_queue_delay_us=delay, threads=args.threads))
    served = {mode: {c: [] for c in levels} for mode in names}
    with TritonServer(repo, list(names.values()), timeout_s=300) as server:
        for c in levels:
            for rnd in range(args.rounds):
                order = list(names) if rnd % 2 == 0 else list(reversed(names))
                for mode in order:
                    print(f"[{label}] {mode}: concurrency {c}, round {rnd + 1}/{args.rounds}", file=sys.stderr)
                    rows = served_benchmark(lambda n=names[mode]: TritonRunner(server.http_url, n), (1,), (c,),
                                            warmup=3, min_requests=args.requests, min_time_s=args.min_time,
                                            max_requests=100000, max_time_s=args.max_time, name=names[mode])
                    served[mode][c] += rows
    return {"label": label, "onnx": _rel(onnx_path), "knee": knee, "preferred_batch_size": preferred,
            "max_queue_delay_us": delay,
            "in_process": [r.to_dict() for r in ort_rows],
            "served": {mode: {str(c): {"median": _median_row(rows), "rows": [r.to_dict() for r in rows]}
                              for c, rows in per.items()} for mode, per in served.items()}}


def to_markdown(result: dict) -> list:
    """The report's lines; each variant says its own command, commit and machine (``--append`` keeps
    variants of earlier runs), ``write_result`` adds this run's Reproduce section."""
    lines = ["# Serving DeiT-Tiny through Triton (bundled server, python-ort) vs in-process ONNX Runtime", "",
             "Served: single-image HTTP requests from C client threads on the same machine; medians over "
             "interleaved rounds (no batching / dynamic batching in turn). In process: one caller, batch = C "
             "images. The same ONNX Runtime thread count in process and per server instance.", ""]
    for v in result["variants"]:
        env = v["environment"]
        lines += [f"## {v['label']} ({v['onnx']})", "",
                  f"Command: `{v['command']}`  ", f"Commit: {v['commit']}  ",
                  f"Machine: {env['cpu']} ({env['usable_cores']} usable cores), load avg at start "
                  f"{env.get('load_avg_1m')}; onnxruntime {env['versions'].get('onnxruntime')}, tritonserver 2.51 "
                  f"(nvidia-pytriton); {v['threads']} ONNX Runtime threads; {v['rounds']} rounds, windows of "
                  f">= {v['requests_min']} requests and >= {v['min_time_s']:g} s, <= {v['max_time_s']:g} s.", "",
                  f"Knee of the in-process curve: batch {v['knee']}; preferred_batch_size "
                  f"{v['preferred_batch_size'] or 'none'}, max_queue_delay {v['max_queue_delay_us']} µs.", "",
                  "| C | in-process batch C: p50 ms | img/s | served, no batching: p50 ms | p99 ms | img/s "
                  "| served, dynamic batching: p50 ms | p99 ms | img/s | batching gain | serving cost at C=1 |",
                  "|" + "---|" * 11]
        ort = {r["batch"]: r for r in v["in_process"]}
        base1 = ort.get(1)
        for c, plain in v["served"]["no batching"].items():
            pm, bm = plain["median"], v["served"]["dynamic batching"][c]["median"]
            o = ort[int(c)]
            cost = (f"{pm['p50_ms'] / base1['p50_ms']:.2f}x p50" if c == "1" and base1 else "")
            lines.append(f"| {c} | {o['p50_ms']:.2f} | {o['throughput_ips']:.1f} | {pm['p50_ms']:.2f} | "
                         f"{pm['p99_ms']:.2f} | {pm['throughput_ips']:.1f} | {bm['p50_ms']:.2f} | {bm['p99_ms']:.2f} | "
                         f"{bm['throughput_ips']:.1f} | {bm['throughput_ips'] / pm['throughput_ips']:.2f}x | {cost} |")
        lines.append("")
    lines += ["batching gain = served throughput with / without dynamic batching at the same concurrency; "
              "serving cost = served p50 / in-process p50 at one image."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slim", help="slim 0.75 model directory from `vitopt compress` (omit: dense only)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=30, help="at least this many requests per window")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--max-time", type=float, default=20.0)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense variant")
    ap.add_argument("--append", action="store_true", help="add to (replace the same labels in) an existing result")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve"))
    args = ap.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"needs the DeiT-Tiny weights at ../shared/weights ({_rel(WEIGHTS)})")
    prov = provenance()
    variants = []
    with tempfile.TemporaryDirectory(prefix="vitopt-serve-bench-") as td:
        tmp = Path(td)
        todo = [] if args.no_dense else [("dense", "deit_tiny_patch16_224", str(WEIGHTS))]
        if args.slim:
            todo.append(("slim075", args.slim, None))
        for label, model, ckpt in todo:
            info = onnx_for_model(model, ckpt, tmp / f"{label}.onnx")
            variants.append(run_variant(label, info["onnx"], args, tmp))
            variants[-1]["onnx"] = f"exported from {model if not Path(model).exists() else _rel(model)}"
    for v in variants:   # per variant: --append keeps variants measured by earlier runs
        v.update(command=prov["command"], commit=commit_label(prov), environment=prov["environment"],
                 threads=args.threads, rounds=args.rounds,
                 requests_min=args.requests, min_time_s=args.min_time, max_time_s=args.max_time)
    result = {"format": "vitopt-serve-bench", "version": 1, "variants": variants}
    if args.append and Path(args.out + ".json").is_file():
        old = json.loads(Path(args.out + ".json").read_text())
        labels = {v["label"] for v in variants}
        result["variants"] = [v for v in old.get("variants", []) if v["label"] not in labels] + variants
    md = to_markdown(result)
    write_result(args.out, result, md, prov=prov)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peer check: vitopt's graph rules against onnxslim (issue 13, item 4). A benchmark, not the product.

onnxslim is NOT a vitopt dependency; install it into the environment for this script only:

    pip install onnxslim
    flock /tmp/vitopt-heavy.lock python benchmarks/onnxslim_peer.py [--models deit_tiny_patch16_224,deit_small_patch16_224]

For each model (DeiT-Tiny with ../shared/weights when present, DeiT-Small with random weights: the
graph structure and the latency do not depend on the values), variant and exporter (dynamo and the
legacy TorchScript one, opset 18):

* ``raw`` — the exporter's graph of the model as it is (``optimizer.deploy.export_step``, no fallback,
  no rules);
* ``vitopt`` — the deployment chain at its defaults (``optimizer.deploy.deploy_model``: the methods'
  export forms, export, default graph rules, parity gate; what ``vitopt export`` ships);
* ``onnxslim`` — ``onnxslim.slim`` on the raw graph;
* ``vitopt+onnxslim`` — onnxslim after vitopt: anything it still removes is something vitopt missed.

Variants are built by structural surgery with seeded structures (no calibration, seconds to build):
``slim`` = ``optimizer.methods.slim.slicing.rebuild`` with every block at 3/4 of its heads (at least 1)
and MLP width, and token gathers keeping 3/4 of the tokens after block 4 and 1/2 after block 8;
``lowrank`` = ``optimizer.methods.lowrank.rebuild`` with every block Linear factorised as two pairs
of ranks (min(in, out)/4, 8) and random factors (``raw`` and ``onnxslim`` see the two-pair form as
exported; the chain merges the pairs in PyTorch first, the lowrank method's export form).
Random-weight models get their 1-D parameters perturbed, since timm initialises biases to zero and
``x + 0`` is not what a trained model exports. Latency: ONNX Runtime CPU, 2 threads, spinning off,
the four graphs timed round-robin in one run (``optimizer.bench.interleaved_latency``), medians. Seconds:
the graph passes only (vitopt: its rules pass; onnxslim: ``onnxslim.slim``).

Writes benchmarks/results/onnxslim_peer.{json,md}.
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

EXPORTERS = {"dynamo": "dynamo", "torchscript": "legacy"}   # --exporters name -> DeployOptions.exporter


def slim_structure(model) -> dict:
    """A seeded slim structure: 3/4 heads and MLP width per block; tokens 3/4 after block 4, 1/2 after 8."""
    import numpy as np
    rng = np.random.default_rng(0)
    n_tok = model.patch_embed.num_patches + 1
    blocks, kept = [], list(range(n_tok))
    for i, b in enumerate(model.blocks):
        index = None
        target = {4: (3 * n_tok) // 4, 8: n_tok // 2}.get(i)
        if target is not None:
            keep_patches = sorted(rng.choice(np.arange(1, len(kept)), size=target - 1, replace=False).tolist())
            index = [0] + keep_patches                       # the class token always stays
            kept = [kept[j] for j in index]
        heads = max(1, (3 * b.attn.num_heads) // 4)
        blocks.append({"num_heads": heads, "head_dim": b.attn.head_dim, "scale": b.attn.scale,
                       "mlp_hidden": (3 * b.mlp.fc1.out_features) // 4, "token_index": index,
                       "token_positions": None if index is None and len(kept) == n_tok else kept})
    return {"format": "slim-structure", "version": 1, "blocks": blocks}


def build_variant(name: str, variant: str, checkpoint):
    import torch
    from optimizer.models.loading import load_model
    model = load_model(name, checkpoint).model.eval()
    if variant == "slim":
        from optimizer.methods.slim.slicing import rebuild
        model = rebuild(model, slim_structure(model))
    elif variant == "lowrank":
        from optimizer.methods.lowrank import rebuild
        spec = {}
        for path, m in model.named_modules():
            if path.startswith("blocks.") and isinstance(m, torch.nn.Linear):
                r = min(m.in_features, m.out_features) // 4
                spec[path] = {"in": m.in_features, "out": m.out_features, "ranks": [r, 8], "bias": m.bias is not None}
        model = rebuild(model, spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():  # rebuilt layers start from arbitrary values: give each a small random one
            if variant != "dense" and type(mod).__name__ in ("LowRankLinear", "Linear"):
                for p in mod.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        if checkpoint is None:  # timm initialises biases to 0 (x + 0 would be an artefact): perturb them
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def slim_with_onnxslim(proto):
    """``onnxslim.slim`` on a copy: it edits the proto it is given in place."""
    import onnx
    import onnxslim
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return onnxslim.slim(copy)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="deit_tiny_patch16_224,deit_small_patch16_224")
    ap.add_argument("--variants", default="dense,slim,lowrank")
    ap.add_argument("--exporters", default="dynamo,torchscript")
    ap.add_argument("--batch", default="1,8", help="batch sizes to time; 'none' records node counts only")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onnxslim_peer"))
    args = ap.parse_args()
    import onnxslim
    from optimizer.bench import interleaved_latency
    from optimizer.deploy import DeployOptions, deploy_model, export_step
    from optimizer.export import save_onnx
    from optimizer.graph import op_histogram
    from optimizer.runners.ort_runner import OrtRunner
    batches = [] if args.batch == "none" else [int(b) for b in args.batch.split(",")]
    unknown = [e for e in args.exporters.split(",") if e not in EXPORTERS]
    if unknown:
        ap.error(f"unknown exporters {unknown}: choose from {', '.join(EXPORTERS)}")
    prov = provenance()
    weights = SHARED / "weights" / "deit_tiny_patch16_224.pth"
    rows, env = [], prov["environment"]
    with tempfile.TemporaryDirectory(prefix="vitopt-slim-peer-") as tmp:
        for name in args.models.split(","):
            ckpt = str(weights) if name == "deit_tiny_patch16_224" and weights.is_file() else None
            for variant in args.variants.split(","):
                model = build_variant(name, variant, ckpt)
                for exporter in args.exporters.split(","):
                    tag = f"{name}/{variant}/{exporter}"
                    print(f"== {tag}", flush=True)
                    opts = DeployOptions(exporter=EXPORTERS[exporter], fallback=False)
                    graphs, seconds = {"raw": export_step(model, opts, name)[0]}, {}
                    deployed = deploy_model(model, opts, description=name)
                    graphs["vitopt"], report = deployed.proto, deployed.report["cleanup"]
                    seconds["vitopt"] = report["seconds"]
                    t0 = time.perf_counter()
                    graphs["onnxslim"] = slim_with_onnxslim(graphs["raw"])
                    seconds["onnxslim"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    graphs["vitopt+onnxslim"] = slim_with_onnxslim(graphs["vitopt"])
                    seconds["vitopt+onnxslim"] = time.perf_counter() - t0
                    paths = {}
                    for k, g in graphs.items():
                        paths[k] = Path(tmp) / f"{name}_{variant}_{exporter}_{k.replace('+', '_')}.onnx"
                        save_onnx(g, paths[k], check=False)
                    hist = {k: op_histogram(g) for k, g in graphs.items()}
                    after_v, after_vs = hist["vitopt"], hist["vitopt+onnxslim"]
                    diff = {op: after_vs.get(op, 0) - after_v.get(op, 0) for op in set(after_v) | set(after_vs)
                            if after_vs.get(op, 0) != after_v.get(op, 0)}
                    lat = {"rows": []}
                    if batches:
                        lat = interleaved_latency({k: OrtRunner(p, threads=2, allow_spinning=False, name=k)
                                                   for k, p in paths.items()}, batches, rounds=args.rounds,
                                                  iters_per_round=args.iters, warmup=2)
                        env = lat["environment"]
                    p50 = {f"{r['name']}@{r['batch']}": r["p50_ms"] for r in lat["rows"]}
                    row = {"model": name, "variant": variant, "exporter": exporter,
                           "weights": "../shared/weights/deit_tiny_patch16_224.pth" if ckpt else "random",
                           "nodes": {k: sum(h.values()) for k, h in hist.items()},
                           "histograms": hist, "onnxslim_after_vitopt_changes": diff,
                           "vitopt_rules": {k: v for k, v in report["rules"].items() if v},
                           "vitopt_rolled_back": report["rolled_back"], "vitopt_check_failures": report["failures"],
                           "seconds": {k: round(v, 2) for k, v in seconds.items()},
                           "latency_p50_ms": p50, "latency": lat["rows"]}
                    print(f"   nodes {row['nodes']}  onnxslim after vitopt: {diff or 'no change'}", flush=True)
                    print(f"   p50 ms {p50}", flush=True)
                    rows.append(row)
    env = {**env, "onnxslim": onnxslim.__version__}
    result = {"command": prov["command"], "git_commit": prov["git_commit"], "environment": env, "batches": batches,
              "rounds": args.rounds, "iters_per_round": args.iters, "rows": rows}
    write_result(args.out, result, to_markdown(result), prov=prov)
    print(f"wrote {args.out}.json / .md")
    return 0


def to_markdown(res: dict) -> list:
    """The report's lines (``write_result`` adds the Reproduce section: command, commit, environment)."""
    env = res["environment"]
    v = env.get("versions", {})
    lines = ["# vitopt graph rules vs onnxslim", "",
             f"Machine: {env.get('cpu')} ({env.get('usable_cores')} usable cores), {env.get('os')}; "
             f"onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, torch {v.get('torch')}, "
             f"onnxslim {env.get('onnxslim')}", "",
             ("ONNX Runtime CPU, 2 threads, spinning off; the four graphs of a row timed round-robin in one run "
              f"({res['rounds']} rounds x {res['iters_per_round']} iterations per batch), p50 in ms. "
              if res["batches"] else "Node counts only. ")
             + "Weights: DeiT-Tiny from ../shared/weights, DeiT-Small random (structure and latency do not "
             "depend on the values).", "",
             "## Node counts", "",
             "| model | variant | exporter | raw | vitopt | onnxslim | vitopt+onnxslim | onnxslim after vitopt changes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        n = r["nodes"]
        ch = ", ".join(f"{k} {v:+d}" for k, v in sorted(r["onnxslim_after_vitopt_changes"].items())) or "none"
        lines.append(f"| {r['model']} | {r['variant']} | {r['exporter']} | {n['raw']} | {n['vitopt']} | "
                     f"{n['onnxslim']} | {n['vitopt+onnxslim']} | {ch} |")
    b = res["batches"]
    lines += ["", "## Latency (p50 ms)", ""] if b else ["", "(latency not measured: --batch none)"]
    hdr = "| model | variant | exporter | " + " | ".join(f"{g} b{x}" for x in b
                                                         for g in ("raw", "vitopt", "onnxslim", "vitopt+onnxslim"))
    lines += [hdr + " |", "|---|---|---|" + "---:|" * (4 * len(b))] if b else []
    for r in (res["rows"] if b else []):
        p = r["latency_p50_ms"]
        cells = [f"{p.get(f'{g}@{x}', float('nan')):.2f}" for x in b
                 for g in ("raw", "vitopt", "onnxslim", "vitopt+onnxslim")]
        lines.append(f"| {r['model']} | {r['variant']} | {r['exporter']} | " + " | ".join(cells) + " |")
    lines += ["", "## vitopt rules that fired", ""]
    for r in res["rows"]:
        lines.append(f"- {r['model']} {r['variant']} {r['exporter']}: "
                     + ", ".join(f"{k} x{v}" for k, v in r["vitopt_rules"].items())
                     + (f"; rolled back: {r['vitopt_rolled_back']}" if r["vitopt_rolled_back"] else "")
                     + (f"; check failures: {r['vitopt_check_failures']}" if r["vitopt_check_failures"] else ""))
    return lines


if __name__ == "__main__":
    sys.exit(main())

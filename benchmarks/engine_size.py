"""Where a TensorRT engine's bytes go, per compressed DeiT-Tiny variant: weights vs everything else.

    flock /tmp/vitopt-heavy.lock python benchmarks/engine_size.py [--variants dense,slim_75,...]

For each variant: parameter bytes (fp32), ONNX bytes (the deployment chain: what ``vitopt export`` ships),
then a TensorRT-for-RTX engine (CPU build, strongly typed, fp32, one profile over batch 1/8/32)
through ``optimizer.engine.engine_from_onnx(..., layer_info=True)``: engine bytes, the builder
log's weights and activation memory, and from its per-layer report the number of layers, of
distinct kernels (code the engine carries once per distinct kernel) and the bytes of the constants
the layers read. ``engine - weights`` is what the file holds besides weights.

Variants (weights are not trained here: sizes depend on shapes, not values):
  dense           DeiT-Tiny (../shared weights when present)
  slim_75/_60/_50 the per-block widths and token counts the slim search chose at 0.75/0.6/0.5 of the
                  MACs (benchmarks/results/slim_deit_tiny.json), rebuilt with ``slim.slicing.rebuild``;
                  kept tokens: the class token plus evenly spaced patch tokens (seeded structure)
  gates_data_k    USDC gates on DeiT-Tiny (group 32, gate nets seeded), K counted in the graph
  gates_fixed_k   the same model exported with each module's calibrated mean K (static shapes)

Each ONNX file is built twice: for the builder's default set of GPU architectures and for one
(``--compute-capability``, default SM89), which shows how much of "engine other" is per-architecture
kernel code.

Writes benchmarks/results/engine_size.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import SHARED, deploy_to_file, provenance, write_result  # noqa: E402

ARCH = "deit_tiny_patch16_224"
SLIM_RESULTS = ROOT / "benchmarks" / "results" / "slim_deit_tiny.json"
VARIANTS = ("dense", "slim_75", "slim_60", "slim_50", "gates_data_k", "gates_fixed_k")
BATCHES = (1, 8, 32)


def dense_model():
    from optimizer.models.loading import load_model
    ckpt = SHARED / "weights" / f"{ARCH}.pth"
    return load_model(ARCH, str(ckpt) if ckpt.is_file() else None).model.eval()


def slim_structure(widths: list, num_tokens: int = 197) -> dict:
    """A slim structure with the searched widths; token sets nested over depth (class token first)."""
    import numpy as np
    blocks, prev = [], list(range(num_tokens))
    for w in widths:
        k = int(w["tokens"])
        if k == len(prev):
            keep = prev
        else:  # class token + evenly spaced patch tokens of the previous block's set
            patches = prev[1:]
            picks = np.unique(np.linspace(0, len(patches) - 1, k - 1).round().astype(int))
            keep = [prev[0]] + [patches[i] for i in picks]
        pos = {t: i for i, t in enumerate(prev)}
        blocks.append({"num_heads": int(w["heads"]), "head_dim": int(w["head_dim"]), "scale": 64 ** -0.5,
                       "mlp_hidden": int(w["mlp"]), "token_index": None if keep == prev else [pos[t] for t in keep],
                       "token_positions": None if keep == list(range(num_tokens)) else list(keep)})
        prev = keep
    return {"format": "slim-structure", "version": 1, "blocks": blocks}


def slim_model(name: str):
    from optimizer.methods.slim.slicing import rebuild
    widths = json.loads(SLIM_RESULTS.read_text())["compress"][name]["widths"]
    import torch
    torch.manual_seed(0)
    return rebuild(dense_model(), slim_structure(widths)).eval()


def gated_model():
    import torch
    from optimizer.methods.gates import gate_model, gated_modules
    model = gate_model(copy.deepcopy(dense_model()), group_size=32, gate_hidden=32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in gated_modules(model):
            if m.gate_net is not None:
                for p in m.gate_net.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
            m.mean_active = m.dynamic_units / 2
    return model


def export(name: str, model, path: Path) -> dict:
    """The deployment chain (what ``vitopt export`` ships) into ``path``; gated models with the
    gates' export settings (legacy exporter, K as the variant says, parity atol 1e-3: a gate score at
    its threshold may decide differently in ONNX Runtime and PyTorch). Returns the chain's report."""
    if name.startswith("gates"):
        return deploy_to_file(model, path, exporter="legacy", fallback=False, atol=1e-3,
                              gates_k="fixed" if name.endswith("fixed_k") else "data")
    return deploy_to_file(model, path)


def initializer_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper
    return int(sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer))


def measure(name: str, work: Path, capabilities: list) -> list:
    """One row per compute-capability setting (None = the builder's default set of GPU architectures)."""
    from optimizer.engine import engine_from_onnx
    model = {"dense": dense_model, "gates_data_k": gated_model, "gates_fixed_k": gated_model}.get(
        name, lambda: slim_model(name))()
    params = sum(p.numel() for p in model.parameters())
    path = work / f"{name}.onnx"
    t0 = time.perf_counter()
    report = export(name, model, path)
    export_s = time.perf_counter() - t0
    rows = []
    for cc in capabilities:
        built = engine_from_onnx(path, BATCHES, builder="tensorrt_rtx", layer_info=True, compute_capability=cc)
        mem, layers = built.info["memory"], built.info.get("layers") or {}
        rows.append({"variant": name, "compute_capability": built.info["compute_capability"], "params": params,
                     "params_bytes": 4 * params, "onnx_bytes": path.stat().st_size,
                     "onnx_initializer_bytes": initializer_bytes(path), "engine_bytes": built.size_bytes,
                     "engine_weights_bytes": mem["weights_bytes"], "activation_bytes": mem["activation_bytes"],
                     "engine_other_bytes": built.size_bytes - (mem["weights_bytes"] or 0),
                     "layers": layers.get("layers"), "kernels": layers.get("kernels"),
                     "layer_constant_bytes": layers.get("constant_bytes"), "layer_types": layers.get("layer_types"),
                     "exporter": report["export"]["exporter"], "export_s": round(export_s, 1),
                     "build_s": built.info["build_seconds"], "builder": built.info["builder"]})
    return rows


def to_markdown(res: dict) -> list:
    """The report's lines (``write_result`` adds the Reproduce section: command, commit, environment)."""
    rows = res["rows"]
    dense = {r["compute_capability"]: r for r in rows if r["variant"] == "dense"}
    mb = lambda b: "-" if b is None else f"{b / 1e6:.2f}"  # noqa: E731
    out = ["# TensorRT engine size per variant (DeiT-Tiny, TensorRT for RTX, fp32, batch 1/8/32)", "",
           "ONNX files from the deployment chain (``optimizer.deploy``: export, graph rules, parity gate), "
           f"weights: {res['weights']}.", "",
           "| variant | GPU archs | params MB | ONNX MB | engine MB | engine weights MB | engine other MB "
           "| activation MB | layers | distinct kernels | engine / dense |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = dense.get(r["compute_capability"])
        ratio = f"{r['engine_bytes'] / d['engine_bytes']:.3f}" if d else "-"
        out.append(f"| {r['variant']} | {r['compute_capability']} | {mb(r['params_bytes'])} | {mb(r['onnx_bytes'])} "
                   f"| {mb(r['engine_bytes'])} | {mb(r['engine_weights_bytes'])} | {mb(r['engine_other_bytes'])} "
                   f"| {mb(r['activation_bytes'])} | {r['layers']} | {r['kernels']} | {ratio} |")
    out += ["", "engine other = engine bytes - the builder log's 'Total Weights Memory'; distinct kernels = "
            "distinct tactic / generated-kernel names in the builder's per-layer report (DETAILED profiling "
            "verbosity).", ""]
    out += res.get("notes", [])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results/engine_size", help="results path without suffix")
    ap.add_argument("--work", default=None, help="folder for the ONNX files (default: a temporary one)")
    ap.add_argument("--compute-capability", default="SM89",
                    help="also build for this one GPU architecture (TensorRT for RTX name; 'none': default set only)")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    ccs = [None] + ([] if args.compute_capability.lower() == "none" else [args.compute_capability])
    rows = []
    with tempfile.TemporaryDirectory(prefix="engine-size-") as td:
        work = Path(args.work or td)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            for row in measure(name, work, ccs):
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "layer_types"}), file=sys.stderr, flush=True)
    prov = provenance()
    res = {"command": prov["command"], "commit": prov["git_commit"],
           "weights": "../shared/weights/deit_tiny_patch16_224.pth" if (SHARED / "weights").is_dir() else "random",
           "rows": rows}
    write_result(ROOT / args.out, res, to_markdown(res), prov=prov)
    print("\n".join(to_markdown(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

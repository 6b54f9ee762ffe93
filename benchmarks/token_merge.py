"""Token merging (ToMe) on DeiT-Tiny: merge alone, slim with token_mode merge vs drop, export and latency.

Rows (val images, agreement with the dense model's top-1 and its standard error, top-1, MACs):
  merge alone at r = 4 / 6 / 8 / 10 tokens per block (no data, no training);
  slim at 0.75 and 0.5 MACs with token_mode drop and merge, from one mask search (the demo sweep's
  cached search is reused when --search-dir names a copy of it; otherwise it runs), no recovery;
  export of the r = 8 model through ``deploy_model``: ONNX Runtime vs PyTorch on val images at
  batch 1 / 2 / 8 (max |diff|, top-1 agreement), TensorRT for RTX engine builds (fp32, fp16);
  ONNX Runtime latency at batch 8, interleaved in one run, ratios vs dense.

    python benchmarks/token_merge.py --stages eval,slim,export \\
        --weights ../shared/weights/deit_tiny_patch16_224.pth \\
        --train ../shared/data/imagenet-mini/train --val ../shared/data/imagenet-mini/val --search-dir DIR
    flock /tmp/vitopt-heavy.lock python benchmarks/token_merge.py --stages latency,report ...

Stages keep their results in --work/state.json, so they can run as separate commands (also in other
work dirs at the same time: ``--include OTHER/state.json`` joins their slim rows and latency).
Results: benchmarks/results/token_merge.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _harness import deploy_to_file, provenance, write_result  # noqa: E402
from optimizer.compress import CompressContext, compress  # noqa: E402
from optimizer.compress.config import RecoveryConfig  # noqa: E402
from optimizer.counting import count_macs  # noqa: E402
from optimizer.fileio import write_json  # noqa: E402
from optimizer.methods.merge import MergeConfig  # noqa: E402
from optimizer.methods.slim import SlimConfig  # noqa: E402
from optimizer.models.loading import load_model  # noqa: E402

ARCH = "deit_tiny_patch16_224"
STAGES = ("eval", "slim", "export", "latency", "report")
# the demo sweep's search settings (make demo): its cached search is reused when --search-dir is a copy
DEMO_SEARCH = dict(steps=24, checkpoint_every=4, batch_size=32)


def dense_model(args):
    return load_model(ARCH, args.weights).model.eval()


def evaluate_row(model, dense, args) -> dict:
    from optimizer.data import build_loader
    from optimizer.evaluation import evaluate
    loader = build_loader(args.val, model, batch_size=64, workers=args.workers)
    t0 = time.perf_counter()
    r = evaluate(model, loader, reference=dense, reference_cache=str(Path(args.work) / "dense_logits.pt"))
    agree = r.per_image.get("agree", "")
    p = sum(c == "1" for c in agree) / max(len(agree), 1)
    return {"images": r.images, "top1": r.top1, "dense_top1": r.reference_top1, "agreement": r.agreement,
            "agreement_se": 100 * math.sqrt(p * (1 - p) / max(len(agree), 1)), "mean_kl": r.mean_kl,
            "macs": count_macs(model).macs, "params": count_macs(model).params,
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def stage_eval(args, state):
    dense = dense_model(args)
    d = count_macs(dense)
    state["dense"] = {"macs": d.macs, "params": d.params}
    rows = state.setdefault("merge", {})
    for r in args.r:
        cm = compress(copy.deepcopy(dense), [MergeConfig(r=r)])
        row = evaluate_row(cm.model, dense, args)
        row["macs_ratio"] = row["macs"] / d.macs
        row["schedule"] = cm.steps[0]["structure"]["schedule"]
        rows[f"r{r}"] = row
        print(f"merge r={r}", row, file=sys.stderr)
        save_state(args, state)


def slim_row(cfg, dense, args) -> tuple:
    """``dense`` compressed by slim ``cfg`` from the cached search in ``args.search_dir``, evaluated:
    (compressed model, row with the report's ratios, schedule, merge candidates, widths and compress seconds)."""
    ctx = CompressContext(calib_dir=args.train, teacher=dense, workers=args.workers, seed=0,
                          work_dir=args.search_dir, log=lambda s: print(s, file=sys.stderr))
    t0 = time.perf_counter()
    cm = compress(copy.deepcopy(dense), [cfg], ctx)
    seconds = time.perf_counter() - t0
    rep = cm.steps[0]["report"]
    row = evaluate_row(cm.model, dense, args)
    row.update({"macs_ratio": rep["macs_ratio"], "params_ratio": rep["params_ratio"],
                "compress_seconds": round(seconds, 1), "search_steps": rep["importance"].get("steps"),
                "schedule": rep.get("schedule"), "merge_search": rep.get("merge_search") or [],
                "widths": rep["widths"]})
    return cm, row


def stage_slim(args, state):
    dense = dense_model(args)
    rows = state.setdefault("slim", {})
    for budget in args.budgets:
        for mode in args.modes:
            name = f"slim{budget:g}_{mode}"
            cfg = SlimConfig(macs_ratio=budget, token_mode=mode, recovery=RecoveryConfig(loss="none"), **DEMO_SEARCH)
            cm, row = slim_row(cfg, dense, args)
            row["search_reused"] = row.pop("search_steps")
            rows[name] = row
            torch.save({"structure": cm.steps[0]["structure"], "state_dict": cm.model.state_dict()},
                       Path(args.work) / f"{name}.pt")
            print(name, {k: row[k] for k in ("macs_ratio", "params_ratio", "agreement", "top1")}, file=sys.stderr)
            save_state(args, state)


def _slim_model(args, name):
    from optimizer.methods.slim import rebuild
    saved = torch.load(Path(args.work) / f"{name}.pt", weights_only=False)
    model = rebuild(dense_model(args), saved["structure"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def stage_export(args, state):
    import numpy as np
    import onnxruntime as ort
    from optimizer.data import build_loader
    from optimizer.engine import available_builder, engine_from_onnx
    dense = dense_model(args)
    model = compress(copy.deepcopy(dense), [MergeConfig(r=args.export_r)]).model
    onnx_dir = Path(args.work) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    path = onnx_dir / f"merge_r{args.export_r}.onnx"
    t0 = time.perf_counter()
    report = deploy_to_file(model, path, data_dir=args.val)
    out = {"model": f"merge r={args.export_r}", "export_seconds": round(time.perf_counter() - t0, 1),
           "chain_parity": report["parity"], "ops": _op_counts(path)}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parity = {}
    for b in (1, 2, 8):
        worst, agree, n = 0.0, 0, 0
        for batch in build_loader(args.val, model, batch_size=b, workers=args.workers, limit=args.parity_images):
            x = batch.images
            o = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            with torch.no_grad():
                ref = model(x).numpy()
            worst = max(worst, float(np.abs(o - ref).max()))
            agree += int((o.argmax(1) == ref.argmax(1)).sum())
            n += x.shape[0]
        parity[str(b)] = {"images": n, "max_abs_diff": worst, "top1_agreement": agree / n}
        print("ort parity batch", b, parity[str(b)], file=sys.stderr)
    out["ort_vs_torch"] = parity
    builder = available_builder()
    engines = {}
    for fp16 in (False, True):
        key = "fp16" if fp16 else "fp32"
        if builder is None:
            engines[key] = {"skipped": "no TensorRT builder importable"}
            continue
        try:
            built = engine_from_onnx(path, (1, 2, 8), fp16=fp16)
            engines[key] = {"built": True, "engine_bytes": built.size_bytes, "builder": built.info["builder"],
                            "build_seconds": built.info.get("build_seconds")}
        except Exception as e:   # the finding itself: what the builder rejects
            engines[key] = {"built": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        print("engine", key, engines[key], file=sys.stderr)
    out["engines"] = engines
    state["export"] = out
    save_state(args, state)


def _op_counts(path) -> dict:
    import collections
    import onnx
    return dict(sorted(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


def stage_latency(args, state):
    from optimizer.bench import interleaved_latency
    from optimizer.runners import OrtRunner
    onnx_dir = Path(args.work) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    dense = dense_model(args)
    models = {"dense": lambda: dense,
              f"merge_r{args.export_r}": lambda: compress(copy.deepcopy(dense), [MergeConfig(r=args.export_r)]).model}
    for name in sorted(state.get("slim", {})):
        if name.startswith("slim0.75"):
            models[name] = lambda n=name: _slim_model(args, n)
    paths = {}
    for name, make in models.items():
        paths[name] = onnx_dir / f"{name}.onnx"
        if not paths[name].is_file():
            deploy_to_file(make(), paths[name])
    runners = {n: OrtRunner(p, threads=args.threads, name=n) for n, p in paths.items()}
    state["latency"] = interleaved_latency(runners, (8,), rounds=args.rounds, iters_per_round=5, warmup=3)
    save_state(args, state)


def _pct(v, se=None):
    return "-" if v is None else (f"{v:.1f} ± {se:.1f}" if se is not None else f"{v:.1f}")


def stage_report(args, state):
    prov = provenance()
    cmds = state.setdefault("commands", [])
    if prov["command"] not in cmds:
        cmds.append(prov["command"])
    lines = ["# Token merging (ToMe) on DeiT-Tiny (2-core CPU)", "",
             f"Val: {args.val} ({next(iter(state['merge'].values()))['images']} images); agreement = share of images "
             "whose top-1 equals the dense model's (± its standard error); top-1 from synsets.tsv labels. "
             "MACs counted by `optimizer.counting.count_macs`, matching and the one-hot merge MatMul included.",
             "", "## Merge alone (no data, no training)", "",
             "| r per block | tokens left | MACs ratio | agreement % | top-1 % (dense) | mean KL |", "|---|---|---|---|---|---|"]
    for name, r in state["merge"].items():
        lines.append(f"| {name[1:]} | {197 - sum(r['schedule'])} | {r['macs_ratio']:.3f} | "
                     f"{_pct(r['agreement'], r['agreement_se'])} | {_pct(r['top1'])} ({_pct(r['dense_top1'])}) | "
                     f"{r['mean_kl']:.3f} |")
    if state.get("slim"):
        lines += ["", "## slim: token_mode drop vs merge (one mask search, no recovery)", "",
                  "Candidates: mean merges per block, `d` = scored with the dense LayerNorms instead of the searched "
                  "ones, and their KL to dense on 64 calibration images (the lowest is kept).", "",
                  "| variant | MACs ratio | params ratio | agreement % | top-1 % | merge schedule | candidates (mean r: KL) |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in state["slim"].items():
            cands = ", ".join(f"{c['mean_r']:g}{'d' if c.get('norms') == 'dense' else ''}: {c['kl']:.3f}"
                              for c in (r.get("merge_search") or []))
            lines.append(f"| {name} | {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
                         f"{_pct(r['agreement'], r['agreement_se'])} | {_pct(r['top1'])} | "
                         f"{r['schedule'] or '-'} | {cands or '-'} |")
    ex = state.get("export")
    if ex:
        lines += ["", f"## Export of {ex['model']} (`deploy_model`, dynamic batch)", "",
                  f"Chain parity gate: max |diff| {ex['chain_parity']['max_abs_diff']:.2e}. ONNX ops: "
                  + ", ".join(f"{k} {v}" for k, v in ex["ops"].items()) + ".", "",
                  "| batch | images | max abs diff ORT vs PyTorch | top-1 agreement |", "|---|---|---|---|"]
        for b, p in ex["ort_vs_torch"].items():
            lines.append(f"| {b} | {p['images']} | {p['max_abs_diff']:.2e} | {p['top1_agreement']:.3f} |")
        lines += [""] + [f"- TensorRT engine {k}: " + (f"built by {v['builder']['package']} {v['builder']['version']}, "
                                                        f"{v['engine_bytes'] / 1e6:.1f} MB" if v.get("built") else
                                                        v.get("error") or v.get("skipped"))
                         for k, v in ex["engines"].items()]
        lines += ["  (engines cannot run without a GPU here: a successful build is the evidence)"]
    lat = state.get("latency")
    if lat:
        lines += ["", f"## ONNX Runtime latency, batch 8, {args.threads} threads, interleaved ({lat['rounds']} rounds)",
                  "", "| model | p50 ms | speedup (dense p50 / p50) | per-round median speedup (25-75 %) |",
                  "|---|---|---|---|"]
        for row in lat["rows"]:
            lo, hi = row["speedup_rounds_iqr"]
            lines.append(f"| {row['name']} | {row['p50_ms']:.1f} | {row['speedup']:.2f}x | "
                         f"{row['speedup_rounds']:.2f}x ({lo:.2f}-{hi:.2f}) |")
    if args.conclusion:
        lines += ["", "## Conclusion", "", args.conclusion]
    lines += ["", "Commands (stages run separately): " + "; ".join(f"`{c}`" for c in cmds)]
    data = {k: v for k, v in state.items()}
    data["data"] = {"train": args.train, "val": args.val, "weights": args.weights}
    write_result(ROOT / "benchmarks" / "results" / "token_merge", data, lines, prov=prov)


def save_state(args, state):
    write_json(Path(args.work) / "state.json", state)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--work", default="build/token_merge")
    ap.add_argument("--search-dir", default=None, help="slim search work dir (a copy of the demo's shared/slim-*)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--r", type=int, nargs="+", default=[4, 6, 8, 10])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.5])
    ap.add_argument("--modes", nargs="+", default=["drop", "merge"], choices=["drop", "merge"],
                    help="slim token modes to (re)run")
    ap.add_argument("--export-r", type=int, default=8)
    ap.add_argument("--parity-images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--conclusion", default="")
    ap.add_argument("--include", nargs="*", default=[], help="state.json of stages run in other --work dirs")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    p = Path(args.work) / "state.json"
    state = json.loads(p.read_text()) if p.is_file() else {}
    for other in args.include:
        # stages run in other work dirs (concurrently): their slim rows and latency join this state
        extra = json.loads(Path(other).read_text())
        state.setdefault("slim", {}).update(extra.get("slim", {}))
        if "latency" in extra:
            state["latency"] = extra["latency"]
        state.setdefault("included", []).append(other)
    for stage in args.stages.split(","):
        if stage not in STAGES:
            sys.exit(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        globals()[f"stage_{stage}"](args, state)


if __name__ == "__main__":
    main()

"""Activation-aware mixed-rank factorisation on DeiT-Tiny: the ablation, fine-tuning, latency, engines.

Per parameter ratio (params(compressed)/params(dense), whole model counted) and arm:
  plain     plain SVD of each weight (same mixed-rank allocation, no whitening, no compensation)
  asvd_ind  activation-aware (whitened) SVD, every layer calibrated on dense activations (one pass)
  asvd      activation-aware SVD, sequential calibration (block i on the factorised prefix's outputs)
  asvd_ec   asvd + the error-compensation term fitted by Adam (the full method)
  <arm>_ft  that arm + distillation fine-tuning from the dense teacher (optimizer.distill.recover)
measured on the val images against the dense model on the same images: top-1, top-1 agreement,
mean KL; ONNX Runtime latency ratios vs dense at batch 1/8/32 (interleaved in one run), the
ideal MACs ratio, TensorRT engine size and activation memory, calibration time.

    flock /tmp/vitopt-heavy.lock python benchmarks/lowrank.py \\
        --weights ../shared/weights/deit_tiny_patch16_224.pth \\
        --train ../shared/data/imagenet-mini/train --val ../shared/data/imagenet-mini/val

Stages cache into --work (state.json + models/), so a run can be resumed or split (--stages).
Results: benchmarks/results/lowrank_deit_tiny.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from optimizer.compress import CompressContext, CompressedModel, load_compressed, save_compressed  # noqa: E402
from optimizer.counting import count_macs  # noqa: E402
from optimizer.fileio import write_json, write_text  # noqa: E402
from optimizer.methods.lowrank import LowRankConfig  # noqa: E402
from optimizer.methods.lowrank.apply import apply as lowrank_apply  # noqa: E402
from optimizer.models.loading import load_model  # noqa: E402

ARCH = "deit_tiny_patch16_224"
STAGES = ("compress", "finetune", "eval", "latency", "engine", "report")
ARMS = {
    "plain": dict(whiten=False, sequential=False, comp_fraction=0.0),
    "asvd_ind": dict(whiten=True, sequential=False, comp_fraction=0.0),
    "asvd": dict(whiten=True, sequential=True, comp_fraction=0.0),
    "asvd_ec": dict(whiten=True, sequential=True, comp_fraction=0.25, comp_steps=300, comp_solver="adam"),
}


def dense_model(args):
    return load_model(ARCH, args.weights).model.eval()


def ctx_of(args, teacher=None):
    return CompressContext(calib_dir=args.train, teacher=teacher, workers=args.workers, seed=0,
                           log=lambda s: print(s, file=sys.stderr))


def name_of(ratio: float, arm: str) -> str:
    return f"p{int(round(ratio * 100)):02d}_{arm}"


def load_state(work: Path) -> dict:
    p = work / "state.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def cfg_of(args, ratio, arm) -> LowRankConfig:
    return LowRankConfig(params_ratio=ratio, calib_images=args.calib_images, **ARMS[arm])


def stage_compress(args, work, state):
    dense = dense_model(args)
    for ratio in args.ratios:
        for arm in args.arms:
            name = name_of(ratio, arm)
            if name in state.setdefault("compress", {}) and (work / "models" / name).is_dir():
                continue
            cfg = cfg_of(args, ratio, arm)
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            res = lowrank_apply(model, cfg, ctx_of(args))
            wall = time.perf_counter() - t0
            cm = CompressedModel(res.model, ARCH, {}, [{"method": "lowrank", "config": cfg.to_dict(),
                                                         "structure": res.structure, "report": res.report}])
            save_compressed(work / "models" / name, cm)
            rep = {k: v for k, v in res.report.items() if k not in ("layers", "sensitivity")}
            rep["wall_s"] = round(wall, 1)
            rep["ranks"] = {p: s["ranks"] for p, s in res.structure.items()}
            rep["layer_errors"] = {p: {k: i.get(k) for k in ("err_held_svd", "err_held")}
                                   for p, i in res.report["layers"].items()}
            state["compress"][name] = rep
            write_json(work / "state.json", state)
            print(name, {k: rep[k] for k in ("params_ratio", "macs_ratio", "calibration_seconds")}, file=sys.stderr)


def stage_finetune(args, work, state):
    from optimizer.distill import DistillConfig, recover
    dense = dense_model(args)
    for ratio in args.ft_ratios:
        name = name_of(ratio, args.ft_arm)
        ft = name + ("_ft" if args.ft_epochs == 1 else f"_ft{args.ft_epochs:g}ep")
        if ft in state.setdefault("finetune", {}) and (work / "models" / ft).is_dir():
            continue
        loaded = load_compressed(work / "models" / name)
        model = loaded.model
        dcfg = DistillConfig(epochs=args.ft_epochs, batch_size=args.ft_batch, lr=args.ft_lr, eval_at_start=False)
        t0 = time.perf_counter()
        rep = recover(model, dense, ctx_of(args, teacher=dense), dcfg)
        wall = time.perf_counter() - t0
        model.eval()
        recipe = loaded.recipe
        cm = CompressedModel(model, ARCH, {}, [dict(s, report={}) for s in recipe["steps"]])
        save_compressed(work / "models" / ft, cm)
        state["finetune"][ft] = {"wall_s": round(wall, 1), "epochs": args.ft_epochs, "batch_size": args.ft_batch,
                                 "lr": args.ft_lr, "steps": rep.get("steps"), "images": rep.get("images"),
                                 "loss": "manifold distillation (DistillConfig defaults: alpha=1, beta=1)"}
        write_json(work / "state.json", state)
        print(ft, state["finetune"][ft], file=sys.stderr)


def stage_eval(args, work, state):
    from optimizer.data import build_loader
    from optimizer.evaluation import evaluate
    dense = dense_model(args)
    loader = build_loader(args.val, dense, batch_size=64, workers=args.workers)
    ev = state.setdefault("eval", {})
    for d in sorted((work / "models").iterdir()):
        if d.name in ev:
            continue
        r = evaluate(load_compressed(d).model, loader, reference=dense)
        ev[d.name] = {"top1": r.top1, "agreement": r.agreement, "mean_kl": r.mean_kl, "dense_top1": r.reference_top1,
                      "images": r.images}
        write_json(work / "state.json", state)
        print(d.name, ev[d.name], file=sys.stderr)
    c = count_macs(dense)
    state["dense"] = {"params": c.params, "macs": c.macs}


def _onnx_of(model, path):
    from optimizer.export import onnx_from_torch
    from optimizer.methods.lowrank import merge_for_export
    if not path.is_file():
        onnx_from_torch(merge_for_export(model), path)
    return path


def stage_latency(args, work, state):
    from optimizer.bench import interleaved_latency
    from optimizer.runners import OrtRunner
    onnx_dir = work / "onnx"
    paths = {"dense": _onnx_of(dense_model(args), onnx_dir / "dense.onnx")}
    for ratio in args.ratios:
        name = name_of(ratio, args.lat_arm)
        paths[name] = _onnx_of(load_compressed(work / "models" / name).model, onnx_dir / f"{name}.onnx")
    runners = {n: OrtRunner(p, threads=args.threads, name=n) for n, p in paths.items()}
    state["latency"] = interleaved_latency(runners, args.batches, rounds=args.rounds, iters_per_round=args.iters,
                                           warmup=3)
    write_json(work / "state.json", state)


def stage_engine(args, work, state):
    from optimizer.engine import available_builder, engine_from_onnx
    if available_builder() is None:
        state["engine"] = {"skipped": "no TensorRT builder importable"}
        return
    out = {}
    for onnx in sorted((work / "onnx").glob("*.onnx")):
        t0 = time.perf_counter()
        built = engine_from_onnx(onnx, batch_sizes=tuple(args.batches))
        mem = built.info.get("memory", {})
        out[onnx.stem] = {"engine_bytes": built.size_bytes, "activation_bytes": mem.get("activation_bytes"),
                          "weights_bytes": mem.get("weights_bytes"), "builder": built.info.get("builder"),
                          "memory_source": mem.get("source"), "build_s": round(time.perf_counter() - t0, 1)}
        print(onnx.stem, out[onnx.stem], file=sys.stderr)
    state["engine"] = out
    write_json(work / "state.json", state)


def _builder(b) -> str:
    return f"{b.get('package')} {b.get('version')}" if isinstance(b, dict) else str(b)


def _f(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def _targets(args, state, ev, comp, dense_top1) -> list:
    """One line per issue target, computed from the cached results (nothing hand-written)."""
    out = []
    best = max((e["agreement"], n) for n, e in ev.items() if n.startswith("p60_") and "_ft" not in n) \
        if any(n.startswith("p60_") for n in ev) else None
    if best:
        out.append(f"- 0.6 params, no fine-tuning, top-1 agreement >= 90 %: best {best[0]:.1f} % ({best[1]}) -> "
                   f"{'met' if best[0] >= 90 else 'NOT met'}")
    fts = [(n, e) for n, e in ev.items() if "_ft" in n]
    for n, e in fts:
        d = e["top1"] - dense_top1
        out.append(f"- with fine-tuning, top-1 within 1.5 points of dense: {n} {d:+.2f} points -> "
                   f"{'met' if d >= -1.5 else 'NOT met'}")
    ratios = sorted({n[:3] for n in ev if n.endswith("_plain")})
    for arm in ("asvd_ind", "asvd"):
        wins = []
        for r in ratios:
            a, pl = ev.get(f"{r}_{arm}"), ev.get(f"{r}_plain")
            if a and pl:
                wins.append((r, a["agreement"] > pl["agreement"], a["mean_kl"] < pl["mean_kl"],
                             a["agreement"] - pl["agreement"], pl["mean_kl"] - a["mean_kl"]))
        if wins:
            out.append(f"- activation-aware ({arm}) beats plain SVD at every ratio: "
                       + "; ".join(f"{r[1:]}: agreement {d:+.1f} pts, KL {-k:+.3f}" for r, _, _, d, k in wins)
                       + f" -> agreement {'higher' if all(w[1] for w in wins) else 'NOT higher'} at every ratio, KL "
                       f"{'lower' if all(w[2] for w in wins) else 'NOT lower'} at every ratio")
    lat = state.get("latency")
    if lat:
        for row in lat["rows"]:
            c = comp.get(row["name"], {})
            if row["batch"] == 8 and c.get("macs_ratio"):
                real = row["speedup"] * c["macs_ratio"]
                out.append(f"- ONNX Runtime speedup at batch 8 >= 85 % of ideal: {row['name']} {100 * real:.0f} % "
                           f"-> {'met' if real >= 0.85 else 'NOT met'}")
    return out


def stage_report(args, work, state):
    ev, comp = state.get("eval", {}), state.get("compress", {})
    dense_top1 = next((e["dense_top1"] for e in ev.values() if e.get("dense_top1") is not None), None)
    lines = ["# Low-rank factorisation of DeiT-Tiny (activation-aware SVD + error compensation, mixed ranks)", "",
             f"Machine: {args.machine}. Weights: ../shared/weights/deit_tiny_patch16_224.pth; calibration: "
             f"{sorted({c.get('calib_images') for c in comp.values()})} evenly spaced images of imagenet-mini/train; accuracy on imagenet-mini/val "
             f"({next(iter(ev.values()), {}).get('images', '?')} images; one image = 0.2 points). "
             f"Dense top-1 on these images: {_f(dense_top1)} %.", "",
             "Params ratio = params(compressed whole model) / params(dense whole model) (every parameter "
             "counted, optimizer.counting.count_params); embeddings, norms and the head are not factorised. "
             "MACs ratio = optimizer.counting.count_macs ratio (per 224-px image).", "",
             "## Ablation (no fine-tuning) and fine-tuning", "",
             "| target | arm | params ratio | MACs ratio | top-1 % | Δ top-1 vs dense | agreement % | mean KL | "
             "mean held-out layer err* | calib s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ratios = sorted({int(n[1:3]) / 100 for n in ev})
    for ratio in ratios:
        prefix = name_of(ratio, "")
        names = [n for n in ev if n.startswith(prefix)]
        names.sort(key=lambda n: (list(ARMS).index(n[len(prefix):].split("_ft")[0])
                                  if n[len(prefix):].split("_ft")[0] in ARMS else 99, n))
        for name in names:
            arm = name[len(prefix):]
            e = ev[name]
            c = comp.get(name) or comp.get(name.split("_ft")[0], {})
            secs = c.get("calibration_seconds")
            if "_ft" in arm:
                secs = state.get("finetune", {}).get(name, {}).get("wall_s")
            lines.append(f"| {ratio} | {arm} | {_f(c.get('params_ratio'), 3)} | {_f(c.get('macs_ratio'), 3)} | "
                         f"{_f(e['top1'])} | {_f(e['top1'] - dense_top1 if dense_top1 is not None else None)} | "
                         f"{_f(e['agreement'])} | {_f(e['mean_kl'], 3)} | {_f(c.get('mean_err_held'), 3)} | "
                         f"{_f(secs, 0)}{' (FT)' if '_ft' in arm else ''} |")
    lines += ["", "*relative output error per factorised layer on held-out calibration images (every 8th), "
              "against the dense layer's output. For sequential arms the input is the factorised prefix's, so "
              "the number includes the drift accumulated upstream; it is not comparable with the independent "
              "arms (plain, asvd_ind), where it is the layer's own error on dense inputs."]
    lines += ["", "## Targets", ""] + _targets(args, state, ev, comp, dense_top1)
    for n, f0 in state.get("finetune", {}).items():
        lines += ["", f"Fine-tuning {n}: {f0['epochs']} epoch(s) over imagenet-mini/train ({f0.get('images')} "
                  f"images, {f0.get('steps')} steps), batch {f0['batch_size']}, lr {f0['lr']}, {f0['loss']}, "
                  "train-time augmentation; 'calib s' of FT rows is the fine-tuning wall time."]
    lat = state.get("latency")
    if lat:
        lines += ["", "## ONNX Runtime latency (CPU, interleaved with dense in one run; merged factor pairs)", "",
                  f"threads={args.threads}, rounds={lat['rounds']} x {lat['iters_per_round']} iterations per "
                  "runner and batch; speedup = dense p50 / model p50; ideal = 1 / MACs ratio; "
                  "realised = speedup / ideal.", "",
                  "| model | batch | p50 ms | speedup | ideal (1/MACs ratio) | realised % of ideal |",
                  "|---|---|---|---|---|---|"]
        for row in lat["rows"]:
            c = comp.get(row["name"], {})
            ideal = 1.0 / c["macs_ratio"] if c.get("macs_ratio") else None
            lines.append(f"| {row['name']} | {row['batch']} | {_f(row['p50_ms'])} | {_f(row['speedup'], 3)} | "
                         f"{_f(ideal, 3)} | {_f(100 * row['speedup'] / ideal if ideal else None, 1)} |")
    eng = state.get("engine")
    if eng:
        lines += ["", "## TensorRT engines (built on CPU with the available builder; profile batch "
                  f"{min(args.batches)}-{max(args.batches)})", ""]
        if "skipped" in eng:
            lines.append(f"skipped: {eng['skipped']}")
        else:
            lines += ["| model | engine MB | activation MB | weights MB | builder |", "|---|---|---|---|---|"]
            for n, e in eng.items():
                mb = lambda b: None if b is None else b / 2 ** 20  # noqa: E731
                lines.append(f"| {n} | {_f(mb(e['engine_bytes']))} | {_f(mb(e.get('activation_bytes')))} | "
                             f"{_f(mb(e.get('weights_bytes')))} | {_builder(e.get('builder'))} |")
    lines += ["", "Regenerate: `flock /tmp/vitopt-heavy.lock python benchmarks/lowrank.py --weights ... --train ... "
              "--val ...` (see the script's docstring)."]
    out = ROOT / "benchmarks" / "results"
    write_json(out / "lowrank_deit_tiny.json", {k: v for k, v in state.items()})
    write_text(out / "lowrank_deit_tiny.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--work", default=str(ROOT / "build" / "lowrank_bench"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--ratios", default="0.4,0.5,0.6,0.75")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--ft-ratios", default="0.6")
    p.add_argument("--ft-arm", default="asvd", help="which arm's models are fine-tuned")
    p.add_argument("--lat-arm", default="asvd", help="which arm's models are timed and built")
    p.add_argument("--ft-epochs", type=float, default=1.0)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--machine", default="shared 2-core CPU VM (no GPU)")
    args = p.parse_args(argv)
    args.ratios = [float(r) for r in args.ratios.split(",") if r]
    args.ft_ratios = [float(r) for r in args.ft_ratios.split(",") if r]
    args.arms = [a for a in args.arms.split(",") if a]
    if any(a not in ARMS for a in args.arms):
        p.error(f"unknown arm in {args.arms} (known: {', '.join(ARMS)})")
    args.batches = [int(b) for b in args.batches.split(",") if b]
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state = load_state(work)
    for stage in [s for s in args.stages.split(",") if s]:
        if stage not in STAGES:
            p.error(f"unknown stage {stage} (known: {', '.join(STAGES)})")
        t0 = time.perf_counter()
        globals()[f"stage_{stage}"](args, work, state)
        write_json(work / "state.json", state)
        print(f"stage {stage}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

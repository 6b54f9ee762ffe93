"""The DeiT-Tiny frontier: a sweep over slim budgets with and without lowrank, each also in INT8, one report.

    python benchmarks/frontier.py            # sweep (resumes build/frontier), time, report
    python benchmarks/frontier.py --html     # also leave build/frontier/report.html (self-contained)

1. ``vitopt sweep benchmarks/recipes/frontier.yaml --vary slim.macs=off,0.5,0.75
   --vary lowrank.params=off,0.9 -o build/frontier``: dense, 2 slim budgets (one shared search),
   lowrank 0.9 alone and after each slim budget; each variant evaluated on imagenet-mini val,
   exported in FP32 and INT8 (``int8_dynamic``: its own row, ``<variant>+int8_dynamic``, with the
   INT8 graph's own agreement), FP32 engines built with TensorRT for RTX.
2. The peer, ONNX Runtime's ``quantize_dynamic`` (per-channel INT8) on the dense FP32 export, is
   evaluated on the same images (agreement with the dense model) as a reference row.
3. Every variant's FP32 and INT8 ONNX files and the peer's are timed with ONNX Runtime at batch
   1/8/32, interleaved round-robin in one run under /tmp/vitopt-heavy.lock (ratios between variants
   measured side by side); the rows are merged into the sweep's report as a bench file per variant.
4. ``vitopt report``'s table and plots, plus the dominance checks: does a combined variant beat
   every single-method variant at no more MACs (higher agreement, no higher latency), and which
   vitopt rows beat the peer (higher agreement at no higher latency)?
Writes benchmarks/results/frontier.{json,md} and frontier_files/*.png.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import provenance, write_result  # noqa: E402

SHARED = Path("..") / "shared"
SLIM = "off,0.5,0.75"              # slim MACs budgets (off: no slim step); the demo's, so its shared work is reused
LOWRANK = "off,0.9"                # lowrank params budgets
BATCHES = (1, 8, 32)
LOCK = "/tmp/vitopt-heavy.lock"
QUANT = "int8_dynamic"             # the recipe's INT8 export precision
PEER = "peer:quantize_dynamic"


def _acquire(lk, timeout_s: float) -> None:
    """The shared timing lock, waiting in the queue at most ``timeout_s`` (timings must not overlap)."""
    import signal

    def expire(signum, frame):
        raise TimeoutError
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(timeout_s)))
    try:
        fcntl.flock(lk, fcntl.LOCK_EX)
    except TimeoutError:
        sys.exit(f"frontier: {LOCK} still held by other timing runs after {timeout_s:.0f} s; "
                 "rerun later (finished variants are kept)")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def peer_model(out: Path) -> Path:
    """The peer: ORT ``quantize_dynamic`` (per-channel INT8 weights, the one-liner users compare with) on the
    dense variant's FP32 export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimizer.sweep.sweep import variant_dir
    path = out / "peer" / "dense.quantize_dynamic.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        quantize_dynamic(str(variant_dir(out, "dense") / "model.onnx"), str(tmp), per_channel=True,
                         weight_type=QuantType.QInt8)
        os.replace(tmp, path)
    return path


def peer_accuracy(out: Path, path: Path) -> dict:
    """The peer's top-1 and agreement with the dense model on the sweep's eval images (the dense logits
    from the sweep's shared cache)."""
    from optimizer.data import build_loader
    from optimizer.evaluation import OnnxModel, evaluate
    from optimizer.models.loading import load_model
    dense = load_model("deit_tiny_patch16_224", os.environ["VITOPT_CHECKPOINT"]).model
    loader = build_loader(os.environ["VITOPT_DATA"], dense, batch_size=64, workers=0)
    with OnnxModel(path) as m:
        r = evaluate(m, loader, reference=dense, reference_cache=out / "shared" / "eval_reference.pt", desc="peer")
    return {"top1": r.top1, "agreement": r.agreement, "images": r.images, "per_image": r.per_image}


def time_variants(out: Path, rounds: int, iters: int, peer: Path, lock_timeout_s: float = 3600) -> dict:
    """Interleaved ORT latency of every finished variant (FP32 and INT8 files) and the peer;
    returns {variant: bench-file path} (the peer's under PEER)."""
    from optimizer.bench import interleaved_latency
    from optimizer.bench.report import FORMAT, VERSION
    from optimizer.fileio import write_json
    from optimizer.runners import OrtRunner
    from optimizer.sweep.sweep import read_sweep, variant_dir
    names = [v["name"] for v in read_sweep(out)["variants"] if v["finished"]]
    names.sort(key=lambda n: n != "dense")           # dense first: the reference of the ratios
    files = {n: variant_dir(out, n) / "model.onnx" for n in names}
    files.update({f"{n}+{QUANT}": variant_dir(out, n) / f"model.{QUANT}.onnx" for n in names
                  if (variant_dir(out, n) / f"model.{QUANT}.onnx").is_file()})
    files[PEER] = peer
    runners = {n: OrtRunner(f, threads=2, name=n) for n, f in files.items()}
    with open(LOCK, "w") as lk:
        print(f"frontier: waiting for {LOCK} ...", file=sys.stderr, flush=True)
        _acquire(lk, lock_timeout_s)
        t0 = time.perf_counter()
        res = interleaved_latency(runners, BATCHES, rounds=rounds, iters_per_round=iters, warmup=2)
        res["seconds"] = round(time.perf_counter() - t0, 1)
    out_files = {}
    env = res["environment"]
    for n in names + [PEER]:
        # a variant's file holds its FP32 and INT8 rows; the report puts each on its precision's row
        mine = (n, f"{n}+{QUANT}") if n != PEER else (n,)
        rows = [{**r, "device": "cpu", "env": env} for r in res["rows"] if r["name"] in mine]
        f = out / "bench" / f"{n.replace(':', '_')}.json"
        write_json(f, {"format": FORMAT, "version": VERSION, "rows": rows,
                       "target": str(files[n].relative_to(out)), "interleaved": {k: res[k] for k in
                                                                              ("rounds", "iters_per_round", "warmup")}})
        out_files[n] = f
    write_json(out / "bench" / "interleaved.json", res)
    return out_files


def _methods(r) -> list:
    """The compression methods of a row, INT8 counted as one (``dense+int8_dynamic`` is single-method)."""
    return [k for s in r.steps for k in s if k in ("slim", "lowrank", "gates", "distill")] + \
        (["int8"] if r.quantized else [])


def dominance(results, batch: int = 8) -> list:
    """(combined, single, macs ratio, agreement gain, latency ratio) where the combined variant has no more
    MACs, higher agreement and no higher latency at ``batch`` than a single-method variant."""
    out = []
    for c in results:
        if len(_methods(c)) < 2 or c.agreement is None:
            continue
        for s in results:
            if len(_methods(s)) != 1 or s.agreement is None:
                continue
            lc, ls = c.latency_ms("onnxruntime", batch), s.latency_ms("onnxruntime", batch)
            if c.macs <= s.macs and c.agreement > s.agreement and lc is not None and ls is not None and lc <= ls:
                out.append((c.name, s.name, c.macs / s.macs, c.agreement - s.agreement, lc / ls))
    return out


def beats_peer(results, peer: dict) -> list:
    """(row, agreement gain, latency ratio at batch 1, 8, 32): vitopt rows with higher agreement than the peer
    and no higher latency at every batch."""
    out = []
    for r in results:
        lat = [r.latency_ms("onnxruntime", b) for b in BATCHES]
        if r.agreement is None or None in lat or None in peer["latency"].values():
            continue
        ratios = [lat[i] / peer["latency"][b] for i, b in enumerate(BATCHES)]
        if r.agreement > peer["agreement"] and all(x <= 1.0 for x in ratios):
            out.append((r.name, r.agreement - peer["agreement"], *ratios))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/frontier", help="sweep directory (resumed)")
    ap.add_argument("--slim", default=SLIM, help=f"slim.macs values (default {SLIM})")
    ap.add_argument("--lowrank", default=LOWRANK, help=f"lowrank.params values (default {LOWRANK})")
    ap.add_argument("--shared-from", metavar="SWEEP_DIR",
                    help="start a new --out with the shared work (slim search, low-rank statistics, dense logits) of "
                         "another sweep of the same method settings, e.g. build/demo")
    ap.add_argument("--finished-only", action="store_true",
                    help="time and report the variants already finished in --out, run none")
    ap.add_argument("--no-timing", action="store_true", help="skip the ONNX Runtime timing (no latency columns)")
    ap.add_argument("--lock-timeout", type=float, default=3600, help="seconds to wait for the timing lock")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--html", action="store_true", help="keep report.html in --out (it is always written there)")
    ap.add_argument("--results", default="benchmarks/results", help="where frontier.{json,md} go")
    args = ap.parse_args(argv)
    prov = provenance(None if argv is None else [sys.argv[0], *argv])   # before the chdir: argv[0] as given
    os.chdir(ROOT)
    vary = [f"slim.macs={args.slim}", f"lowrank.params={args.lowrank}"]
    env = {"VITOPT_CHECKPOINT": str(SHARED / "weights" / "deit_tiny_patch16_224.pth"),
           "VITOPT_DATA": str(SHARED / "data" / "imagenet-mini" / "val"),
           "VITOPT_CALIB": str(SHARED / "data" / "imagenet-mini" / "train")}
    for k, v in env.items():
        if not Path(v).exists():
            sys.exit(f"frontier: {v} is missing (the benchmark needs ../shared)")
        os.environ[k] = v
    from optimizer.pipeline.recipe import load_recipe
    from optimizer.sweep import parse_vary, run_sweep
    from optimizer.sweep.report import build_report, markdown_table
    from optimizer.sweep.results import sweep_results
    out = Path(args.out)
    if args.shared_from and not out.exists():
        shutil.copytree(Path(args.shared_from) / "shared", out / "shared")
    t0 = time.perf_counter()
    if not args.finished_only:
        run_sweep(load_recipe("benchmarks/recipes/frontier.yaml"), [parse_vary(v) for v in vary], out)
    sweep_s = time.perf_counter() - t0
    peer_path = peer_model(out)
    peer = {"file": str(peer_path.relative_to(out)), **peer_accuracy(out, peer_path)}
    files = {} if args.no_timing else time_variants(out, args.rounds, args.iters, peer_path, args.lock_timeout)
    peer_file = files.pop(PEER, None)
    peer["latency"] = {}
    if peer_file is not None:
        peer["latency"] = {int(r["batch"]): r["p50_ms"] for r in json.loads(peer_file.read_text())["rows"]}
    bench = [f"{n}={f}" for n, f in files.items()]
    rep = build_report(out, bench)
    results = sweep_results(out, bench)
    dom = dominance(results)
    over_peer = beats_peer(results, peer) if peer["latency"] else []
    res_dir = Path(args.results)
    figs = res_dir / "frontier_files"
    figs.mkdir(parents=True, exist_ok=True)
    for png in (out / "report_files").glob("*.png"):
        shutil.copyfile(png, figs / png.name)
    interleaved = json.loads((out / "bench" / "interleaved.json").read_text()) if files else \
        {"environment": {**prov["environment"], "note": "no timing in this run"}, "rounds": 0,
         "iters_per_round": 0, "warmup": 0, "seconds": 0}
    meta = {"command": prov["command"], "commit": prov["git_commit"], "vary": vary,
            "recipe": "benchmarks/recipes/frontier.yaml",
            "data": {k: v for k, v in env.items()}, "environment": interleaved["environment"],
            "sweep_seconds_this_run": round(sweep_s, 1), "timing": {k: interleaved[k] for k in
                                                                  ("rounds", "iters_per_round", "warmup", "seconds")},
            "variants": [r.to_dict() for r in results], "table": rep["rows"], "frontier": rep["frontier"],
            "dominance_b8": [dict(zip(("combined", "single", "macs_ratio", "agreement_gain", "latency_ratio"), d))
                             for d in dom],
            "peer": {k: v for k, v in peer.items() if k != "per_image"},
            "beats_peer": [dict(zip(("variant", "agreement_gain", "latency_ratio_b1", "latency_ratio_b8",
                                     "latency_ratio_b32"), d)) for d in over_peer]}
    lines = ["# DeiT-Tiny frontier: slim budgets × lowrank, FP32 and INT8 (2-core CPU)", "",
             f"The HTML report with the same plots is written to `{out}/report.html` by the command below. "
             f"Machine: {interleaved['environment'].get('cpu')} "
             f"({interleaved['environment'].get('physical_cores')} physical cores, shared by other jobs), no GPU.",
             "",
             f"Variants: `vitopt sweep benchmarks/recipes/frontier.yaml --vary {' --vary '.join(vary)}` — one 24-step "
             "slim search shared by every budget, no recovery, lowrank on 64 calibration images; every variant also "
             f"exported as {QUANT} (ONNX Runtime INT8, 7-bit per-channel weights, activations per batch), a row of "
             "its own with that graph's agreement. Accuracy: "
             "../shared/data/imagenet-mini/val (491 images, one image = 0.2 points); agreement = same top-1 as dense. "
             + ("Latency: ONNX Runtime (the FP32, INT8 and peer files), 2 threads, every file timed round-robin in one locked run "
              f"({interleaved['rounds']} rounds × {interleaved['iters_per_round']} iterations per batch). "
              if files else "") + "Engines: TensorRT for RTX, built on CPU (profile 1/8/32), memory from the builder.",
             "",
             markdown_table(rep["rows"]), "## Does a combined variant dominate?", ""]
    if not files:
        lines[-1:-1] = ["Latency: not measured in this run (--no-timing), so the latency columns are empty and "
                        "the dominance check below cannot hold.", ""]
    def ms(b):
        v = peer["latency"].get(b)
        return "–" if v is None else f"{v:.2f}"
    peer_rows = ["## The peer (reference row)", "",
                 "ONNX Runtime `quantize_dynamic(per_channel=True, weight_type=QInt8)` on the dense FP32 export, "
                 "evaluated on the same images, timed in the same interleaved run.", "",
                 "| peer | top-1 % | agreement % | " + " | ".join(f"onnxruntime b{b} ms" for b in BATCHES) + " |",
                 "|---|---|---|" + "---|" * len(BATCHES),
                 f"| {PEER} | {peer['top1']:.2f} | {peer['agreement']:.2f} | "
                 + " | ".join(ms(b) for b in BATCHES) + " |", ""]
    if over_peer:
        peer_rows += ["vitopt rows with higher agreement than the peer at no higher latency at batch 1, 8 and 32:", ""]
        peer_rows += [f"- {n}: agreement +{a:.2f} points, latency ×{x1:.3f} / ×{x8:.3f} / ×{x32:.3f}"
                      for n, a, x1, x8, x32 in over_peer]
    else:
        peer_rows += ["No vitopt row has higher agreement than the peer at no higher latency at every batch in this "
                      "run" + ("" if peer["latency"] else " (latency not measured)") + "."]
    at = lines.index("## Does a combined variant dominate?")
    lines[at:at] = peer_rows + [""]
    if dom:
        lines += ["At no more MACs, higher agreement and no higher ORT latency at batch 8 (INT8 counts as a method):", ""]
        lines += [f"- {c} over {s}: MACs ×{m:.3f}, agreement +{a:.2f} points, latency ×{lr:.3f}" for c, s, m, a, lr in dom]
    else:
        lines += ["No: no combined (slim + lowrank) variant has higher agreement at no more MACs and no higher "
                  "latency than a single-method variant in this run; see the table for where it falls short."]
    if args.finished_only:
        from optimizer.sweep.results import unfinished
        missing = unfinished(out)
        if missing:
            lines += ["", f"Incomplete: this run reports the {len(results)} variants finished in {out}; "
                      f"planned but not finished: {', '.join(missing)}. Rerun without --finished-only to "
                      "finish them (the sweep resumes, the slim search is done)."]
    lines += ["", "## Plots", ""] + [f"![{p.stem}](frontier_files/{p.name})" for p in sorted(figs.glob("*.png"))]
    write_result(res_dir / "frontier", meta, lines, prov=prov)
    print(markdown_table(rep["rows"]))
    print(f"frontier: {res_dir / 'frontier.md'}, report {rep['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

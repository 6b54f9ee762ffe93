"""The DeiT-Tiny frontier: a sweep over slim budgets with and without lowrank, one report.

    python benchmarks/frontier.py            # sweep (resumes build/frontier), time, report
    python benchmarks/frontier.py --html     # also leave build/frontier/report.html (self-contained)

1. ``vitopt sweep benchmarks/recipes/frontier.yaml --vary slim.macs=off,0.5,0.6,0.75,0.9
   --vary lowrank.params=off,0.9 -o build/frontier``: dense, 4 slim budgets (one shared search),
   lowrank 0.9 alone and after each slim budget; each variant evaluated on imagenet-mini val,
   exported, engines built with TensorRT for RTX.
2. Every variant's FP32 ONNX file is timed with ONNX Runtime at batch 1/8/32, interleaved
   round-robin in one run under /tmp/vitopt-heavy.lock (ratios between variants measured side by
   side); the rows are merged into the sweep's report as a bench file per variant.
3. ``vitopt report``'s table and plots, plus the dominance check: does a combined variant beat
   every single-method variant at no more MACs (higher agreement, no higher latency)?
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
SLIM = "off,0.5,0.6,0.75,0.9"      # slim MACs budgets (off: no slim step)
LOWRANK = "off,0.9"                # lowrank params budgets
BATCHES = (1, 8, 32)
LOCK = "/tmp/vitopt-heavy.lock"


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


def time_variants(out: Path, rounds: int, iters: int, lock_timeout_s: float = 3600) -> dict:
    """Interleaved ORT FP32 latency of every finished variant; returns {variant: bench-file path}."""
    from optimizer.bench import interleaved_latency
    from optimizer.bench.report import FORMAT, VERSION
    from optimizer.fileio import write_json
    from optimizer.runners import OrtRunner
    from optimizer.sweep.sweep import read_sweep, variant_dir
    names = [v["name"] for v in read_sweep(out)["variants"] if v["finished"]]
    names.sort(key=lambda n: n != "dense")           # dense first: the reference of the ratios
    runners = {n: OrtRunner(variant_dir(out, n) / "model.onnx", threads=2, name=n) for n in names}
    with open(LOCK, "w") as lk:
        print(f"frontier: waiting for {LOCK} ...", file=sys.stderr, flush=True)
        _acquire(lk, lock_timeout_s)
        t0 = time.perf_counter()
        res = interleaved_latency(runners, BATCHES, rounds=rounds, iters_per_round=iters, warmup=2)
        res["seconds"] = round(time.perf_counter() - t0, 1)
    files = {}
    env = res["environment"]
    for n in names:
        rows = [{**r, "device": "cpu", "env": env} for r in res["rows"] if r["name"] == n]
        f = out / "bench" / f"{n}.json"
        write_json(f, {"format": FORMAT, "version": VERSION, "rows": rows,
                       "target": f"variants/{n}/model.onnx", "interleaved": {k: res[k] for k in
                                                                           ("rounds", "iters_per_round", "warmup")}})
        files[n] = f
    write_json(out / "bench" / "interleaved.json", res)
    return files


def dominance(results, batch: int = 8) -> list:
    """(combined, single, macs ratio, agreement gain, latency ratio) where the combined variant has no more
    MACs, higher agreement and no higher latency at ``batch`` than a single-method variant."""
    def methods(r):
        return [k for s in r.steps for k in s if k in ("slim", "lowrank", "gates", "distill")]
    out = []
    for c in results:
        if len(methods(c)) < 2 or c.agreement is None:
            continue
        for s in results:
            if len(methods(s)) != 1 or s.agreement is None:
                continue
            lc, ls = c.latency_ms("onnxruntime", batch), s.latency_ms("onnxruntime", batch)
            if c.macs <= s.macs and c.agreement > s.agreement and lc is not None and ls is not None and lc <= ls:
                out.append((c.name, s.name, c.macs / s.macs, c.agreement - s.agreement, lc / ls))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/frontier", help="sweep directory (resumed)")
    ap.add_argument("--slim", default=SLIM, help=f"slim.macs values (default {SLIM})")
    ap.add_argument("--lowrank", default=LOWRANK, help=f"lowrank.params values (default {LOWRANK})")
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
    t0 = time.perf_counter()
    if not args.finished_only:
        run_sweep(load_recipe("benchmarks/recipes/frontier.yaml"), [parse_vary(v) for v in vary], out)
    sweep_s = time.perf_counter() - t0
    files = {} if args.no_timing else time_variants(out, args.rounds, args.iters, args.lock_timeout)
    bench = [f"{n}={f}" for n, f in files.items()]
    rep = build_report(out, bench)
    results = sweep_results(out, bench)
    dom = dominance(results)
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
                             for d in dom]}
    lines = ["# DeiT-Tiny frontier: slim budgets × lowrank (2-core CPU)", "",
             f"The HTML report with the same plots is written to `{out}/report.html` by the command below. "
             f"Machine: {interleaved['environment'].get('cpu')} "
             f"({interleaved['environment'].get('physical_cores')} physical cores, shared by other jobs), no GPU.",
             "",
             f"Variants: `vitopt sweep benchmarks/recipes/frontier.yaml --vary {' --vary '.join(vary)}` — one 24-step "
             "slim search shared by every budget, no recovery, lowrank on 64 calibration images. Accuracy: "
             "../shared/data/imagenet-mini/val (491 images, one image = 0.2 points); agreement = same top-1 as dense. "
             + ("Latency: ONNX Runtime FP32, 2 threads, every variant timed round-robin in one locked run "
              f"({interleaved['rounds']} rounds × {interleaved['iters_per_round']} iterations per batch). "
              if files else "") + "Engines: TensorRT for RTX, built on CPU (profile 1/8/32), memory from the builder.",
             "",
             markdown_table(rep["rows"]), "## Does a combined variant dominate?", ""]
    if not files:
        lines[-1:-1] = ["Latency: not measured in this run (--no-timing), so the latency columns are empty and "
                        "the dominance check below cannot hold.", ""]
    if dom:
        lines += ["At no more MACs, higher agreement and no higher ORT latency at batch 8:", ""]
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

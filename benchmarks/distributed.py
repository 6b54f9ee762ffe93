"""Wall time of every training/statistics loop in 1 vs 2 processes (torchrun, gloo, CPU) on DeiT-Tiny.

Each loop runs once per world size, interleaved (1 then 2 processes for a loop before the next loop),
with the same global batches: the 2-process run computes what the 1-process run computes (tests/
distributed/ checks it), so the ratio is the speed-up of the split alone. The machine's cores are
shared between the processes (1 process: all torch threads; N processes: cores / N threads each), so
on a 2-core machine the ratio shows the overhead of the split, not the gain of a second machine.

    flock /tmp/vitopt-heavy.lock python benchmarks/distributed.py \\
        --weights ../shared/weights/deit_tiny_patch16_224.pth --data ../shared/data/imagenet-mini/train

Results: benchmarks/results/distributed.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import ROOT, SHARED, relative, write_result  # noqa: E402

ARCH = "deit_tiny_patch16_224"
LOOPS = ("slim_search", "taylor", "lowrank_calibration", "gates", "recover")


def run_loop(name: str, model, data: str, batch: int, steps: int, images: int, work_dir: str):
    """Run loop ``name`` once; returns (seconds of the loop alone, images it processed)."""
    import torch
    from optimizer.compress.config import RecoveryConfig
    from optimizer.compress.registry import CompressContext, get_method
    from optimizer.distributed import rank_world
    teacher = copy.deepcopy(model).eval()
    ctx = CompressContext(calib_dir=data, teacher=teacher, device="cpu", workers=0, seed=0, work_dir=None,
                          log=lambda s: None)
    none = RecoveryConfig(loss="none")
    t0 = time.perf_counter()
    if name == "slim_search":
        from optimizer.methods.slim import SlimConfig, search_masks
        search_masks(model, SlimConfig(macs_ratio=0.75, steps=steps, batch_size=batch, recovery=none), ctx, teacher)
        done = steps * batch
    elif name == "taylor":
        from optimizer.methods.slim.baseline import taylor_importance
        taylor_importance(model, ctx, batch_size=batch, batches=steps)
        done = steps * batch
    elif name == "lowrank_calibration":
        from optimizer.methods.lowrank import LowRankConfig
        get_method("lowrank").apply(model, LowRankConfig(params_ratio=0.8, calib_images=images, batch_size=batch,
                                                         recovery=none), ctx)
        done = images
    elif name == "gates":
        from optimizer.methods.gates import GatesConfig
        get_method("gates").apply(model, GatesConfig(macs_ratio=0.7, steps=steps, batch_size=batch,
                                                     calib_images=images, calib_groups=(batch,), recovery=none), ctx)
        done = steps * batch + images
    elif name == "recover":
        from optimizer.distill import DistillConfig, recover
        recover(model, teacher, ctx, DistillConfig(steps=steps, batch_size=batch, eval_at_start=False))
        done = steps * batch
    else:
        raise SystemExit(f"unknown loop {name}")
    return time.perf_counter() - t0, done, rank_world()[1], torch.get_num_threads()


def worker(args) -> None:
    import torch
    from optimizer.distributed import process_group
    from optimizer.models.loading import load_model
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, args.cores // world))
    with process_group("cpu") as group:
        model = load_model(ARCH, args.weights).model.eval()
        seconds, done, w, threads = run_loop(args.worker, model, args.data, args.batch, args.steps, args.images,
                                             args.work_dir)
        if group.main:
            print("RESULT " + json.dumps({"loop": args.worker, "world": w, "seconds": round(seconds, 2),
                                          "images": done, "threads_per_process": threads}), flush=True)


def launch(args, loop: str, world: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           str(Path(__file__).resolve()), "--worker", loop, "--weights", args.weights, "--data", args.data,
           "--batch", str(args.batch), "--steps", str(args.steps), "--images", str(args.images),
           "--cores", str(args.cores)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, args.cores // world))}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{loop} x{world} failed ({p.returncode}): {p.stderr.strip().splitlines()[-3:]}")
    row = json.loads(lines[-1][len("RESULT "):])
    row["process_wall_s"] = round(wall, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "weights" / "deit_tiny_patch16_224.pth"))
    ap.add_argument("--data", default=str(SHARED / "data" / "imagenet-mini" / "train"))
    ap.add_argument("--batch", type=int, default=16, help="global batch")
    ap.add_argument("--steps", type=int, default=6, help="steps (batches for taylor) per loop")
    ap.add_argument("--images", type=int, default=64, help="calibration images (lowrank, gates)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="cores shared by the processes")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed"))
    ap.add_argument("--rows", help="write the report from the JSON rows an interrupted run printed (one per line) "
                    "instead of running")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    rows = []
    if args.rows:
        rows = [json.loads(ln) for ln in Path(args.rows).read_text().splitlines() if ln.startswith("{")]
    else:
        for loop in args.loops.split(","):
            for world in (1, 2):
                rows.append(launch(args, loop, world))
                print(json.dumps(rows[-1]), file=sys.stderr)
    by = {(r["loop"], r["world"]): r for r in rows}
    table = []
    for loop in args.loops.split(","):
        if (loop, 1) not in by or (loop, 2) not in by:
            continue      # an interrupted run (--rows) did not reach this loop in both world sizes
        one, two = by[(loop, 1)], by[(loop, 2)]
        table.append({"loop": loop, "images": one["images"], "seconds_1": one["seconds"], "seconds_2": two["seconds"],
                      "ratio_2_over_1": round(two["seconds"] / one["seconds"], 3)})
    data = {"model": ARCH, "weights": relative(args.weights), "data": relative(args.data), "batch": args.batch,
            "steps": args.steps, "calib_images": args.images, "cores": args.cores, "runs": rows, "table": table}
    md = ["# Loops in 1 vs 2 processes (torchrun, gloo, CPU)", "",
          f"DeiT-Tiny ({relative(args.weights)}), images from {relative(args.data)}, global batch {args.batch}, "
          f"{args.steps} steps per training loop, {args.images} calibration images. Both world sizes compute the same "
          f"result (tests/distributed/). The {args.cores} cores are shared: 1 process uses {args.cores} torch threads, "
          f"2 processes use {max(1, args.cores // 2)} each, so this measures the cost of the split on one machine; "
          "a second GPU or node is what makes it faster. Seconds are the loop alone (model loading excluded), "
          "one run each, 1 and 2 processes interleaved per loop.", "",
          f"1-minute load average when the report was written: {os.getloadavg()[0]:.1f} on {args.cores} cores. "
          "Other jobs shared the machine, so single runs swing by several times: read the ratios as noisy.", "",
          "| loop | images | 1 process (s) | 2 processes (s) | 2 / 1 |", "|---|---:|---:|---:|---:|"]
    for t in table:
        md.append(f"| {t['loop']} | {t['images']} | {t['seconds_1']} | {t['seconds_2']} | {t['ratio_2_over_1']} |")
    write_result(args.out, data, md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

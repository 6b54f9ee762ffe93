"""Gates with and without reconstruction on DeiT-Tiny: slim 0.75 -> gates at 0.6 of dense MACs, against static slim 0.6.

The gated model is trained once (reconstruction off, no fine-tune) by the product CLI; this script
then applies each reconstruction mode to a copy of it with the gates step's own function
(``optimizer.methods.gates.method.reconstruct_gates``: re-fit under the gate decisions at the config's
``calib_groups``, then recalibration and static pruning) and evaluates every row on the val split at
inference batch 1 and 64 (a gate decides per batch): top-1 agreement with dense (± its standard
error), top-1, executed MACs ratio (64 val images, at that batch), params ratio, reconstruction CPU
minutes. Teacher of the reconstruction = the dense DeiT-Tiny (as in a recipe ``slim -> gates``).
Rows are measured by ``benchmarks/reconstruct.py``'s ``measure_row`` (one measurement for both tables).

    flock /tmp/vitopt-heavy.lock vitopt compress --method slim --model deit_tiny_patch16_224 \\
        --checkpoint ../shared/weights/deit_tiny_patch16_224.pth --calib ../shared/data/imagenet-mini/train \\
        --macs 0.6 --set steps=24 --set batch_size=32 --set recovery=none --work-dir W -o build/gates-bench/slim060
    flock /tmp/vitopt-heavy.lock vitopt compress --method gates --model build/gates-bench/slim075 \\
        --calib ../shared/data/imagenet-mini/train --macs 0.7982 --set recovery=none --set reconstruct=none \\
        -o build/gates-bench/gates-none
    flock /tmp/vitopt-heavy.lock python benchmarks/gates_reconstruct.py --modes none,closed_form

On a shared 2-core machine prefix each with ``OMP_NUM_THREADS=1``: batch-1 gate calibration with two
threads each on oversubscribed cores ran ~1 image/s (measured 2026-11-29), several times slower.
(slim075 = a slim 0.75-MACs model from the same 24-step search, e.g. ``make demo``'s
variants/slim-macs0.75/compressed; gates ``--macs`` is relative to the model entering the step:
0.7982 x 0.7517 = 0.600 of dense.)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.errors import VitoptError  # noqa: E402
from _harness import SHARED, provenance, relative, write_result  # noqa: E402

ARCH = "deit_tiny_patch16_224"
BENCH = ROOT / "build" / "gates-bench"


def _row_lines(name: str, row: dict) -> list:
    out = []
    for b, e in row["by_batch"].items():
        out.append(f"| {name} | {b} | {e['macs_ratio']:.3f} | {row['params_ratio']:.3f} | "
                   f"{e['agreement']:.1f} ± {e['agreement_se']:.1f} | {e['top1']:.1f} | "
                   f"{row.get('cpu_minutes', 0.0):.1f} |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(SHARED / "weights" / "deit_tiny_patch16_224.pth"))
    p.add_argument("--train", default=str(SHARED / "data" / "imagenet-mini" / "train"))
    p.add_argument("--val", default=str(SHARED / "data" / "imagenet-mini" / "val"))
    p.add_argument("--gated", default=str(BENCH / "gates-none"), help="gates output, reconstruct none, no fine-tune")
    p.add_argument("--static", default=str(BENCH / "slim060"), help="the static slim model at the same MACs")
    p.add_argument("--entering", default=str(BENCH / "slim075"), help="the model that entered the gates step")
    p.add_argument("--modes", default="none,closed_form", help="reconstruction modes of the gated rows")
    p.add_argument("--images", type=int, default=512, help="reconstruction calibration images")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(BENCH))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gates_reconstruct"))
    args = p.parse_args(argv)
    from reconstruct import measure_row
    from slim import Clock
    from optimizer.compress import CompressContext
    from optimizer.methods.gates import GatesConfig
    from optimizer.methods.gates.method import reconstruct_gates
    from optimizer.models.loading import load_compressed, load_model
    from optimizer.reconstruct import ReconstructConfig
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(args.work)
    dense = load_model(ARCH, args.weights).model.eval().requires_grad_(False)
    rows = {}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    for name, path in (("static slim 0.6", args.static), ("slim 0.75 (entering gates)", args.entering)):
        # a static model computes each image alone: its figures are the same at every batch size
        log(f"measuring {name}")
        rows[name] = measure_row(load_compressed(path).model.eval(), dense, args, work, [max(batches)])
    gated = load_compressed(args.gated)
    step = gated.recipe["steps"][-1]
    if step["method"] != "gates":
        raise VitoptError(f"{args.gated} does not end with a gates step")
    base_cfg = GatesConfig.from_dict(step["config"])
    for mode in args.modes.split(","):
        model = copy.deepcopy(gated.model).eval()
        cfg = dataclasses.replace(base_cfg, reconstruct=ReconstructConfig(mode=mode, images=args.images))
        ctx = CompressContext(calib_dir=args.train, teacher=dense, workers=args.workers, seed=args.seed, log=log)
        with Clock() as clock:
            report = reconstruct_gates(model, dense, ctx, cfg)
        log(f"measuring gates, reconstruct {mode}")
        row = measure_row(model, dense, args, work, batches)
        row.update(cpu_minutes=clock.cpu / 60, wall_minutes=clock.wall / 60, reconstruct=report)
        rows[f"gates 0.6, reconstruct {mode}"] = row
    for r in rows.values():      # per-image vectors stay out of the committed JSON (491 x rows)
        for e in r["by_batch"].values():
            e.pop("per_image", None)
    prov = provenance(argv)
    md = ["# Gates reconstruction on DeiT-Tiny (issue 20)", "",
          f"slim 0.75 -> gates at 0.6 of dense MACs (gate config: {step['config'].get('steps') or 'default'} "
          f"training steps, epochs {step['config'].get('epochs')}, batch {step['config'].get('batch_size')}, "
          f"calib_groups {list(base_cfg.calib_groups)}, no fine-tune), against the static slim 0.6 model. "
          f"Calibration: {relative(args.train)} (reconstruction: {args.images} images, 10 % held out); "
          f"report: {relative(args.val)}. Agreement = top-1 agreement with dense (± SE); MACs ratio executed "
          "at that inference batch on 64 val images; CPU min: reconstruction + recalibration only. Static "
          "rows are measured at the largest batch (their outputs do not depend on it).", "",
          "| row | batch | MACs ratio | params ratio | agreement % ± SE | top-1 % | CPU min |",
          "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        md += _row_lines(name, row)
    data = {"context": {"arch": ARCH, "train": relative(args.train), "val": relative(args.val),
                        "images": args.images, "gated": relative(args.gated), "static": relative(args.static),
                        "gates_config": step["config"]},
            "rows": json.loads(json.dumps(rows, default=str))}
    write_result(args.out, data, md, prov=prov)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except VitoptError as e:     # bad input: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)

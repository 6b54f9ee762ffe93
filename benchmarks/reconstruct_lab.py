"""Method-level evidence for the reconstruction defaults: DeiT-Tiny compressed three ways, each
without / with closed-form / with block-wise reconstruction (``optimizer.reconstruct``), calibrated
on the train split, reported on the val split (agreement with dense, top-1) with the CPU minutes
the reconstruction took (process CPU time, all threads).

Rows (the compressed starting points):
    slim_macs075_tokens    slim 0.75 MACs with the learned token drop: an existing compressed
                           directory (``--slim-dir``, e.g. a demo sweep's slim-macs0.75/compressed)
    slim_params075_struct  slim at 0.75 params, structure only (``prune_tokens=false``; the
                           search-free Taylor importance, so no mask search is run here)
    lowrank_params075      lowrank 0.75 params (its defaults)

One process per row writes a part file; ``--collect`` writes the table:

    python benchmarks/reconstruct_lab.py --row lowrank_params075 --parts build/reconstruct_lab
    python benchmarks/reconstruct_lab.py --collect --parts build/reconstruct_lab

(``--modes blockwise --parts OTHER`` runs one mode in its own process; ``--collect --parts A,B`` merges.)
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

from _harness import provenance, relative, scrub, write_result  # noqa: E402

SHARED = ROOT.parent / "shared"
ROWS = ("slim_macs075_tokens", "slim_params075_struct", "lowrank_params075")
MODES = ("none", "closed_form", "blockwise")


def _base(row: str, dense, args, ctx):
    """The unreconstructed compressed model of ``row`` and a description of it."""
    from optimizer.compress.config import RecoveryConfig
    from optimizer.models.loading import load_compressed
    no_fix = dict(recovery=RecoveryConfig(loss="none"))
    if row == "slim_macs075_tokens":
        return load_compressed(args.slim_dir).model, f"compressed directory {relative(str(Path(args.slim_dir).resolve()))}"
    model = copy.deepcopy(dense)
    if row == "slim_params075_struct":
        from optimizer.methods.slim.config import SlimConfig
        from optimizer.methods.slim.method import apply
        cfg = SlimConfig(params_ratio=0.75, prune_tokens=False, importance="taylor", **no_fix)
    else:
        from optimizer.methods.lowrank.apply import apply
        from optimizer.methods.lowrank.config import LowRankConfig
        cfg = LowRankConfig(params_ratio=0.75, **no_fix)
    res = apply(model, cfg, ctx)
    return res.model, f"{cfg.method} {json.dumps({k: v for k, v in cfg.to_dict().items() if k in ('params_ratio', 'prune_tokens', 'importance')})}"


def run_row(args) -> dict:
    from optimizer.compress.registry import CompressContext
    from optimizer.counting import count_macs, count_params
    from optimizer.data import build_loader
    from optimizer.evaluation import evaluate
    from optimizer.models.loading import load_model
    from optimizer.reconstruct import ReconstructConfig, reconstruct_model
    torch.manual_seed(0)
    dense = load_model("deit_tiny_patch16_224", args.checkpoint).model.eval()
    ctx = CompressContext(calib_dir=args.calib, teacher=dense, workers=args.workers, seed=0)
    base, what = _base(args.row, dense, args, ctx)
    dm, dp = count_macs(dense).macs, count_params(dense)
    cache = Path(args.parts) / f"dense_val_logits-{args.row}.pt"
    out = {"row": args.row, "start": what, "macs_ratio": round(count_macs(base).macs / dm, 4),
           "params_ratio": round(count_params(base) / dp, 4), "modes": {}}
    for mode in args.modes.split(","):
        model = copy.deepcopy(base)
        cfg = ReconstructConfig(mode=mode, images=args.images, **({"steps": args.steps} if args.steps else {}))
        c0, w0 = time.process_time(), time.perf_counter()
        rep = reconstruct_model(model, dense, ctx, cfg)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        loader = build_loader(args.val, model, batch_size=64, labeled=True, workers=args.workers)
        ev = evaluate(model, loader, reference=dense, reference_cache=cache)
        kept = [b.get("kept") for b in rep.get("blocks", [])]
        out["modes"][mode] = {"config": cfg.to_dict(), "agreement": ev.agreement, "top1": ev.top1,
                              "reference_top1": ev.reference_top1, "mean_kl": ev.mean_kl, "images": ev.images,
                              "cpu_minutes": round(cpu / 60, 2), "wall_minutes": round(wall / 60, 2),
                              "blocks_kept": kept, "report": rep}
        print(f"{args.row} {mode}: agreement {ev.agreement:.2f} top1 {ev.top1:.2f} "
              f"cpu {cpu / 60:.1f} min kept {kept}", flush=True)
        _write_part(args, out)      # after every mode: a long row killed late still leaves its rows
    return out


def _write_part(args, out: dict) -> None:
    from optimizer.fileio import write_json
    out["command"] = provenance()["command"]
    write_json(Path(args.parts) / f"row-{args.row}.json", scrub(out))


def part_from_log(log_path: str, row: str, command: str) -> dict:
    """A part rebuilt from a row's log (its per-mode result lines and per-block lines), for a row process
    stopped before it wrote its part file; the part says so ("source")."""
    import re
    out = {"row": row, "start": "see the row's command", "macs_ratio": None, "params_ratio": None, "modes": {},
           "command": command, "source": f"log {relative(str(Path(log_path).resolve()))}"}
    blocks: list = []
    for line in Path(log_path).read_text().splitlines():
        m = re.match(r"reconstruct: block (\d+): held-out error (\S+) -> (\S+) \((.*), (\S+) s\)", line)
        if m:
            kept = [] if m.group(4) == "rolled back" else m.group(4).split("+")
            blocks.append({"block": int(m.group(1)), "error_before": float(m.group(2)),
                           "error_after": float(m.group(3)), "kept": kept, "seconds": float(m.group(5))})
        m = re.match(rf"{row} (\w+): agreement (\S+) top1 (\S+) cpu (\S+) min kept", line)
        if m:
            out["modes"][m.group(1)] = {"agreement": float(m.group(2)), "top1": float(m.group(3)), "mean_kl": None,
                                        "cpu_minutes": float(m.group(4)), "blocks_kept": [b["kept"] for b in blocks],
                                        "report": {"blocks": blocks}}
            blocks = []
    return out


def collect(args) -> None:
    """One table from the part files of every ``--parts`` folder (comma-separated: rows whose modes
    were run by separate processes are merged, the modes in MODES order)."""
    merged: dict = {}
    for folder in args.parts.split(","):
        for f in sorted(Path(folder).glob("row-*.json")):
            p = json.loads(f.read_text())
            have = merged.setdefault(p["row"], {**p, "modes": {}, "commands": []})
            for k in ("start", "macs_ratio", "params_ratio", "source"):   # a full part's fields win over a log's
                if p.get(k) is not None and (have.get(k) is None or not p.get("source")):
                    have[k] = p[k]
            have["modes"].update(p["modes"])
            have["commands"].append(p["command"])
    parts = sorted(merged.values(), key=lambda p: ROWS.index(p["row"]))
    for p in parts:
        p["modes"] = {m: p["modes"][m] for m in MODES if m in p["modes"]}
    md = ["# Reconstruction on DeiT-Tiny: without / closed form / block-wise", "",
          "Calibration: imagenet-mini train (evenly spaced images, 10 % held out to accept or roll back "
          "each block's update); report: imagenet-mini val (491 images), agreement = top-1 class equal to "
          "the dense model's. CPU minutes: process CPU time of the reconstruction (all threads), "
          "measured while other jobs shared the 2 cores.", "",
          "| start | MACs | params | mode | agreement % | top-1 % | mean KL | CPU min | blocks kept |",
          "|---|---|---|---|---|---|---|---|---|"]
    for p in parts:
        for mode, r in p["modes"].items():
            kept = sum(bool(k) for k in r["blocks_kept"]) if r["blocks_kept"] else "-"
            kl = "-" if r.get("mean_kl") is None else f"{r['mean_kl']:.3f}"
            md.append(f"| {p['row']} | {p['macs_ratio']} | {p['params_ratio']} | {mode} | {r['agreement']:.1f} | "
                      f"{r['top1']:.1f} | {kl} | {r['cpu_minutes']} | {kept} |")
    md += ["", "Starting points:", ""] + [f"- {p['row']}: {p['start']}" for p in parts]
    md += [f"- {p['row']}: some modes rebuilt from {p['source']} (no mean KL there)" for p in parts if p.get("source")]
    md += ["", "Row commands (then `--collect`):", ""] + [f"- `{c}`" for p in parts for c in p["commands"]]
    write_result(ROOT / "benchmarks" / "results" / "reconstruct_lab", {"rows": parts}, md)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", choices=ROWS)
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--from-log", help="write --row's part from this log (a row stopped before its part file)")
    ap.add_argument("--log-command", default="", help="with --from-log: the command that wrote the log")
    ap.add_argument("--parts", default="build/reconstruct_lab")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="block-wise Adam steps (default: the config's)")
    ap.add_argument("--checkpoint", default=str(SHARED / "weights" / "deit_tiny_patch16_224.pth"))
    ap.add_argument("--calib", default=str(SHARED / "data" / "imagenet-mini" / "train"))
    ap.add_argument("--val", default=str(SHARED / "data" / "imagenet-mini" / "val"))
    ap.add_argument("--slim-dir", default=str(ROOT.parent / "main" / "build" / "demo" / "variants" /
                                              "slim-macs0.75" / "compressed"))
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    if args.collect:
        return collect(args)
    if args.from_log:
        from optimizer.fileio import write_json
        Path(args.parts).mkdir(parents=True, exist_ok=True)
        return write_json(Path(args.parts) / f"row-{args.row}.json",
                          scrub(part_from_log(args.from_log, args.row, args.log_command)))
    if not args.row:
        ap.error("give --row or --collect")
    Path(args.parts).mkdir(parents=True, exist_ok=True)
    run_row(args)


if __name__ == "__main__":
    main()

"""slim's budget allocation on DeiT-Tiny: merge-mode candidates ranked by KL as merged vs after reconstruction.

Rows: slim at each MACs budget with ``token_mode: merge`` and ``allocate: kl`` / ``reconstructed``, all
from ONE cached mask search (the demo sweep's settings, 24 steps; ``--search-dir`` a copy of a demo
sweep's ``shared/slim-*``), reconstruction at the product default (auto: closed form on 512 images),
no gradient recovery. Calibration: the train folder; reported: val agreement with the dense model.

    flock /tmp/vitopt-heavy.lock python benchmarks/slim_allocation.py \\
        --weights ../shared/weights/deit_tiny_patch16_224.pth --train ../shared/data/imagenet-mini/train \\
        --val ../shared/data/imagenet-mini/val --search-dir build/alloc_search --budgets 0.75 0.5 0.6

Results: benchmarks/results/slim_allocation.{json,md}; rows are cached in ``--work``/state.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _harness import provenance, write_result  # noqa: E402
from optimizer.compress.config import RecoveryConfig  # noqa: E402
from optimizer.fileio import write_json  # noqa: E402
from optimizer.methods.slim import SlimConfig  # noqa: E402
# the token-merge benchmark's dense model, val evaluation and (demo sweep) search settings: same rows, same numbers
from token_merge import DEMO_SEARCH, dense_model, slim_row  # noqa: E402


def run_rows(args, state):
    dense = dense_model(args)
    rows = state.setdefault("rows", {})
    for budget in args.budgets:
        for allocate in args.allocate:
            mode = "drop" if allocate == "drop" else "merge"     # drop: the learned token drop, for reference
            name = f"slim{budget:g}_drop" if mode == "drop" else f"slim{budget:g}_merge_{allocate}"
            if name in rows:
                continue
            cfg = SlimConfig(macs_ratio=budget, token_mode=mode, allocate="kl" if mode == "drop" else allocate,
                             recovery=RecoveryConfig(loss="none"), **DEMO_SEARCH)
            cm, row = slim_row(cfg, dense, args)
            rep = cm.steps[0]["report"]
            row.update({"norms": rep.get("norms"), "allocate": rep.get("allocate"),
                        "reconstruct": {k: rep["reconstruct"].get(k) for k in ("mode", "asked", "images", "seconds")}})
            rows[name] = row
            print(name, {k: row[k] for k in ("macs_ratio", "params_ratio", "agreement", "top1", "compress_seconds")},
                  file=sys.stderr)
            write_json(Path(args.work) / "state.json", state)


def _pct(v, se=None):
    return "-" if v is None else (f"{v:.1f} ± {se:.1f}" if se is not None else f"{v:.1f}")


def _cand(c) -> str:
    tag = f"{c['mean_r']:g}{'d' if c['norms'] == 'dense' else ''} (attn {c['attn_width']}, mlp {c['mlp_hidden']})"
    after = c.get("kl_reconstructed")
    return f"{tag}: {c['kl']:.3f}" + (f" → {after:.3f}" if after is not None else "")


def report(args, state):
    prov = provenance()
    lines = ["# slim budget allocation: merge candidates ranked by KL as merged vs after reconstruction (DeiT-Tiny)", "",
             f"Calibration {args.train}, val {args.val} (agreement = share of val images whose top-1 equals the dense "
             "model's, ± its standard error). One mask search for every row (24 steps, frozen weights, the demo "
             "sweep's settings, cached); `token_mode: merge`; reconstruction at the default (auto = closed form on "
             "512 images) on the chosen model; no gradient recovery. `allocate: kl` scores each candidate by its KL "
             "to dense on 64 shuffled calibration images as sliced and merged; `allocate: reconstructed` slices each "
             "split, reconstructs it in closed form on 128 calibration images, merges it and scores it on 64 other "
             "calibration images (only the norm source with the lower KL before reconstruction is reconstructed). "
             "`_drop` rows: `token_mode: drop` from the same search (reconstruction auto = none on a token-dropping "
             "model), for reference.", "",
             "| row | MACs ratio | params ratio | agreement % | top-1 % | mean KL | schedule (mean r) | attn / mlp kept | "
             "compress s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in state["rows"].items():
        w = r["widths"]
        attn = sum(x["heads"] * x["head_dim"] for x in w)
        mlp = sum(x["mlp"] for x in w)
        lines.append(f"| {name} | {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
                     f"{_pct(r['agreement'], r['agreement_se'])} | {_pct(r['top1'])} | {r['mean_kl']:.3f} | "
                     f"{sum(r['schedule']) / len(r['schedule']):.2f} | {attn} / {mlp} | {r['compress_seconds']:.0f} |"
                     if r["schedule"] else f"drop | {attn} / {mlp} | {r['compress_seconds']:.0f} |")
    lines += ["", "## Candidates", "", "mean r per block (`d`: dense LayerNorms), kept attention width and MLP hidden "
              "units over all blocks: KL before → after reconstruction; the chosen one in bold.", ""]
    for name, r in state["rows"].items():
        if not r["allocate"]:
            continue
        chosen = r["allocate"]["chosen"]
        lines.append(f"- {name}: " + "; ".join((f"**{_cand(c)}**" if i == chosen else _cand(c))
                                                for i, c in enumerate(r["merge_search"])))
    if args.conclusion:
        lines += ["", "## Conclusion", "", args.conclusion]
    data = {**state, "data": {"train": args.train, "val": args.val, "weights": args.weights}}
    write_result(ROOT / "benchmarks" / "results" / "slim_allocation", data, lines, prov=prov)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--work", default="build/slim_allocation")
    ap.add_argument("--search-dir", default=None, help="slim search work dir (a copy of a demo sweep's shared/slim-*)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.5, 0.6])
    ap.add_argument("--allocate", nargs="+", default=["kl", "reconstructed"], choices=["kl", "reconstructed", "drop"],
                    help="rows per budget: merge with allocate kl / reconstructed, or drop (the learned token drop)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--conclusion", default="")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    p = Path(args.work) / "state.json"
    state = json.loads(p.read_text()) if p.is_file() else {}
    if not args.report_only:
        run_rows(args, state)
    report(args, state)


if __name__ == "__main__":
    main()

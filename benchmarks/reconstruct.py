"""Compression without retraining on DeiT-Tiny: vitopt's methods against Torch-Pruning, same images, same budgets.

Each row is a list of method configs, as in a recipe (``ROWS`` below: one line per row), or a
Torch-Pruning row (``method: torch-pruning``, see ``_tp_peer.py``). Calibration (search, importance,
Taylor gradients, reconstruction, fine-tune) uses the train split, reporting the val split. Per row:
val top-1 agreement with the dense model (with its standard error: the same images go through both),
top-1 (with the paired standard error of its difference to dense), MACs and params ratios (counted
by ``optimizer.counting`` on what executes; input-adaptive rows at each inference batch), and the
process CPU minutes of the compression (search + transform + fine-tune, not the evaluation).

    flock /tmp/vitopt-heavy.lock python benchmarks/reconstruct.py            # every row not yet measured
    flock /tmp/vitopt-heavy.lock python benchmarks/reconstruct.py --rows dense,slim-macs0.75 --images 512

A finished row is cached in ``--work``/rows/<name>.json (keyed by its configs, image count, weights
and data), so a killed run skips it; shared work (one slim mask search serves every slim budget)
is kept in ``--work``/shared. Every run merges its rows into benchmarks/results/reconstruct.{json,md}.
The peer needs ``pip install torch-pruning`` (not a vitopt dependency).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from optimizer.errors import VitoptError  # noqa: E402
from optimizer.fileio import read_json, write_json  # noqa: E402
from _harness import SHARED, provenance, relative, write_result  # noqa: E402

ARCH = "deit_tiny_patch16_224"
FT = "default"   # a row's ``recovery: FT`` = the default fine-tune of slim (one epoch manifold KD, 10 % held out)
NO_FT = "none"
NO_RECON = "none"
PEER = "torch-pruning"

SLIM_BUDGETS = ("macs0.75", "macs0.6", "macs0.5", "params0.75")
LOWRANK_BUDGETS = ("params0.75", "params0.6", "params0.9")
# row-name suffix -> what it adds to a method step: the grid of the issue (with / without reconstruction,
# with / without the fine-tune); "-recon" is block-wise, "-both" the closed form then block-wise
TREATMENTS = {
    "": {"recovery": NO_FT, "reconstruct": NO_RECON},
    "-ft": {"recovery": FT, "reconstruct": NO_RECON},
    "-cf": {"recovery": NO_FT, "reconstruct": "closed_form"},
    "-cf-ft": {"recovery": FT, "reconstruct": "closed_form"},
    "-recon": {"recovery": NO_FT, "reconstruct": "blockwise"},
    "-recon-ft": {"recovery": FT, "reconstruct": "blockwise"},
    "-both": {"recovery": NO_FT, "reconstruct": "both"},
}


def budget_options(tag: str) -> dict:
    """"macs0.75" -> {"macs_ratio": 0.75}."""
    kind, value = re.fullmatch(r"(macs|params)([0-9.]+)", tag).groups()
    return {f"{kind}_ratio": float(value)}


def slim_step(tag: str, treatment: str = "", merge: bool = False) -> dict:
    """A slim step; a MACs budget names its token mode (the rows keep their meaning whatever the default)."""
    mode = {"token_mode": "merge" if merge else "drop"} if tag.startswith("macs") else {}
    return {"method": "slim", **budget_options(tag), **mode, **TREATMENTS[treatment]}


def build_rows() -> dict:
    """name -> {"steps": [method configs]} (+ "eval_batches" for input-adaptive rows), in priority order:
    first what the issue's targets and the product defaults are judged on, then the peer, then the fine-tune
    grid (a run cut short has the rows that matter most)."""
    rows = {"dense": {"steps": []}}

    def add(name, *steps, **spec):
        rows[name] = {"steps": list(steps), **spec}

    # gates' budget is relative to the model entering the step: 0.8 of slim 0.75 = 0.6 of dense
    gates = lambda treatment: {"method": "gates", "macs_ratio": 0.8, **TREATMENTS[treatment]}   # noqa: E731
    peer = lambda importance, tag, ft=False: {"method": PEER, "importance": importance, **budget_options(tag),  # noqa: E731
                                              **({"recovery": FT} if ft else {})}
    # 1. targets and defaults: slim (token drop, token merge), structure-only slim, lowrank, without and with
    #    the closed form; the peer at the same budgets
    for tag in SLIM_BUDGETS:
        add(f"slim-{tag}", slim_step(tag))
        if tag.startswith("macs"):
            add(f"slim-{tag}-merge", {**slim_step(tag, merge=True), "reconstruct": "auto"})
        else:
            add(f"slim-{tag}-cf", slim_step(tag, "-cf"))
    for tag in LOWRANK_BUDGETS:
        add(f"lowrank-{tag}", {"method": "lowrank", **budget_options(tag), **TREATMENTS[""]})
        add(f"lowrank-{tag}-cf", {"method": "lowrank", **budget_options(tag), **TREATMENTS["-cf"]})
    for tag in SLIM_BUDGETS:
        add(f"tp-taylor-{tag}", peer("taylor", tag))
    # 2. block-wise reconstruction where the closed form is not enough; gates on slim
    for tag in LOWRANK_BUDGETS[:2]:
        add(f"lowrank-{tag}-recon", {"method": "lowrank", **budget_options(tag), **TREATMENTS["-recon"]})
        add(f"lowrank-{tag}-both", {"method": "lowrank", **budget_options(tag), **TREATMENTS["-both"]})
    add("slim-params0.75-recon", slim_step("params0.75", "-recon"))
    for treatment in ("", "-cf"):
        add(f"slim-macs0.75-gates-macs0.6{treatment}", slim_step("macs0.75"), gates(treatment), eval_batches=[1, 64])
    # 3. the fine-tune on top of each, and the rest of the grid
    add("slim-macs0.75-ft", slim_step("macs0.75", "-ft"))
    add("slim-macs0.75-merge-ft", {**slim_step("macs0.75", "-ft", merge=True), "reconstruct": "auto"})
    add("lowrank-params0.75-ft", {"method": "lowrank", **budget_options("params0.75"), **TREATMENTS["-ft"]})
    add("lowrank-params0.75-cf-ft", {"method": "lowrank", **budget_options("params0.75"), **TREATMENTS["-cf-ft"]})
    add("slim-params0.75-cf-ft", slim_step("params0.75", "-cf-ft"))
    add("tp-taylor-macs0.75-ft", peer("taylor", "macs0.75", ft=True))
    add("slim-macs0.75-gates-macs0.6-ft", slim_step("macs0.75"), gates("-ft"), eval_batches=[1, 64])
    rest = [(f"slim-{tag}{t}", [slim_step(tag, t)]) for tag in SLIM_BUDGETS for t in ("-ft", "-cf", "-recon", "-recon-ft")]
    rest += [(f"lowrank-{tag}{t}", [{"method": "lowrank", **budget_options(tag), **TREATMENTS[t]}])
             for tag in LOWRANK_BUDGETS for t in ("-ft", "-cf-ft", "-recon", "-recon-ft")]
    rest += [(f"tp-taylor-{tag}-ft", [peer("taylor", tag, ft=True)]) for tag in SLIM_BUDGETS]
    rest += [(f"tp-magnitude-{tag}", [peer("magnitude", tag)]) for tag in SLIM_BUDGETS]
    for name, steps in rest:
        if name not in rows:
            add(name, *steps)
    return rows


ROWS = build_rows()
EVAL_BATCH = 64
MACS_IMAGES = 64          # val images the executed MACs are averaged over (input-adaptive rows)
# the issue's targets: (budget, agreement floor in %); judged on the best measured vitopt row at that budget
TARGETS = [("slim-macs0.75", 95.0), ("slim-macs0.5", 85.0), ("slim-params0.75", 85.0),
           ("lowrank-params0.75", 85.0), ("lowrank-params0.6", 50.0)]


def rows_of(prefix: str) -> list:
    """The row names of one method and budget ("slim-macs0.75": every treatment of it, gates rows excluded)."""
    return [n for n in ROWS if n == prefix or (n.startswith(prefix + "-") and "-gates-" not in n)]


# ---------------------------------------------------------------- rows and their cache

def fine_tune_options() -> dict:
    """The fine-tune every ``FT`` row gets: slim's default recovery (the shared RecoveryConfig)."""
    from dataclasses import fields
    from optimizer.methods.slim import SlimConfig
    return next(f for f in fields(SlimConfig) if f.name == "recovery").default_factory().to_dict()


def resolve_steps(steps: list) -> list:
    """The row's method configs with ``recovery: FT`` spelled out (so the cache key sees its values)."""
    out = []
    for s in steps:
        s = dict(s)
        if s.get("recovery") == FT:
            s["recovery"] = fine_tune_options()
        out.append(s)
    return out


def row_key(spec: dict, context: dict) -> str:
    """Hash of what a row computes: its resolved configs and the run's data, weights and image count."""
    blob = {"steps": resolve_steps(spec["steps"]), "eval_batches": spec.get("eval_batches"), **context}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def cached_row(cache_dir: Path, name: str, key: str):
    """The finished result of row ``name`` computed with ``key``, or None."""
    p = Path(cache_dir) / f"{name}.json"
    if not p.is_file():
        return None
    d = read_json(p, "")
    return d.get("result") if d.get("key") == key else None


def run_rows(names, specs: dict, compute, cache_dir, context: dict, log=print) -> dict:
    """{name: result} for ``names``: cached rows as they are, the others ``compute(name, spec)``d and
    cached at once (a killed run keeps every row it finished)."""
    cache_dir = Path(cache_dir)
    out = {}
    for name in names:
        key = row_key(specs[name], context)
        hit = cached_row(cache_dir, name, key)
        if hit is not None:
            log(f"{name}: cached")
            out[name] = hit
            continue
        log(f"{name}: computing")
        out[name] = compute(name, specs[name])
        write_json(cache_dir / f"{name}.json", {"key": key, "result": out[name]})
    return out


# ---------------------------------------------------------------- data

def calibration_folder(train: str, images, seed: int, work: Path) -> str:
    """``train``, or (``images`` < its size) a folder of links to a seeded random sample of ``images``
    of its files, with the synset list beside it so labels still resolve."""
    from optimizer.data.folder import ImageFolderData
    files = sorted(str(f) for f, _ in ImageFolderData(train, None, labeled=False).samples) if images else []
    if not images or images >= len(files):
        return train
    pick = sorted(random.Random(seed).sample(files, images))
    base = work / f"calib-{images}-seed{seed}"
    root = base / Path(train).name
    if not root.is_dir():
        tmp = base.with_name(base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for f in pick:
            dst = tmp / Path(train).name / Path(f).parent.name / Path(f).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(Path(f).resolve())
        for d in (Path(train), Path(train).parent):
            for lst in d.glob("synset*"):
                if lst.is_file() and not (tmp / lst.name).exists():
                    (tmp / lst.name).symlink_to(lst.resolve())
        shutil.rmtree(base, ignore_errors=True)
        tmp.rename(base)
    return str(root)


# ---------------------------------------------------------------- compression

def _shared_dir(work: Path, opts: dict, prior: list) -> Path:
    """Shared work of a method step: the same for every budget, fine-tune and reconstruction setting
    (a slim mask search or a low-rank calibration pass depends on none of them)."""
    from optimizer.compress.runner import BUDGET_FLAGS
    skip = set(BUDGET_FLAGS) | set(BUDGET_FLAGS.values()) | {"recovery", "reconstruct"}
    own = {k: v for k, v in opts.items() if k not in skip}
    key = hashlib.sha256(json.dumps([prior, own], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return work / "shared" / f"{opts['method']}-{key}"


def _copy_files(src: Path, dst: Path, overwrite: bool) -> None:
    """The top-level files of ``src`` into ``dst`` (a step's own subfolders, e.g. its fine-tune, stay)."""
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and (overwrite or not (dst / f.name).exists()):
            shutil.copy2(f, dst / f.name)


def compress_vitopt(steps: list, dense, calib: str, work: Path, row_dir: Path, args):
    """``dense`` compressed by the row's method configs, one ``compress()`` per step (each with its
    own resumable work dir, seeded from the shared one); returns (model, recipe steps)."""
    from optimizer.compress import CompressContext, compress
    from optimizer.compress.runner import build_config
    model, done = copy.deepcopy(dense), []
    for i, opts in enumerate(resolve_steps(steps)):
        method = opts["method"]
        cfg = build_config(method, {k: v for k, v in opts.items() if k != "method"})
        wd = row_dir / f"{i}-{method}"
        shared = _shared_dir(work, opts, [s["config"] for s in done])
        _copy_files(shared, wd, overwrite=False)
        ctx = CompressContext(calib_dir=calib, teacher=dense, workers=args.workers, seed=args.seed,
                              work_dir=str(wd), log=lambda s: print(s, file=sys.stderr))
        cm = compress(model, [cfg], ctx, arch=args.arch, prior_steps=done)
        model, done = cm.model.eval(), cm.steps
        _copy_files(wd, shared, overwrite=False)
    return model, done


def compress_peer(opts: dict, dense, calib: str, args):
    """Torch-Pruning at the row's budget (ratio matched on ``optimizer.counting``), then the same
    fine-tune as vitopt's rows (``optimizer.distill.recover``) when the row asks for one."""
    from _tp_peer import PeerConfig, accumulate_taylor_grads, match_ratio, prune_vit, require_torch_pruning
    from optimizer.compress import CompressContext
    from optimizer.compress.config import RecoveryConfig
    from optimizer.counting import count_macs
    from optimizer.data import build_loader
    require_torch_pruning()
    opts = {k: v for k, v in opts.items() if k != "method"}
    rec = RecoveryConfig.from_dict(opts.pop("recovery", {"loss": "none"}) if not isinstance(opts.get("recovery"), str)
                                   else {"loss": opts.pop("recovery")})
    cfg = PeerConfig(**opts)
    grads = None
    if cfg.importance == "taylor":
        model = copy.deepcopy(dense).train()
        for p in model.parameters():
            p.requires_grad_(True)
        loader = build_loader(calib, model, batch_size=cfg.taylor_batch_size, workers=args.workers, seed=args.seed)
        grads = accumulate_taylor_grads(model, loader)
    kind, target = cfg.budget
    d = count_macs(dense)
    dense_value = d.macs if kind == "macs_ratio" else d.params

    def measure(m):
        c = count_macs(m)
        return (c.macs if kind == "macs_ratio" else c.params) / dense_value
    ratio, model, value, trials = match_ratio(lambda r: prune_vit(dense, cfg, r, grads), measure, target,
                                              cfg.tolerance)
    report = {"pruning_ratio": ratio, kind: value, "trials": trials,
              "widths": [{"heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "mlp": b.mlp.fc1.out_features,
                          "dim": b.norm1.normalized_shape[0]} for b in model.blocks]}
    if rec.enabled:
        from optimizer.distill import recover
        from optimizer.methods.slim import SlimConfig
        base = SlimConfig(macs_ratio=0.5)   # the batch size and temperature slim's fine-tune falls back on
        ctx = CompressContext(calib_dir=calib, teacher=dense, workers=args.workers, seed=args.seed,
                              log=lambda s: print(s, file=sys.stderr))
        report["recovery"] = recover(model, dense, ctx, rec.distill_config(batch_size=base.batch_size, tau=base.tau))
    return model.eval(), [{"method": PEER, "config": {**cfg.__dict__, "recovery": rec.to_dict()}, "report": report}]


# ---------------------------------------------------------------- measuring

def executed_macs(model, images: torch.Tensor, batch: int) -> float:
    """Mean MACs per image over ``images`` run ``batch`` at a time (input-adaptive models decide per batch)."""
    from optimizer.counting import count_macs
    total = 0.0
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        total += count_macs(model, chunk).macs * len(chunk)
    return total / len(images)


def measure_row(model, dense, args, work: Path, eval_batches) -> dict:
    """Accuracy against dense at each inference batch, with MACs and params counted on what runs."""
    from optimizer.counting import count_params
    from optimizer.data import build_loader
    from optimizer.evaluation import agreement_standard_error, evaluate
    out = {"params_ratio": count_params(model) / count_params(dense), "by_batch": {}}
    sample = next(iter(build_loader(args.val, dense, batch_size=MACS_IMAGES, workers=0))).images
    dense_macs = executed_macs(dense, sample[:1], 1)
    for b in eval_batches:
        r = evaluate(model, build_loader(args.val, model, batch_size=b, workers=args.workers), reference=dense,
                     reference_cache=work / "eval_reference.pt", desc=f"eval b{b}")
        out["by_batch"][str(b)] = {"agreement": r.agreement, "agreement_se": agreement_standard_error(r.per_image),
                                   "top1": r.top1, "dense_top1": r.reference_top1, "mean_kl": r.mean_kl,
                                   "images": r.images, "macs_ratio": executed_macs(model, sample, b) / dense_macs,
                                   "per_image": r.per_image}
    return out


def compute_row(name: str, spec: dict, dense, calib: str, work: Path, args) -> dict:
    from slim import Clock
    steps = spec["steps"]
    row_dir = work / "rows" / f"{name}.work"
    with Clock() as clock:
        if not steps:
            model, recipe = dense, []
        elif steps[0]["method"] == PEER:
            if len(steps) != 1:
                raise VitoptError(f"row {name}: a Torch-Pruning row has exactly one step")
            model, recipe = compress_peer(resolve_steps(steps)[0], dense, calib, args)
        else:
            model, recipe = compress_vitopt(steps, dense, calib, work, row_dir, args)
    res = {"steps": resolve_steps(steps), "recipe": [{k: s.get(k) for k in ("method", "config", "report")}
                                                     for s in recipe],
           "cpu_minutes": clock.cpu / 60, "wall_minutes": clock.wall / 60, "calibration": relative(calib),
           **measure_row(model, dense, args, work, spec.get("eval_batches") or [EVAL_BATCH])}
    return json.loads(json.dumps(res, default=str))


# ---------------------------------------------------------------- report

def _f(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def _steps_text(steps) -> str:
    parts = []
    for s in steps:
        opts = ", ".join(f"{k}={'FT' if k == 'recovery' and isinstance(v, dict) else v}"
                         for k, v in s.items() if k != "method")
        parts.append(f"{s['method']}({opts})")
    return " → ".join(parts) or "–"


def report_lines(rows: dict, names: list, args, prov: dict) -> list:
    from optimizer.evaluation import paired_difference
    dense = rows.get("dense", {}).get("by_batch", {}).get(str(EVAL_BATCH))
    lines = ["# Compression without retraining: vitopt vs Torch-Pruning (DeiT-Tiny, imagenet-mini, 2-core CPU)", "",
             "Calibration on the train split (every method's search / importance / Taylor gradients / fine-tune "
             "sees the same images), reporting on the val split. Agreement = % of val images whose top-1 class "
             "equals the dense model's (± its standard error; the images are the same for both). Δ top-1 = "
             "top-1 minus dense top-1 on the same images ± paired standard error. MACs / params ratios: "
             "optimizer.counting on what executes (input-adaptive rows per inference batch). CPU min: process "
             "CPU time (all cores, data-loader workers included) of the compression, search and fine-tune "
             "included, evaluation not (work shared between rows, e.g. the one slim mask search, is counted in the "
             "first row that ran it: later slim rows show only their slicing / fine-tune); the machine is "
             "shared, so they are upper bounds. FT = slim's default "
             f"fine-tune ({json.dumps(fine_tune_options())}); Torch-Pruning rows get the same one through "
             "optimizer.distill.recover.", "",
             *([f"**Note:** {args.note}", ""] if args.note else []),
             "| row | steps | batch | MACs ratio | params ratio | agreement % ± SE | top-1 % | Δ top-1 ± SE | CPU min |",
             "|---" * 9 + "|"]
    for name in names:
        r = rows.get(name)
        if r is None:
            lines.append(f"| {name} | {_steps_text(resolve_steps(ROWS[name]['steps']))} | – | not yet measured "
                         "| | | | | |")
            continue
        for b, e in r["by_batch"].items():
            d = paired_difference(e["per_image"], dense["per_image"]) if dense else None
            lines.append(f"| {name} | {_steps_text(r['steps'])} | {b} | {e['macs_ratio']:.3f} | "
                         f"{r['params_ratio']:.3f} | {_f(e['agreement'])} ± {_f(e['agreement_se'])} | {_f(e['top1'])} | "
                         + (f"{d[0]:+.2f} ± {d[1]:.2f}" if d else "–") + f" | {r['cpu_minutes']:.1f} |")
    lines += ["", "## Targets (issue 20: agreement with dense)", ""]
    def best(prefix):
        got = [(rows[n]["by_batch"][str(EVAL_BATCH)]["agreement"], n) for n in rows_of(prefix)
               if n in rows and str(EVAL_BATCH) in rows[n]["by_batch"]]
        return max(got) if got else None

    for prefix, floor in TARGETS:
        b = best(prefix)
        lines.append(f"- {prefix} ≥ {floor:.0f} %: " + (f"best {b[1]} {b[0]:.2f} % -> {'met' if b[0] >= floor else 'NOT met'}"
                                                         if b else "not yet measured"))
    lines.append("- every vitopt row above the Torch-Pruning row at the same budget (best of each):")
    for tag in SLIM_BUDGETS:
        ours, theirs = best(f"slim-{tag}"), best(f"tp-taylor-{tag}")
        if ours and theirs:
            lines.append(f"  - {tag}: {ours[1]} {ours[0]:.2f} % vs {theirs[1]} {theirs[0]:.2f} % -> "
                         f"{'met' if ours[0] > theirs[0] else 'NOT met'}")
    g = {n: rows[n]["by_batch"] for n in ROWS if "-gates-" in n and n in rows}
    static = rows.get("slim-macs0.6", {}).get("by_batch", {}).get(str(EVAL_BATCH))
    if g and static:
        lines.append(f"- gates at 0.6 MACs ≥ the static slim 0.6 model ({static['agreement']:.2f} %) at batch 1 and 64:")
        for n, by in g.items():
            lines.append(f"  - {n}: " + ", ".join(f"b{b} {e['agreement']:.2f} % ({'met' if e['agreement'] >= static['agreement'] else 'NOT met'})"
                                                   for b, e in by.items()))
    peers = [(n, rows[n]) for n in names if n in rows and rows[n]["recipe"] and rows[n]["recipe"][0]["method"] == PEER]
    if peers:
        lines += ["", "## Torch-Pruning: the ratio found for each budget", "",
                  "Recipe of its examples/transformers/prune_timm_vit.py: MetaPruner, global pruning, whole heads "
                  "(num_heads, head_pruning_ratio 0.5 as the example sets it), classifier kept, round_to 2; "
                  "Taylor = cross-entropy gradients on the labelled calibration images (batches of 64).", ""]
        for n, r in peers:
            rep = r["recipe"][0]["report"]
            w = rep["widths"]
            lines.append(f"- {n}: pruning ratio {rep['pruning_ratio']:.4f} after {len(rep['trials'])} trials; "
                         f"heads {[x['heads'] for x in w]}, MLP {[x['mlp'] for x in w]}, embed dim {w[0]['dim']}")
    lines += ["", f"Rows not yet measured are listed as such; run the command below (it skips the rows already "
              f"cached under --work). Calibration images: {args.images or 'all'} of {relative(args.train)}."]
    return lines


def write_report(done: dict, context: dict, args) -> list:
    """Merge ``done`` into the results JSON (rows of another setting are dropped) and rewrite the report."""
    out = Path(args.out)
    prev = read_json(out.with_suffix(".json"), "") if out.with_suffix(".json").is_file() else {}
    rows = dict(prev.get("rows", {}))
    if prev.get("context", context) != context:
        print(f"note: {out}.json held rows of another setting ({prev.get('context')}); they are replaced",
              file=sys.stderr)
        rows = {}
    rows.update(done)
    prov = provenance()
    commands = [c for c in prev.get("commands", []) if c != prov["command"]] + [prov["command"]]
    data = {"context": context, "note": args.note or prev.get("note"), "rows": rows, "not_yet_measured": [n for n in ROWS if n not in rows],
            "commands": commands}
    lines = report_lines(rows, list(ROWS), args, prov)
    lines += ["", "Commands that made these rows: " + "; ".join(f"`{c}`" for c in commands)]
    write_result(out, data, lines, prov=prov)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=ARCH)
    p.add_argument("--weights", default=str(SHARED / "weights" / "deit_tiny_patch16_224.pth"))
    p.add_argument("--train", default=str(SHARED / "data" / "imagenet-mini" / "train"))
    p.add_argument("--val", default=str(SHARED / "data" / "imagenet-mini" / "val"))
    p.add_argument("--work", default=str(ROOT / "build" / "reconstruct-bench"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reconstruct"))
    p.add_argument("--rows", default="", help="comma-separated row names (default: every row, in priority order)")
    p.add_argument("--images", type=int, default=None, help="calibration images (default: the whole train split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--note", default="", help="a line the report prints under its title (how the rows were run)")
    p.add_argument("--list", action="store_true", help="print the row names and their configs, run nothing")
    args = p.parse_args(argv)
    if args.list:
        for n, s in ROWS.items():
            print(f"{n}: {_steps_text(s['steps'])}")
        return 0
    names = [n.strip() for n in args.rows.split(",") if n.strip()] or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"unknown row(s) {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    if args.images is not None and args.images < 1:
        print(f"--images must be positive, got {args.images}", file=sys.stderr)
        return 2
    from optimizer.models.loading import load_model
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_folder(args.train, args.images, args.seed, work)
    dense = load_model(args.arch, args.weights or None).model.eval()
    for q in dense.parameters():
        q.requires_grad_(False)
    context = {"arch": args.arch, "weights": Path(args.weights).name if args.weights else None,
               "train": relative(args.train), "val": relative(args.val), "images": args.images, "seed": args.seed}
    for name in names:   # the results are rewritten after each row: a run cut short still reports its rows
        done = run_rows([name], ROWS, lambda n, s: compute_row(n, s, dense, calib, work, args), work / "rows",
                        context, log=lambda s: print(s, file=sys.stderr, flush=True))
        lines = write_report(done, context, args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VitoptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

"""Recovery of compressed DeiT-Tiny students: no distillation vs logit KD vs manifold + logit KD.

For each student (slimmed to ≈0.6 MACs, factorised to ≈0.5 params) and each arm, the same
compressed weights are fine-tuned with ``optimizer.distill.recover`` for the same number of steps
and images (same batch, lr, schedule, augmentation, seed); only the loss differs:

    none      (a) cross-entropy on the labels (alpha 0, beta 0; no teacher)
    logit     (b) logit KD from the dense teacher (alpha 1, beta 0)
    manifold  (c) logit KD + fine-grained manifold loss (alpha 1, beta 1, official weights)

then evaluated on the held-out folder: top-1 and agreement (top-1 class equal to the teacher's).

    flock /tmp/vitopt-heavy.lock python benchmarks/distill_recovery.py            # ≈25 min on 2 CPU cores

Students come from the registered methods (``slim`` with the search-free magnitude importance,
``lowrank`` activation-aware SVD, both with their own recovery turned off) when those import and
accept the options below; otherwise from the simple stand-ins in this file (L1-magnitude
structured slimming, plain truncated SVD). The result files say which.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from optimizer.compress.registry import CompressContext  # noqa: E402
from optimizer.counting import count_macs  # noqa: E402
from optimizer.data import build_loader  # noqa: E402
from optimizer.distill import DistillConfig, recover  # noqa: E402
from optimizer.evaluation import evaluate  # noqa: E402
from optimizer.fileio import write_json  # noqa: E402
from optimizer.models.loading import load_model  # noqa: E402
from _harness import provenance, scrub, write_result  # noqa: E402

SHARED = ROOT.parent / "shared"
ARMS = {
    "none": dict(alpha=0.0, beta=0.0),
    "logit": dict(alpha=1.0, beta=0.0),
    "manifold": dict(alpha=1.0, beta=1.0),
}


# ---------------------------------------------------------------- stand-in students
def _round8(x: float) -> int:
    return max(8, int(round(x / 8.0)) * 8)


def _slim_block(block, keep: float) -> None:
    """Keep the L1-largest (head, dim) pairs (same count per head) and MLP units of one block."""
    from optimizer.models.blocks import PrunedAttention
    attn = block.attn
    H, D, C = attn.num_heads, attn.head_dim, attn.qkv.in_features
    d_new = min(D, _round8(D * keep))
    W = attn.qkv.weight.detach().reshape(3, H, D, C)
    P = attn.proj.weight.detach().reshape(C, H, D)
    score = W.abs().sum(dim=(0, 3)) + P.abs().sum(dim=0)                      # (H, D)
    kept = score.topk(d_new, dim=1).indices.sort(dim=1).values                 # (H, d_new)
    rows = torch.cat([(t * H * D + h * D + kept[h]) for t in range(3) for h in range(H)])
    cols = torch.cat([h * D + kept[h] for h in range(H)])
    new = PrunedAttention(C, H, d_new, attn.scale, qkv_bias=attn.qkv.bias is not None,
                          proj_bias=attn.proj.bias is not None)
    with torch.no_grad():
        new.qkv.weight.copy_(attn.qkv.weight[rows])
        if attn.qkv.bias is not None:
            new.qkv.bias.copy_(attn.qkv.bias[rows])
        new.proj.weight.copy_(attn.proj.weight[:, cols])
        if attn.proj.bias is not None:
            new.proj.bias.copy_(attn.proj.bias)
    block.attn = new
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    m_new = min(fc1.out_features, _round8(fc1.out_features * keep))
    units = (fc1.weight.abs().sum(1) + fc2.weight.abs().sum(0)).topk(m_new).indices.sort().values
    n1, n2 = nn.Linear(fc1.in_features, m_new), nn.Linear(m_new, fc2.out_features)
    with torch.no_grad():
        n1.weight.copy_(fc1.weight[units])
        n1.bias.copy_(fc1.bias[units])
        n2.weight.copy_(fc2.weight[:, units])
        n2.bias.copy_(fc2.bias)
    block.mlp.fc1, block.mlp.fc2 = n1, n2


def slim_standin(dense: nn.Module, macs_ratio: float):
    """Uniformly slimmed copy whose MACs ratio is closest to ``macs_ratio`` (L1-magnitude units)."""
    from optimizer.models.blocks import make_prunable
    base = count_macs(dense).macs
    best = None
    for keep in [i / 100 for i in range(30, 96, 2)]:
        m = make_prunable(copy.deepcopy(dense))
        for b in m.blocks:
            _slim_block(b, keep)
        r = count_macs(m).macs / base
        if best is None or abs(r - macs_ratio) < abs(best[1] - macs_ratio):
            best = (m, r, keep)
    m, r, keep = best
    return m.eval(), {"source": "stand-in: uniform L1-magnitude slimming of (head, dim) pairs and MLP units",
                      "keep_fraction": keep}


def _factorise(lin: nn.Linear, rank: int) -> nn.Module:
    U, S, Vh = torch.linalg.svd(lin.weight.detach().double(), full_matrices=False)
    s = S[:rank].sqrt()
    first, second = nn.Linear(lin.in_features, rank, bias=False), nn.Linear(rank, lin.out_features,
                                                                           bias=lin.bias is not None)
    with torch.no_grad():
        first.weight.copy_((s[:, None] * Vh[:rank]).float())
        second.weight.copy_((U[:, :rank] * s[None]).float())
        if lin.bias is not None:
            second.bias.copy_(lin.bias)
    return nn.Sequential(first, second)


def lowrank_standin(dense: nn.Module, params_ratio: float):
    """Every block Linear replaced by a plain truncated-SVD pair of one rank (params ratio closest)."""
    base = sum(p.numel() for p in dense.parameters())
    best = None
    for rank in range(8, 200, 8):
        m = copy.deepcopy(dense)
        for b in m.blocks:
            b.attn.qkv, b.attn.proj = _factorise(b.attn.qkv, rank), _factorise(b.attn.proj, rank)
            b.mlp.fc1, b.mlp.fc2 = _factorise(b.mlp.fc1, rank), _factorise(b.mlp.fc2, rank)
        r = sum(p.numel() for p in m.parameters()) / base
        if best is None or abs(r - params_ratio) < abs(best[1] - params_ratio):
            best = (m, r, rank)
        if r > params_ratio + 0.1:
            break
    m, r, rank = best
    return m.eval(), {"source": "stand-in: plain truncated SVD of every block Linear", "rank": rank}


def method_student(name: str, options: dict, dense: nn.Module, ctx: CompressContext):
    """The registered method's student, or None when it is unavailable or rejects the options."""
    from optimizer.compress import compress, get_method
    from optimizer.errors import VitoptError
    try:
        method = get_method(name)
        cfg = method.config_cls.from_dict({**options, "method": name})
    except (VitoptError, ImportError) as e:
        print(f"[{name}] method unavailable ({e}); using the stand-in", file=sys.stderr)
        return None
    cm = compress(copy.deepcopy(dense), [cfg], ctx, arch="deit_tiny_patch16_224")
    return cm.model.eval(), {"source": f"optimizer.methods.{name}", "config": cfg.to_dict(),
                             "report": cm.steps[-1]["report"]}


# ---------------------------------------------------------------- benchmark
def _eval(model, teacher, loader) -> dict:
    t = time.perf_counter()
    r = evaluate(model, loader, reference=teacher, desc="eval").to_dict()
    r.pop("failed", None)
    r["seconds"] = round(time.perf_counter() - t, 2)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(SHARED / "weights" / "deit_tiny_patch16_224.pth"))
    ap.add_argument("--train", default=str(SHARED / "data" / "imagenet-mini" / "train"))
    ap.add_argument("--val", default=str(SHARED / "data" / "imagenet-mini" / "val"))
    ap.add_argument("--students", default="slim,lowrank")
    ap.add_argument("--arms", default="none,logit,manifold")
    ap.add_argument("--source", default="auto",
                    help="auto | methods | standin, for all students or per student: slim=methods,lowrank=standin")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-val", type=int)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_recovery"))
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    teacher = load_model("deit_tiny_patch16_224", args.weights).model.eval()
    val = build_loader(args.val, teacher, batch_size=64, workers=args.workers, limit=args.limit_val)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    ctx = CompressContext(calib_dir=args.train, teacher=teacher, workers=args.workers, seed=args.seed, log=log)
    dense = count_macs(teacher)
    t = time.perf_counter()
    dense_eval = evaluate(teacher, val, desc="teacher").to_dict()
    dense_eval.pop("failed", None)
    dense_eval["seconds"] = round(time.perf_counter() - t, 2)
    result = {"benchmark": "distill_recovery", "environment": provenance()["environment"],
              "data": {"train": args.train, "val": args.val, "limit_train": args.limit_train,
                       "limit_val": args.limit_val},
              "teacher": {"arch": "deit_tiny_patch16_224", "weights": args.weights, **dense.to_dict(),
                          "eval": dense_eval},
              "budget": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed},
              "students": {}}
    out = Path(args.out)

    sources = {}
    for part in args.source.split(","):
        k, _, v = part.rpartition("=")
        for n in ([k] if k else args.students.split(",")):
            sources[n] = v
    if any(v not in ("auto", "methods", "standin") for v in sources.values()):
        raise SystemExit(f"--source: expected auto, methods or standin, got {args.source}")

    for name in [s for s in args.students.split(",") if s]:
        t = time.perf_counter()
        source = sources.get(name, "auto")
        built = None
        if name == "slim":
            if source != "standin":
                built = method_student("slim", {"macs_ratio": 0.6, "importance": "magnitude",
                                                "recovery": {"loss": "none"}}, teacher, ctx)
            built = built or (None if source == "methods" else slim_standin(teacher, 0.6))
        elif name == "lowrank":
            if source != "standin":
                built = method_student("lowrank", {"params_ratio": 0.5, "recovery": {"epochs": 0.0},
                                                   "calib_images": 128, "comp_solver": "closed"}, teacher, ctx)
            built = built or (None if source == "methods" else lowrank_standin(teacher, 0.5))
        else:
            raise SystemExit(f"unknown student {name}")
        if built is None:
            raise SystemExit(f"--source methods: method for {name} is unavailable")
        student, info = built
        c = count_macs(student)
        entry = {**info, "build_seconds": round(time.perf_counter() - t, 2), **c.to_dict(),
                 "params_ratio": round(c.params / dense.params, 4), "macs_ratio": round(c.macs / dense.macs, 4),
                 "before": _eval(student, teacher, val), "arms": {}}
        log(f"[{name}] {entry['source']}: params x{entry['params_ratio']} MACs x{entry['macs_ratio']} "
            f"before: top-1 {entry['before']['top1']:.2f} agreement {entry['before']['agreement']:.2f}")
        result["students"][name] = entry
        for arm in [a for a in args.arms.split(",") if a]:
            cfg = DistillConfig(**ARMS[arm], epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                seed=args.seed, limit=args.limit_train, val_dir=args.val,
                                eval_limit=args.limit_val, eval_at_start=False, save_every=0)
            s = copy.deepcopy(student)
            rep = recover(s, teacher if cfg.needs_teacher else None, ctx, cfg)
            if rep["final_eval"] is not None and rep["final_eval"].get("agreement") is None:
                rep["final_eval"] = _eval(s, teacher, val)   # arm (a) trains without the teacher
            entry["arms"][arm] = {k: rep[k] for k in ("steps", "images", "seconds", "images_per_s", "lr",
                                                       "first_losses", "final_losses", "final_eval")}
            fe = rep["final_eval"]
            log(f"[{name}/{arm}] {rep['steps']} steps {rep['seconds']:.0f} s: top-1 {fe['top1']:.2f} "
                f"agreement {fe['agreement']:.2f}")
            write_json(out.with_suffix(".json"), scrub(result))      # keep partial results
    write_result(out.with_suffix(""), result, to_markdown(result).splitlines())
    print(to_markdown(result))
    return 0


def to_markdown(r: dict) -> str:
    t, b = r["teacher"], r["budget"]
    env = r["environment"]
    lines = [
        "# Recovery of compressed DeiT-Tiny: no distillation vs logit KD vs manifold + logit KD",
        "",
        f"Teacher: DeiT-Tiny ({t['weights']}), {t['params_M']} M params, {t['gmacs']} GMACs "
        f"(multiply-accumulates, 224 px); top-1 {t['eval']['top1']:.2f} % on {t['eval']['images']} images of "
        f"{r['data']['val']}.",
        f"Budget per arm: {b['epochs']} epochs over {r['data']['train']} (batch {b['batch_size']}, AdamW lr "
        f"{b['lr']}, 5 % warm-up + cosine, wd 0.05, clip 1.0, timm RandAugment, seed {b['seed']}); every arm sees "
        "the same images in the same order. Agreement = % of val images whose top-1 class equals the teacher's.",
        f"Machine: {env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads), "
        f"torch {env.get('torch')}, timm {env.get('timm')}; times are wall-clock seconds of training only "
        "(evaluation excluded).",
        "",
    ]
    for name, s in r["students"].items():
        lines += [f"## {name}: {s['source']}", "",
                  f"params {s['params_M']} M (x{s['params_ratio']}), {s['gmacs']} GMACs (x{s['macs_ratio']})", "",
                  "| arm | loss | top-1 % | agreement % | mean KL | train s | img/s |",
                  "|---|---|---:|---:|---:|---:|---:|",
                  f"| before recovery | - | {s['before']['top1']:.2f} | {s['before']['agreement']:.2f} | "
                  f"{s['before']['mean_kl']:.4f} | - | - |"]
        desc = {"none": "(a) CE on labels", "logit": "(b) logit KD", "manifold": "(c) manifold + logit KD"}
        for arm, a in s["arms"].items():
            e = a["final_eval"]
            lines.append(f"| {arm} | {desc.get(arm, arm)} | {e['top1']:.2f} | {e['agreement']:.2f} | "
                         f"{e['mean_kl']:.4f} | {a['seconds']:.0f} | {a['images_per_s']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

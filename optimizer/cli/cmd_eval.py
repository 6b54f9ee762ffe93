"""``vitopt eval``: accuracy, agreement with a reference, parameters and MACs."""
from __future__ import annotations

import os
import sys

from .common import (add_json_arg, add_model_args, load_model_from_args, non_negative_int, positive_int,
                     write_json_result)


def register(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5, agreement and KL vs a reference, params and MACs")
    add_model_args(p)
    p.add_argument("--data", default=os.environ.get("VITOPT_DATA") or None,
                   help="ImageNet-style folder (default: $VITOPT_DATA); without it only params/MACs are reported")
    p.add_argument("--synsets", help="synset list giving the label order (default: found beside the data)")
    p.add_argument("--reference", help="reference model (timm name or compressed dir) for agreement / KL")
    p.add_argument("--reference-checkpoint", help="weights of the reference model")
    p.add_argument("--batch-size", default="64", help="evaluation batch size (default 64)")
    p.add_argument("--workers", default="2", help="data loader workers (default 2)")
    p.add_argument("--limit", help="evaluate only the first N images")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..counting import count_macs
    from ..errors import VitoptError
    bs = positive_int(args.batch_size, "--batch-size")
    workers = non_negative_int(args.workers, "--workers")
    limit = positive_int(args.limit, "--limit") if args.limit else None
    if args.data and not os.path.isdir(args.data):
        raise VitoptError(f"data directory not found: {args.data}")
    loaded = load_model_from_args(args)
    counts = count_macs(loaded.model)
    out = {"model": loaded.to_dict(), "params": counts.params, "macs": counts.macs,
           "params_M": round(counts.mparams, 3), "gmacs": round(counts.gmacs, 3)}
    print(f"params {counts.mparams:.2f} M   MACs {counts.gmacs:.2f} G (per 224px image, multiply-accumulates)")
    if args.data:
        from ..data import build_loader
        from ..evaluation import evaluate
        ref = None
        if args.reference:
            from ..models.loading import load_model
            ref_loaded = load_model(args.reference, args.reference_checkpoint)
            print(f"reference: {ref_loaded.describe()}", file=sys.stderr)
            ref = ref_loaded.model
            out["reference"] = ref_loaded.to_dict()
        loader = build_loader(args.data, loaded.model, batch_size=bs, synsets=args.synsets, workers=workers,
                              limit=limit)
        res = evaluate(loaded.model, loader, reference=ref)
        if res.images == 0:   # an accuracy of nothing is not a result: never exit 0 with it
            raise VitoptError(f"no readable image in {args.data}: all {len(res.failed)} failed to decode "
                              f"(first: {res.failed[0] if res.failed else 'none'})")
        r = res.to_dict()
        if loaded.is_random:
            # accuracy of random weights is noise: never print it as if it meant something
            r["top1"] = r["top5"] = None
            print("accuracy: not reported (random weights)")
        elif res.top1 is not None:
            print(f"top-1 {res.top1:.2f} %   top-5 {res.top5:.2f} %   on {res.images} images of {args.data}")
        if ref is not None:
            print(f"agreement with reference {res.agreement:.2f} %   mean KL {res.mean_kl:.4f}"
                  + (f"   reference top-1 {res.reference_top1:.2f} %" if res.reference_top1 is not None else ""))
        if res.failed:
            print(f"unreadable images: {len(res.failed)}: " + "; ".join(res.failed[:5]), file=sys.stderr)
        out["eval"] = r
        out["data"] = args.data
    write_json_result(args.json, out)
    return 0

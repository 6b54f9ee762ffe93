"""``vitopt pick OUT/ --batch 8 [--max-latency-ms X] [--min-agreement A] [--max-memory-mb M] [--json]``."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("pick", help="name the best sweep variant under latency / agreement / memory constraints")
    p.add_argument("sweep", help="the -o directory of `vitopt sweep`")
    p.add_argument("--batch", type=int, required=True, help="the batch size you will serve")
    p.add_argument("--backend", default="onnxruntime", help="backend whose measured latency counts")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8", "int8_dynamic"],
                   help="only rows measured in this precision (default: every row at its own: fp32 variants "
                        "and their quantized rows, <variant>+int8_dynamic)")
    p.add_argument("--max-latency-ms", type=float, help="p50 latency per batch at --batch, ms")
    p.add_argument("--min-agreement", type=float, help="top-1 agreement with the dense model, %%")
    p.add_argument("--max-memory-mb", type=float, help="engine device memory (weights + activations), MB")
    p.add_argument("--bench", nargs="+", default=[], metavar="[VARIANT=]FILE",
                   help="bench JSON files from other machines to merge (as in vitopt report)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from ..sweep.pick import PickConstraints, describe, pick_variant
    from ..sweep.results import sweep_results
    c = PickConstraints(batch=args.batch, backend=args.backend, precision=args.precision,
                        max_latency_ms=args.max_latency_ms, min_agreement=args.min_agreement,
                        max_memory_mb=args.max_memory_mb)
    p = pick_variant(sweep_results(args.sweep, args.bench), c)
    if args.json:
        print(json.dumps({**p.to_dict(), "message": describe(p, c)}, indent=2))
    else:
        print(describe(p, c))
    return 0 if p.chosen is not None else 1

"""``vitopt report OUT/ [--bench FILE ...]``: report.md + self-contained report.html of a sweep."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="write report.md and report.html (plots embedded) for a sweep directory")
    p.add_argument("sweep", help="the -o directory of `vitopt sweep`")
    p.add_argument("--bench", nargs="+", default=[], metavar="[VARIANT=]FILE",
                   help="bench JSON files measured on other machines (`vitopt bench --json`), merged per variant")
    p.add_argument("--backend", default="onnxruntime", help="backend of the table's latency columns")
    p.add_argument("--precision", choices=["fp32", "fp16"],
                   help="precision of the unquantized rows' columns (default fp32; quantized rows show their own)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sweep.report import build_report, markdown_table
    rep = build_report(args.sweep, args.bench, args.backend, args.precision)
    front = [r for r in rep["rows"] if r["frontier"]]
    print(f"frontier ({len(front)} of {len(rep['rows'])} variants):")
    print(markdown_table(front), end="")
    print(f"report: {rep['html']} (and {rep['md']})")
    return 0

"""``vitopt surgery``: run the graph rules on an ONNX file; print what fired and the op histograms."""
from __future__ import annotations

import os
import sys

from .common import add_json_arg, write_json_result


def register(sub) -> None:
    p = sub.add_parser("surgery", help="apply the graph rules (folding, fusions, redundant-op removal, checks) to "
                                       "an ONNX file; each rule's result is checked in ONNX Runtime")
    p.add_argument("input", nargs="?", metavar="IN.onnx", help="ONNX model to rewrite")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="rewritten model (written atomically)")
    p.add_argument("--rules", metavar="a,b",
                   help="run exactly these rules in this order (no implicit folding; add fold_constants "
                        "where wanted); default: cleanup_graph's default rules with folding before and after")
    p.add_argument("--list", action="store_true", help="list every rule with its summary and ASCII sketch, then exit")
    p.add_argument("--no-parity-check", action="store_true",
                   help="skip the ONNX Runtime check after each rule (rules that break outputs are then kept)")
    add_json_arg(p)
    p.set_defaults(func=run)


def format_rule_list() -> str:
    """Every registered rule: name, kind, default or not, one-line summary and its sketch."""
    import textwrap
    from ..graph.rules import default_rules, get_rule, list_rules
    defaults = set(default_rules())
    blocks = []
    for name in list_rules():
        rule = get_rule(name)
        tags = [rule.kind] + (["default"] if name in defaults or name == "fold_constants" else ["opt-in"])
        if rule.min_opset > 1:
            tags.append(f"opset >= {rule.min_opset}")
        blocks.append(f"{name} ({', '.join(tags)})\n" + textwrap.indent(textwrap.fill(rule.summary(), 96), "  ")
                      + "\n\n" + textwrap.indent(rule.sketch(), "    "))
    return "\n\n".join(blocks)


def _load(path: str):
    import onnx
    from ..errors import VitoptError
    if not os.path.isfile(path):
        raise VitoptError(f"input ONNX file not found: {path}")
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, onnx ValidationError, ...: all mean "not a usable ONNX file"
        msg = str(e).strip().splitlines()
        raise VitoptError(f"{path} is not a valid ONNX model ({type(e).__name__}: {msg[0] if msg else ''})") \
            from None
    if not proto.graph.node:
        raise VitoptError(f"{path} is not a valid ONNX model (its graph has no nodes)")
    return proto


def run(args) -> int:
    from ..errors import VitoptError
    if args.list:
        print(format_rule_list())
        return 0
    if not args.input or not args.output:
        raise VitoptError("give IN.onnx and -o OUT.onnx (or --list)")
    if os.path.isdir(args.output):
        raise VitoptError(f"output {args.output} is a directory; give a file name like model.onnx")
    rules = None
    if args.rules is not None:
        from ..graph.rules import get_rule
        rules = [r.strip() for r in args.rules.split(",") if r.strip()]
        if not rules:
            raise VitoptError("--rules is empty; give rule names separated by commas (see --list)")
        for r in rules:
            get_rule(r)  # unknown names fail before the model is read
    proto = _load(args.input)
    from ..export import save_onnx, set_metadata
    from ..graph import cleanup_graph
    new, report = cleanup_graph(proto, rules=rules, fold=rules is None, parity=not args.no_parity_check)
    fired = {k: v for k, v in report.rules.items() if v}
    for name, n in report.rules.items():
        print(f"{name:<32} x{n}" + ("" if n else "  (did not fire)"))
    for name, why in report.rolled_back.items():
        print(f"{name:<32} ROLLED BACK: {why}")
    for name, msgs in report.failures.items():
        for m in msgs:
            print(f"{name:<32} FAILED: {m}")
    print(f"{report.nodes_before} -> {report.nodes_after} nodes in {report.seconds:.2f} s")
    from ..graph import format_histograms
    print(format_histograms(report.ops_before, report.ops_after))
    out = {"input": args.input, "output": args.output, "written": False, **report.to_dict()}
    if not report.ok:
        print(f"vitopt surgery: {len(report.failures)} check(s) failed; {args.output} not written", file=sys.stderr)
        write_json_result(args.json, out)
        return 1
    set_metadata(new, {"vitopt.surgery": ",".join(fired) or "none"})
    size = save_onnx(new, args.output)
    out.update(written=True, size_bytes=size)
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")
    write_json_result(args.json, out)
    return 0

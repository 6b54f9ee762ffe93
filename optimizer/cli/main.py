"""``vitopt`` command line: one module per subcommand, each with ``register(subparsers)``.

Every user error (``VitoptError``) is one line on stderr and exit code 2; nothing half-written
is left behind because every writer goes through ``optimizer.fileio``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ["eval", "export", "build", "bench", "run", "compress", "distill", "sweep", "report", "pick"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"vitopt: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitopt", description="Compress timm Vision Transformers, export to ONNX/TensorRT, benchmark.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"vitopt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"optimizer.cli.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name == f"optimizer.cli.cmd_{name}":
                continue  # command not in this build
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    from ..errors import VitoptError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except VitoptError as e:
        print(f"vitopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitopt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line unless asked for the traceback
        if os.environ.get("VITOPT_DEBUG"):
            raise
        print(f"vitopt {args.command}: internal error: {type(e).__name__}: {e} "
              "(set VITOPT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``vitopt`` command line: one module per subcommand, each with ``register(subparsers)``.

Every user error (``VitoptError``) is one line on stderr and exit code 2; nothing half-written
is left behind because every writer goes through ``optimizer.fileio``. Output paths (``-o``,
``--json``, ``--markdown``) are checked before any work starts (``fileio.check_output``); SIGTERM
and SIGINT remove every temporary file and exit with 143 / 130 (``optimizer.signals``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ["eval", "export", "build", "bench", "run", "compress", "distill", "compare", "surgery", "quantize",
            "serve", "sweep", "report", "pick"]
# arguments naming input files or folders: an output may not overwrite or contain them
INPUT_ARGS = ("model", "checkpoint", "calib", "data", "val", "recipe", "student", "student_checkpoint", "teacher",
              "teacher_checkpoint", "reference", "reference_checkpoint", "target", "onnx", "images", "synsets",
              "parity_data", "work_dir")
FILE_OUTPUT_ARGS = (("json", "--json"), ("markdown", "--markdown"))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"vitopt: error: {message}\n")


def _add_force(parser) -> None:
    """Every command writing a directory (``set_defaults(output_kind=...)``) takes ``--force``."""
    if parser.get_default("output_kind") and "--force" not in parser._option_string_actions:
        parser.add_argument("--force", action="store_true",
                            help="replace -o even when it exists and is not a previous vitopt output of this kind "
                                 "(without it such a directory is refused; a previous output is replaced atomically)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitopt", description="Compress timm Vision Transformers, export to ONNX/TensorRT, benchmark.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"vitopt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        before = set(sub.choices)
        importlib.import_module(f"optimizer.cli.cmd_{name}").register(sub)
        for added in set(sub.choices) - before:   # a module may register several commands (serve-prepare, serve-check)
            _add_force(sub.choices[added])
    return p


def check_outputs(args) -> None:
    """Refuse outputs that would lose the user's files, before the command does any work."""
    from ..fileio import FILE, check_output
    inputs = [getattr(args, a, None) for a in INPUT_ARGS]
    inputs = [i for i in inputs if isinstance(i, str)]
    output = getattr(args, "output", None)
    # sweep / serve-prepare add to an existing output (resume, next version) and check it themselves
    if output and not getattr(args, "output_grows", False):
        check_output(output, getattr(args, "output_kind", None) or FILE, force=getattr(args, "force", False),
                     inputs=inputs, flag="-o")
    for dest, flag in FILE_OUTPUT_ARGS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value:   # a flag of that name (pick --json) prints to stdout instead
            check_output(value, FILE, inputs=inputs + ([output] if output else []), flag=flag)


def main(argv=None) -> int:
    from ..errors import VitoptError
    from ..fileio import forget_forced, remove_temporaries
    from ..signals import Stopped, raise_if_stopped, received, stop_on_signals
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            try:
                check_outputs(args)
                rc = args.func(args)
                raise_if_stopped()   # a signal swallowed by a library still ends the command as stopped
            except Exception:
                if received():   # the error is a consequence of the signal (e.g. a killed data worker)
                    raise Stopped(received()) from None
                raise
        return int(rc or 0)
    except VitoptError as e:
        print(f"vitopt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (Stopped, KeyboardInterrupt) as e:
        remove_temporaries()  # blocks already unwound remove their own; this catches the rest
        _after_stop()
        code = e.exit_code if isinstance(e, Stopped) else 130
        name = e.name if isinstance(e, Stopped) else "SIGINT"
        print(f"vitopt {args.command}: stopped by {name}; temporary files removed", file=sys.stderr)
        return code
    except OSError as e:  # the machine, not the input: a full disk, a read-only target, a missing device
        where = f" ({e.filename})" if e.filename else ""
        print(f"vitopt {args.command}: error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"vitopt {args.command}: error: out of memory; try a smaller batch size", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line unless asked for the traceback
        if os.environ.get("VITOPT_DEBUG"):
            raise
        print(f"vitopt {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(set VITOPT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        forget_forced()


def _after_stop() -> None:
    """After a stop, multiprocessing's pymp-* scratch directory of this process is removed too (the
    handler already silenced the "Exception ignored" reports of killed data-loader workers)."""
    import shutil
    try:
        import multiprocessing.process
        tmp = multiprocessing.process.current_process()._config.get("tempdir")
    except Exception:
        tmp = None
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())

"""Arguments and helpers shared by subcommands."""
from __future__ import annotations

import os
import sys

from ..errors import VitoptError


def add_model_args(p, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="timm model name (e.g. deit_tiny_patch16_224) or a compressed model directory")
    p.add_argument("--checkpoint", default=os.environ.get("VITOPT_CHECKPOINT") or None,
                   help="local weights: state_dict .pth, {'model': ...} wrapper or .safetensors "
                        "(default: $VITOPT_CHECKPOINT)")


def add_json_arg(p) -> None:
    p.add_argument("--json", metavar="PATH", help="also write machine-readable results to PATH")


def parse_batches(text: str) -> list:
    """'1,8,32' -> [1, 8, 32]; every entry a positive integer."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            b = int(part)
        except ValueError:
            raise VitoptError(f"batch size '{part}' is not an integer") from None
        if b < 1:
            raise VitoptError(f"batch size must be positive, got {b}")
        out.append(b)
    if not out:
        raise VitoptError("no batch sizes given")
    return sorted(set(out))


def positive_int(text: str, name: str) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise VitoptError(f"{name} must be an integer, got {text!r}") from None
    if v < 1:
        raise VitoptError(f"{name} must be positive, got {v}")
    return v


def write_json_result(path, obj) -> None:
    if path:
        from ..fileio import write_json
        write_json(path, obj)


def load_model_from_args(args):
    from ..models.loading import load_model
    loaded = load_model(args.model, args.checkpoint)
    print(f"model: {loaded.describe()}", file=sys.stderr)
    return loaded

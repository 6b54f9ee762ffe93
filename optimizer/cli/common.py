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
    return _int_at_least(text, name, 1)


def non_negative_int(text: str, name: str) -> int:
    """An integer >= 0 (e.g. --workers 0: load data in the main process)."""
    return _int_at_least(text, name, 0)


def _int_at_least(text: str, name: str, lowest: int) -> int:
    what = "a positive integer" if lowest == 1 else f"an integer >= {lowest}"
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise VitoptError(f"{name} must be {what}, got {text!r}") from None
    if v < lowest:
        raise VitoptError(f"{name} must be {'positive' if lowest == 1 else f'>= {lowest}'}, got {v}")
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


def timing_images(folder: str, count: int, loaded, runner):
    """(count, C, H, W) float32 images from ``folder`` for ``runner`` (``optimizer.data.arrays.spread_images``):
    the model's own eval transform for a model, else timm's default at the runner's input size, since an
    ONNX file or engine does not record its preprocessing."""
    from ..data.arrays import spread_images
    shape = None
    if loaded is not None:
        note = "the model's eval transform"
    else:
        runner.activate()
        shape = runner.sample_shape
        if not shape or len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise VitoptError(f"--images: cannot tell the input size of {runner.name} (input shape {shape}); "
                              "it needs fixed channel/height/width dimensions")
        note = f"ImageNet mean/std at {shape[1]}x{shape[2]}"
    x = spread_images(folder, count, shape, model=loaded.model if loaded is not None else None)
    print(f"inputs: {x.shape[0]} images from {folder} ({note}; rows cycled to fill a batch)", file=sys.stderr)
    return x

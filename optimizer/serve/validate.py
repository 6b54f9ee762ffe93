"""Validation of a Triton model folder: Triton's schema first, then what the schema cannot know.

``validate_model_dir(REPO/NAME)`` parses ``config.pbtxt`` with Triton's ``ModelConfig`` protobuf
and checks it against the model files: the folder and config names agree and Triton accepts the
name; every version folder holds the file the platform loads; input/output names, dtypes and dims
equal the file's; ``max_batch_size`` is 0 for a static batch and at most an engine profile's
max; preferred batch sizes are at most ``max_batch_size``; labels.txt has one line per class.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from ..errors import VitoptError
from .config import PLATFORMS, check_model_name, parse_config_text
from .signature import signature_of

# platform/backend in a config -> --platform name
_BY_CONFIG = {(p, b): name for name, (p, b, _) in PLATFORMS.items()}


def _io_problems(config, sig, where: str) -> List[str]:
    problems = []
    batched = config.max_batch_size > 0
    from .config import model_config_pb2
    type_name = model_config_pb2().DataType.Name
    for what, declared, actual in (("input", config.input, sig.inputs), ("output", config.output, sig.outputs)):
        want = {t.name: t for t in actual}
        got = {t.name: t for t in declared}
        if set(want) != set(got):
            problems.append(f"{where}: config {what}s {sorted(got)} != the model's {sorted(want)}")
            continue
        for name, t in got.items():
            spec = want[name]
            dtype = type_name(t.data_type)
            if dtype != spec.dtype:
                problems.append(f"{where}: {what} {name!r} is {dtype} in the config, {spec.dtype} in the model")
            dims = tuple(sig.dims(spec, batched))
            if tuple(t.dims) != dims:
                problems.append(f"{where}: {what} {name!r} has dims {list(t.dims)} in the config, the model "
                                f"needs {list(dims)}" + (" (without the batch axis)" if batched else " (full shape)"))
    return problems


def validate_model_dir(model_dir) -> dict:
    """Check ``model_dir`` (REPO/NAME); returns {"name", "platform", "versions", "max_batch_size"}.

    Raises VitoptError listing every problem found (one line each, joined by '; ').
    Example: ``validate_model_dir("repo/deit")["versions"]`` -> [1, 2]
    """
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.pbtxt"
    if not cfg_path.is_file():
        raise VitoptError(f"{model_dir}: no config.pbtxt")
    config = parse_config_text(cfg_path.read_text(), str(cfg_path))
    problems = []
    try:
        check_model_name(model_dir.name)
    except VitoptError as e:
        problems.append(str(e))
    if config.name and config.name != model_dir.name:
        problems.append(f"{cfg_path}: name {config.name!r} differs from the folder name {model_dir.name!r}")
    platform = _BY_CONFIG.get((config.platform, config.backend))
    if platform is None:
        problems.append(f"{cfg_path}: platform {config.platform!r} / backend {config.backend!r} is not one vitopt "
                        f"prepares ({', '.join(PLATFORMS)})")
        raise VitoptError("; ".join(problems))
    model_file = PLATFORMS[platform][2]
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        problems.append(f"{model_dir}: no version folder (1/, 2/, ...)")
    if config.max_batch_size < 0:
        problems.append(f"{cfg_path}: max_batch_size {config.max_batch_size} < 0")
    pref = list(config.dynamic_batching.preferred_batch_size)
    if config.max_batch_size == 0 and config.HasField("dynamic_batching"):
        problems.append(f"{cfg_path}: dynamic_batching needs max_batch_size > 0")
    if any(p < 1 or p > config.max_batch_size for p in pref):
        problems.append(f"{cfg_path}: preferred_batch_size {pref} not within 1..max_batch_size "
                        f"{config.max_batch_size}")
    for v in versions:
        vdir = model_dir / str(v)
        served = vdir / model_file
        if not served.is_file():
            problems.append(f"{vdir}: missing {model_file} for platform {platform}")
            continue
        graph = vdir / "model.onnx" if platform == "python-ort" else served
        if not graph.is_file():
            problems.append(f"{vdir}: missing model.onnx that model.py runs")
            continue
        sig = signature_of(graph)
        where = str(graph)
        problems += _io_problems(config, sig, where)
        if not sig.dynamic_batch and config.max_batch_size != 0:
            problems.append(f"{where}: static batch in the model, so max_batch_size must be 0 "
                            f"(is {config.max_batch_size})")
        if sig.profile_max is not None and config.max_batch_size > sig.profile_max:
            problems.append(f"{where}: max_batch_size {config.max_batch_size} exceeds the engine profile's "
                            f"max batch {sig.profile_max}")
    for out in config.output:
        if out.label_filename:
            lf = model_dir / out.label_filename
            if not lf.is_file():
                problems.append(f"{model_dir}: label file {out.label_filename} is missing")
            elif out.dims and len(lf.read_text().splitlines()) != out.dims[-1]:
                problems.append(f"{lf}: {len(lf.read_text().splitlines())} labels for {out.dims[-1]} classes")
    if problems:
        raise VitoptError("; ".join(problems))
    return {"name": model_dir.name, "platform": platform, "versions": versions,
            "max_batch_size": config.max_batch_size}

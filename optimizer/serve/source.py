"""The file a served model is made from: an ONNX file, an engine, or a model exported first.

``onnx_for_model`` is the one place serving turns a compressed model directory or timm name into
ONNX; it runs the deployment chain with ``vitopt export``'s defaults.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import VitoptError
from .signature import ENGINE_SUFFIXES


@dataclass
class ModelSource:
    """A servable file plus what is known about its preprocessing."""
    path: Path                  # .onnx or engine
    kind: str                   # "onnx" or "engine"
    preprocess: Optional[dict]  # spec from the model when it was exported here, else None
    exported_from: Optional[str] = None


def onnx_for_model(model_arg: str, checkpoint: Optional[str], out_path) -> dict:
    """Export a timm name or compressed model directory to ``out_path`` through the deployment chain
    with ``vitopt export``'s defaults (``optimizer.deploy``: export, rules, parity gate, metadata).

    Returns {"onnx": path, "preprocess": spec, "model": description, "parity": the chain's parity}.
    Raises VitoptError when the model cannot be loaded or a step of the chain fails.
    """
    from ..deploy import deploy_model, write_onnx
    from ..models.loading import load_model
    from .preprocess import spec_for_model
    loaded = load_model(model_arg, checkpoint)
    model = loaded.model.eval()
    print(f"serve: exporting {loaded.describe()} to ONNX with vitopt export's defaults", file=sys.stderr)
    result = deploy_model(model, description=loaded.describe())
    write_onnx(result, out_path)
    return {"onnx": str(out_path), "preprocess": spec_for_model(model), "model": loaded.describe(),
            "parity": result.report["parity"]}


def resolve_source(model_arg: str, checkpoint: Optional[str], workdir: Path) -> ModelSource:
    """``model_arg`` as a servable file: an ONNX file or engine as is; anything else exported into ``workdir``."""
    p = Path(model_arg)
    if str(model_arg).endswith(".onnx"):
        if not p.is_file():
            raise VitoptError(f"ONNX model not found: {p}")
        return ModelSource(p, "onnx", None)
    if str(model_arg).endswith(ENGINE_SUFFIXES):
        if not p.is_file():
            raise VitoptError(f"TensorRT engine not found: {p}")
        return ModelSource(p, "engine", None)
    info = onnx_for_model(model_arg, checkpoint, workdir / "model.onnx")
    return ModelSource(Path(info["onnx"]), "onnx", info["preprocess"], info["model"])

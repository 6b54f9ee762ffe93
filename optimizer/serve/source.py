"""The file a served model is made from: an ONNX file, an engine, or a model exported first.

``onnx_for_model`` is the one place serving turns a compressed model directory or timm name into
ONNX; it runs what ``vitopt export`` runs (export -> parity -> graph clean-up -> parity -> save).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..fileio import temp_dir
from ..errors import VitoptError
from .signature import ENGINE_SUFFIXES


@dataclass
class ModelSource:
    """A servable file plus what is known about its preprocessing."""
    path: Path                  # .onnx or engine
    kind: str                   # "onnx" or "engine"
    preprocess: Optional[dict]  # spec from the model when it was exported here, else None
    exported_from: Optional[str] = None


def onnx_for_model(model_arg: str, checkpoint: Optional[str], out_path, atol: float = 1e-4) -> dict:
    """Export a timm name or compressed model directory to ``out_path`` (ONNX, dynamic batch, cleaned).

    Returns {"onnx": path, "preprocess": spec, "model": description, "parity": max abs diff}.
    Raises VitoptError when the model cannot be loaded or the exported graph differs from PyTorch
    by more than ``atol``.
    """
    import onnx
    import torch
    from ..export import check_parity, onnx_from_torch, save_onnx, set_metadata
    from ..graph import cleanup_graph
    from ..models.loading import load_model
    from .preprocess import spec_for_model
    loaded = load_model(model_arg, checkpoint)
    model = loaded.model.eval()
    spec = spec_for_model(model)
    with temp_dir("vitopt-serve-export-") as td:
        raw = Path(td) / "raw.onnx"
        print(f"serve: exporting {loaded.describe()} to ONNX", file=sys.stderr)
        onnx_from_torch(model, raw, description=loaded.describe())
        x = torch.randn(2, *spec["input_size"], generator=torch.Generator().manual_seed(0))
        proto, _ = cleanup_graph(onnx.load(str(raw)))
        clean = Path(td) / "clean.onnx"
        save_onnx(proto, clean)
        res = check_parity(model, clean, x, atol=atol)
        set_metadata(proto, {"vitopt.cleanup": "true", "vitopt.precision": "fp32"})
        save_onnx(proto, out_path)
    return {"onnx": str(out_path), "preprocess": spec, "model": loaded.describe(), "parity": res.to_dict()}


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

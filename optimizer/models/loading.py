"""Load a timm ViT by name with a local checkpoint, cached pretrained weights, or random init.

Model hubs may be unreachable: pretrained weights are used only when already in the local
Hugging Face cache; otherwise the model is randomly initialised and ``LoadedModel.weights`` says
so, and every caller must refuse to print an accuracy for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import VitoptError


@dataclass
class LoadedModel:
    model: "object"
    arch: str                      # timm architecture name
    weights: str                   # "checkpoint", "pretrained", "random" or "compressed"
    source: str = ""               # path or hub id the weights came from
    recipe: Optional[dict] = None  # the compression recipe when loaded from a compressed directory
    model_kwargs: dict = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return self.weights == "random" or (self.recipe or {}).get("base_weights") == "random"

    def describe(self) -> str:
        w = {"checkpoint": f"weights from {self.source}", "pretrained": f"pretrained weights ({self.source})",
             "random": "RANDOM weights (no checkpoint given, no cached pretrained weights): accuracy is meaningless",
             "compressed": f"compressed model from {self.source}"}[self.weights]
        if self.weights == "compressed" and self.is_random:
            w += " (compressed from RANDOM weights: accuracy is meaningless)"
        return f"{self.arch}: {w}"

    def to_dict(self) -> dict:
        return {"arch": self.arch, "weights": self.weights, "source": self.source,
                "random_weights": self.is_random}


def _timm():
    import timm
    return timm


def create_architecture(arch: str, **kwargs):
    """Build the timm architecture with random weights, never touching the network."""
    timm = _timm()
    if not timm.is_model(arch):
        raise VitoptError(f"unknown model '{arch}' (not a timm model name; try timm.list_models('*vit*'))")
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as e:
        raise VitoptError(f"cannot build {arch} with {kwargs}: {e}") from None
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise VitoptError(f"model '{arch}' is not a Vision Transformer (no .blocks/.patch_embed)")
    return model


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a plain state_dict, a {"model": ...} / {"state_dict": ...} wrapper, or safetensors."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise VitoptError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises several types for corrupt headers
            raise VitoptError(f"cannot read safetensors checkpoint {path}: {e}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise VitoptError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise VitoptError(f"checkpoint {path} is not a state_dict (or a {{'model': state_dict}} wrapper)")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict_strict(model, state: dict, source: str) -> None:
    """Strict load with one readable line listing what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        def few(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {few(unexpected)}")
        if shape:
            parts.append(f"shape mismatch {len(shape)}: {few(shape)}")
        raise VitoptError(f"checkpoint {source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _cached_pretrained(model) -> Optional[str]:
    """Path of pretrained weights already in the local HF cache, without any network access."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        try:
            p = try_to_load_from_cache(hub_id, fname)
        except Exception:
            p = None
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def load_model(spec: str, checkpoint: Optional[str] = None, **model_kwargs) -> LoadedModel:
    """Load ``spec``: a timm model name (with optional checkpoint) or a compressed-model directory.

    Example: ``load_model("deit_tiny_patch16_224", "../shared/weights/deit_tiny_patch16_224.pth")``
    """
    if spec is None or str(spec).strip() == "":
        raise VitoptError("no model given (--model NAME or a compressed model directory)")
    if os.path.isdir(spec):
        if checkpoint:
            raise VitoptError(f"--checkpoint does not apply to the compressed model directory {spec}")
        from ..compress.saving import load_compressed
        return load_compressed(spec)
    if os.sep in spec or spec.endswith((".pth", ".pt", ".safetensors", ".onnx")):
        if not os.path.exists(spec):
            raise VitoptError(f"model not found: {spec}")
        raise VitoptError(f"--model {spec} is a file: give a timm name with --checkpoint {spec}, "
                          "or a compressed model directory")
    model = create_architecture(spec, **model_kwargs)
    if checkpoint:
        load_state_dict_strict(model, read_state_dict(checkpoint), checkpoint)
        loaded = LoadedModel(model, spec, "checkpoint", str(checkpoint), model_kwargs=model_kwargs)
    else:
        cached = _cached_pretrained(model)
        if cached:
            load_state_dict_strict(model, read_state_dict(cached), cached)
            loaded = LoadedModel(model, spec, "pretrained", cached, model_kwargs=model_kwargs)
        else:
            loaded = LoadedModel(model, spec, "random", "", model_kwargs=model_kwargs)
    model.eval()
    return loaded

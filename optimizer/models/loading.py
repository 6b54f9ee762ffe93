"""Load a timm ViT by name with a local checkpoint, cached pretrained weights, or random init, or a
compressed model directory (``recipe.json`` + ``model.safetensors``, written by
``optimizer.compress.saving``, which imports this module and never the other way round).

Model hubs may be unreachable: pretrained weights are used only when already in the local
Hugging Face cache; otherwise the model is randomly initialised and ``LoadedModel.weights`` says
so, and every caller must refuse to print an accuracy for it.

A compressed directory is checked before it is trusted: the recipe's recorded hashes of its
structure and of ``model.safetensors`` must match (an edited recipe or swapped weights is refused in
one line), its structure's values must have the right types, and the rebuilt model must run.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import VitoptError

RECIPE = "recipe.json"
WEIGHTS = "model.safetensors"
RECIPE_FORMAT = "vitopt-recipe"


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

    @property
    def weights_sha256(self) -> Optional[str]:
        """sha256 of the base weights file this model comes from (None for random weights)."""
        if self.weights == "compressed":
            return (self.recipe or {}).get("base_weights_sha256")
        if self.weights in ("checkpoint", "pretrained") and self.source and os.path.isfile(self.source):
            if "_sha256" not in self.__dict__:
                from ..fileio import sha256_file
                self.__dict__["_sha256"] = sha256_file(self.source)
            return self.__dict__["_sha256"]
        return None


def _timm():
    import timm
    return timm


def create_architecture(arch: str, **kwargs):
    """Build the timm architecture with random weights, never touching the network."""
    timm = _timm()
    if not timm.is_model(arch):
        raise VitoptError(f"unknown model '{arch}' (not a timm model name; try timm.list_models('*vit*'))")
    import torch
    try:
        # seeded (without touching the caller's RNG): a model without a checkpoint gets the same random
        # weights in every process, so its resumable work (a sweep's shared slim search) stays its own
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
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
    if path.stat().st_size == 0:
        raise VitoptError(f"checkpoint {path} is empty (0 bytes)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, (EOFError, pickle.UnpicklingError)) or "Weights only load failed" in str(e):
            why = "truncated or not a torch.save file of tensors"
        else:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise VitoptError(f"cannot read checkpoint {path}: {why} ({type(e).__name__})") from None
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


def structure_sha256(steps: list) -> str:
    """Hash of the replayable part of a recipe: each step's method and structure, canonical JSON."""
    import hashlib
    import json
    canon = json.dumps([[s.get("method"), s.get("structure")] for s in steps], sort_keys=True,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def read_recipe(path: str | os.PathLike) -> dict:
    """The recipe of a compressed model directory, checked for format, version and recorded hashes."""
    from ..compress.api import RECIPE_VERSION
    from ..fileio import read_json
    p = Path(path) / RECIPE
    recipe = read_json(p, f"{path} is not a compressed model directory (no {RECIPE})")
    if recipe.get("format") != RECIPE_FORMAT or recipe.get("version") != RECIPE_VERSION:
        raise VitoptError(f"{p} is not a vitopt recipe of version {RECIPE_VERSION}")
    if not isinstance(recipe.get("arch"), str):
        raise VitoptError(f"{p}: field arch must be a timm model name, got {recipe.get('arch')!r}")
    if not isinstance(recipe.get("model_kwargs", {}), dict):
        raise VitoptError(f"{p}: field model_kwargs must be an object")
    steps = recipe.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("method"), str)
                                              for s in steps):
        raise VitoptError(f"{p}: field steps must be a list of {{method, config, structure}} objects")
    for i, step in enumerate(steps):
        _check_structure_values(step.get("structure"), f"{p}: steps[{i}].structure")
    recorded = recipe.get("structure_sha256")
    if recorded is not None and recorded != structure_sha256(steps):
        raise VitoptError(f"{p}: the steps' structure does not match its recorded hash (the recipe was edited "
                          "after saving); restore it or compress again")
    return recipe


def _check_structure_values(obj, where: str) -> None:
    """Types and ranges every method's structure shares: numbers stored as numbers, finite, and
    token indices / positions never negative. Method-specific checks happen in its ``rebuild``."""
    import math
    if isinstance(obj, dict):
        for k, v in obj.items():
            field_name = f"{where}.{k}"
            if str(k).endswith(("index", "indices", "positions")) and isinstance(v, list):
                flat = list(_leaves(v))
                bad = [x for x in flat if not isinstance(x, int) or isinstance(x, bool)]
                if bad:
                    raise VitoptError(f"{field_name} must hold integers, got {bad[0]!r}")
                if any(x < 0 for x in flat):
                    raise VitoptError(f"{field_name} holds a negative token index ({min(flat)})")
            _check_structure_values(v, field_name)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_structure_values(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        try:
            float(obj)
        except ValueError:
            return
        raise VitoptError(f"{where} is the string {obj!r}; numbers must be stored as numbers")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise VitoptError(f"{where} is {obj}, expected a finite number")


def _leaves(xs):
    for x in xs:
        if isinstance(x, list):
            yield from _leaves(x)
        else:
            yield x


def rebuild_from_recipe(recipe: dict, source: str = "recipe"):
    """The compressed architecture with arbitrary weights; a structure that does not fit is one line."""
    from ..compress.registry import get_method
    model = create_architecture(recipe["arch"], **recipe.get("model_kwargs", {}))
    for i, step in enumerate(recipe["steps"]):
        method = get_method(step["method"])
        try:
            model = method.rebuild(model, step.get("structure"))
        except VitoptError as e:
            raise VitoptError(f"{source}: steps[{i}] ({step['method']}): {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
            raise VitoptError(f"{source}: steps[{i}] ({step['method']}) structure does not fit {recipe['arch']}: "
                              f"{type(e).__name__}: {e}") from None
    return model


def load_compressed(path: str | os.PathLike) -> LoadedModel:
    """Load a directory written by ``save_compressed``, after checking it (see the module docstring)."""
    recipe = read_recipe(path)
    w = Path(path) / WEIGHTS
    if not w.is_file():
        raise VitoptError(f"{path} has a recipe but no {WEIGHTS}")
    recorded = recipe.get("weights_sha256")
    if recorded is not None:
        from ..fileio import sha256_file
        if sha256_file(w) != recorded:
            raise VitoptError(f"{w} does not match the sha256 its {RECIPE} records: the weights were replaced "
                              "or damaged after saving")
    model = rebuild_from_recipe(recipe, str(Path(path) / RECIPE))
    load_state_dict_strict(model, read_state_dict(w), str(w))
    model.eval()
    _check_runs(model, Path(path) / RECIPE)
    return LoadedModel(model, recipe["arch"], "compressed", str(path), recipe=recipe,
                       model_kwargs=recipe.get("model_kwargs", {}))


def _check_runs(model, source) -> None:
    """One forward pass on a zero image: a structure out of range fails here, not in the user's job."""
    import torch
    from ..counting import model_input_size
    try:
        with torch.no_grad():
            model(torch.zeros(1, *model_input_size(model)))
    except (RuntimeError, IndexError, ValueError, TypeError) as e:
        raise VitoptError(f"{source}: the rebuilt model does not run: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}") from None

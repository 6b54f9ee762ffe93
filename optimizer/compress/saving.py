"""Compressed models on disk: ``recipe.json`` + ``model.safetensors``, never a pickle.

Restoring builds the base timm architecture from its name (no weights needed), replays each
step's ``rebuild`` with the recorded structure, then loads the tensors strictly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import VitoptError
from ..fileio import atomic_dir, read_json
from .api import RECIPE_VERSION, CompressedModel
from .registry import get_method

RECIPE = "recipe.json"
WEIGHTS = "model.safetensors"


def save_compressed(path: str | os.PathLike, cm: CompressedModel) -> Path:
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous().clone() for k, v in cm.model.state_dict().items()}
    with atomic_dir(path) as tmp:
        (tmp / RECIPE).write_text(json.dumps(cm.recipe(), indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "vitopt", "arch": cm.arch})
    return Path(path)


def read_recipe(path: str | os.PathLike) -> dict:
    p = Path(path) / RECIPE
    recipe = read_json(p, f"{path} is not a compressed model directory (no {RECIPE})")
    if recipe.get("format") != "vitopt-recipe" or recipe.get("version") != RECIPE_VERSION:
        raise VitoptError(f"{p} is not a vitopt recipe of version {RECIPE_VERSION}")
    return recipe


def rebuild_from_recipe(recipe: dict):
    """The compressed architecture with arbitrary weights."""
    from ..models.loading import create_architecture
    model = create_architecture(recipe["arch"], **recipe.get("model_kwargs", {}))
    for step in recipe["steps"]:
        model = get_method(step["method"]).rebuild(model, step["structure"])
    return model


def load_compressed(path: str | os.PathLike):
    """Load a directory written by ``save_compressed`` as a ``LoadedModel``."""
    from ..models.loading import LoadedModel, load_state_dict_strict, read_state_dict
    recipe = read_recipe(path)
    w = Path(path) / WEIGHTS
    if not w.is_file():
        raise VitoptError(f"{path} has a recipe but no {WEIGHTS}")
    model = rebuild_from_recipe(recipe)
    load_state_dict_strict(model, read_state_dict(w), str(w))
    model.eval()
    return LoadedModel(model, recipe["arch"], "compressed", str(path), recipe=recipe,
                       model_kwargs=recipe.get("model_kwargs", {}))


def compressed_from_loaded(loaded) -> CompressedModel:
    """A CompressedModel carrying the prior steps of an already-compressed model."""
    recipe = loaded.recipe or {}
    steps = [dict(s, report=r) for s, r in zip(recipe.get("steps", []), recipe.get("reports", [{}] * 99))]
    return CompressedModel(loaded.model, loaded.arch, loaded.model_kwargs, steps,
                           recipe.get("base_weights", loaded.weights))

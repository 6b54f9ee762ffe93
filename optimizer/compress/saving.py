"""Compressed models on disk: ``recipe.json`` + ``model.safetensors``, never a pickle.

The recipe records where the model came from and what it is, so loading can check it: the base
model name, the sha256 of the base weights file (``base_weights_sha256``), each step's structure
and its hash (``structure_sha256``), and the sha256 of ``model.safetensors`` (``weights_sha256``).
Reading and checking live in ``optimizer.models.loading`` (``load_compressed``); this module only
writes, so the two never import each other in a circle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import atomic_dir, sha256_file
from ..models.loading import RECIPE, WEIGHTS, load_compressed, read_recipe, rebuild_from_recipe, structure_sha256
from .api import CompressedModel

KIND = "compressed"     # the output kind of fileio's marker: only such a directory is replaced without --force
__all__ = ["RECIPE", "WEIGHTS", "KIND", "save_compressed", "load_compressed", "read_recipe", "rebuild_from_recipe",
           "compressed_from_loaded"]


def save_compressed(path: str | os.PathLike, cm: CompressedModel, force: bool = False) -> Path:
    """Write ``cm`` to the directory ``path`` atomically; an existing directory is replaced only when it
    is empty, a previous compressed-model output, or ``force``."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous().clone() for k, v in cm.model.state_dict().items()}
    recipe = json.loads(json.dumps(cm.recipe()))  # hash what a reader will see (tuples -> lists)
    with atomic_dir(path, kind=KIND, force=force) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "vitopt", "arch": cm.arch})
        recipe["structure_sha256"] = structure_sha256(recipe["steps"])
        recipe["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        (tmp / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
    return Path(path)


def compressed_from_loaded(loaded) -> CompressedModel:
    """A CompressedModel carrying the prior steps of an already-compressed model."""
    recipe = loaded.recipe or {}
    steps = [dict(s, report=r) for s, r in zip(recipe.get("steps", []), recipe.get("reports", [{}] * 99))]
    return CompressedModel(loaded.model, loaded.arch, loaded.model_kwargs, steps,
                           recipe.get("base_weights", loaded.weights),
                           base_weights_sha256=recipe.get("base_weights_sha256"))

"""Shared fixtures: tiny timm ViTs for fast tests, ../shared real weights/data with clear skips."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITOPT_SHARED", ROOT.parent / "shared"))
DEIT_TINY_WEIGHTS = SHARED / "weights" / "deit_tiny_patch16_224.pth"
MINI = SHARED / "data" / "imagenet-mini"
SKIP_SHARED = ("../shared (real DeiT-Tiny weights and imagenet-mini) is absent; "
               "set VITOPT_SHARED to its path to run this test")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch):
    """Tests name their weights and data explicitly; a developer's VITOPT_* must not leak in."""
    for var in ("VITOPT_CHECKPOINT", "VITOPT_DATA", "VITOPT_CALIB"):
        monkeypatch.delenv(var, raising=False)


def tiny_vit(num_classes: int = 10, depth: int = 2, seed: int = 0, **kw):
    """A timm ViT with tiny dims: runs in milliseconds on CPU."""
    import timm
    import torch
    torch.manual_seed(seed)
    args = dict(depth=depth, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=num_classes)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


@pytest.fixture
def tiny_model():
    return tiny_vit()


@pytest.fixture
def shared_weights():
    if not DEIT_TINY_WEIGHTS.is_file():
        pytest.skip(SKIP_SHARED)
    return str(DEIT_TINY_WEIGHTS)


@pytest.fixture
def mini_val():
    if not (MINI / "val").is_dir():
        pytest.skip(SKIP_SHARED)
    return str(MINI / "val")


@pytest.fixture
def mini_train():
    if not (MINI / "train").is_dir():
        pytest.skip(SKIP_SHARED)
    return str(MINI / "train")


@pytest.fixture
def image_folder(tmp_path):
    """A small labelled ImageNet-style folder with a synsets.tsv covering 3 of 5 classes, plus one corrupt file."""
    from PIL import Image
    import numpy as np
    root = tmp_path / "imgs"
    rows = ["index\tsynset\tname"] + [f"{i}\tn0000000{i}\tclass{i}" for i in range(5)]
    (tmp_path / "synsets.tsv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    for syn in ("n00000001", "n00000003", "n00000004"):
        d = root / syn
        d.mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{syn}_{j}.jpg")
    (root / "n00000003" / "broken.jpg").write_bytes(b"not a jpeg")
    return root

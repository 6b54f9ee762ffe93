"""Fixtures: a small random image folder to calibrate on, and another to judge on."""
from __future__ import annotations

import pytest


def _folder(root, n_per_class: int, seed: int):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for j in range(n_per_class):
            # smooth-ish images (low-resolution noise upsampled) so tokens are correlated like real ones
            small = rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)
            Image.fromarray(small).resize((40, 40), Image.BILINEAR).save(d / f"{j}.png")
    return str(root)


@pytest.fixture(scope="session")
def calib_folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("calib"), 24, seed=0)


@pytest.fixture(scope="session")
def judge_folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("judge"), 12, seed=1)

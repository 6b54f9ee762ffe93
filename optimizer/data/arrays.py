"""Images from a folder as float32 (N, C, H, W) arrays, for graphs that do not record their preprocessing
(ONNX files, engines): calibration and held-out sets (``folder_images``) and timing / comparison inputs
(``spread_images``). The model's own eval transform when a model is given, else timm's default eval
transform (ImageNet mean/std, bicubic, crop 0.875) at the graph's input size."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from ..errors import VitoptError


def array_transform(input_shape: Sequence[int], model=None):
    """The transform images go through: ``model``'s eval transform, else timm's default at ``input_shape``."""
    from .folder import eval_transform
    if model is not None:
        return eval_transform(model)
    from timm.data import create_transform
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return create_transform(input_size=tuple(input_shape), crop_pct=0.875, interpolation="bicubic",
                            mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def _array(ds, samples) -> np.ndarray:
    import torch
    from .folder import collate
    sub = ds.with_samples(list(samples))
    batch = collate([sub[i] for i in range(len(sub))])
    if batch.failed:
        print(f"skipped {len(batch.failed)} unreadable image(s): {batch.failed[0]}", file=sys.stderr)
    return np.ascontiguousarray(batch.images.to(torch.float32).numpy())


def folder_images(folder, counts: Sequence[int], input_shape: Sequence[int], model=None,
                  seed: int = 0) -> list:
    """Disjoint arrays of ``counts[k]`` images from ``folder``, drawn in one seeded shuffle so every subset
    spans the classes. Raises VitoptError when the folder holds fewer readable images."""
    from .folder import ImageFolderData
    ds = ImageFolderData(folder, array_transform(input_shape, model), labeled=False)
    total = sum(counts)
    if len(ds.samples) < total:
        raise VitoptError(f"{folder} holds {len(ds.samples)} images; {total} are needed "
                          f"({' + '.join(map(str, counts))})")
    order = np.random.default_rng(seed).permutation(len(ds.samples))
    out, start = [], 0
    for c in counts:
        out.append(_array(ds, [ds.samples[i] for i in order[start:start + c]]))
        start += c
    return out


def spread_images(folder, count: int, input_shape: Optional[Sequence[int]] = None, model=None) -> np.ndarray:
    """At most ``count`` images taken at an even stride over ``folder`` (every class when it is sorted by
    class). Raises VitoptError when none is readable."""
    from .folder import ImageFolderData
    ds = ImageFolderData(folder, array_transform(input_shape, model), labeled=False)
    step = max(1, len(ds.samples) // count)
    x = _array(ds, ds.samples[::step][:count])
    if x.shape[0] == 0:
        raise VitoptError(f"--images: no readable image in {folder}")
    return x

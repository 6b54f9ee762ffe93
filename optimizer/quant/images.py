"""Calibration and held-out images as arrays: spread over every class of a folder, disjoint subsets."""
from __future__ import annotations

import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import VitoptError


def onnx_input_shape(proto) -> Tuple[int, int, int]:
    """(C, H, W) of the graph's first input; VitoptError when any of them is not a fixed number."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
    if len(shape) != 3 or any(d <= 0 for d in shape):
        raise VitoptError(f"cannot tell the image size of input {proto.graph.input[0].name!r} "
                          f"(shape {shape}); it needs fixed channel/height/width dimensions")
    return shape


def folder_images(folder, counts: Sequence[int], input_shape: Sequence[int], model=None,
                  seed: int = 0) -> list:
    """Disjoint arrays of ``counts[k]`` (N, C, H, W) float32 images from ``folder``, drawn in one seeded
    shuffle so every subset spans the classes. The model's own eval transform when ``model`` is given,
    else timm's default eval transform (ImageNet mean/std, bicubic, crop 0.875): an ONNX file does not
    record its preprocessing. Raises VitoptError when the folder holds fewer readable images."""
    import torch
    from ..data.folder import ImageFolderData, collate, eval_transform
    if model is not None:
        tf = eval_transform(model)
    else:
        from timm.data import create_transform
        from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        tf = create_transform(input_size=tuple(input_shape), crop_pct=0.875, interpolation="bicubic",
                              mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    ds = ImageFolderData(folder, tf, labeled=False)
    total = sum(counts)
    if len(ds.samples) < total:
        raise VitoptError(f"{folder} holds {len(ds.samples)} images; {total} are needed "
                          f"({' + '.join(map(str, counts))})")
    order = np.random.default_rng(seed).permutation(len(ds.samples))
    out, start = [], 0
    for c in counts:
        sub = ds.with_samples([ds.samples[i] for i in order[start:start + c]])
        batch = collate([sub[i] for i in range(len(sub))])
        if batch.failed:
            print(f"skipped {len(batch.failed)} unreadable image(s): {batch.failed[0]}", file=sys.stderr)
        out.append(np.ascontiguousarray(batch.images.to(torch.float32).numpy()))
        start += c
    return out

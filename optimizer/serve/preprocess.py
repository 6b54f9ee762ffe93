"""The preprocessing a client applies before sending an image: timm's eval transform, as data.

``preprocess_spec`` records it (input size, resize, centre crop, interpolation, mean/std) in a
JSON-ready dict; ``preprocess_image`` applies it with PIL + numpy only, so a client needs neither
torch nor timm. It reproduces torchvision's Resize(shorter side) + CenterCrop + ToTensor +
Normalize on PIL images, which is what timm's eval transform runs; ``preprocess_image``'s source
is also written into the repository's client example (one implementation).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ..errors import VitoptError

FORMAT = "vitopt-preprocess"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")


def spec_from_data_config(cfg: dict, source: str) -> dict:
    """A preprocessing spec from timm's data config (``resolve_data_config`` / pretrained cfg keys)."""
    c, h, w = (int(v) for v in cfg["input_size"])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    if cfg.get("crop_mode", "center") != "center":
        raise VitoptError(f"crop mode {cfg.get('crop_mode')!r} is not supported (center only)")
    interp = str(cfg.get("interpolation") or "bicubic")
    if interp not in _INTERPOLATIONS:
        raise VitoptError(f"interpolation {interp!r} is not one of {', '.join(_INTERPOLATIONS)}")
    return {"format": FORMAT, "version": 1, "source": source, "input_size": [c, h, w],
            "resize_shorter_side": int(math.floor(min(h, w) / crop_pct)), "crop_pct": crop_pct,
            "center_crop": [h, w], "interpolation": interp,
            "mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]],
            "scale": "pixel / 255", "layout": "NCHW float32, RGB"}


def spec_for_model(model) -> dict:
    """Spec of a loaded torch model: the same data config ``optimizer.data.folder.eval_transform`` uses."""
    from ..data.folder import data_config
    return spec_from_data_config(data_config(model), "timm data config of the model")


def spec_for_timm_name(name: str, input_size: Optional[Sequence[int]] = None) -> dict:
    """Spec from a timm model name's pretrained config (no weights are built or loaded)."""
    import timm
    try:
        pc = timm.get_pretrained_cfg(name)
    except Exception:
        pc = None
    if pc is None:
        raise VitoptError(f"timm has no pretrained config for {name!r}; give a timm model name")
    cfg = {"input_size": tuple(input_size or pc.input_size), "interpolation": pc.interpolation, "mean": pc.mean,
           "std": pc.std, "crop_pct": pc.crop_pct, "crop_mode": pc.crop_mode}
    return spec_from_data_config(cfg, f"timm pretrained config of {name}")


def spec_default(input_size: Sequence[int]) -> dict:
    """timm's defaults (ImageNet mean/std, bicubic, crop 0.875) at ``input_size`` (C, H, W)."""
    return spec_from_data_config({"input_size": tuple(input_size), "interpolation": "bicubic",
                                  "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875},
                                 "timm defaults (the model file records no preprocessing)")


def preprocess_image(path, spec):
    """One image file -> float32 array (C, H, W), as the model expects (see the spec's fields)."""
    import numpy as np
    from PIL import Image
    modes = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short = spec["resize_shorter_side"]
    if w <= h:     # torchvision Resize(int): the shorter side becomes `short`, the other scales down
        size = (short, int(short * h / w))
    else:
        size = (int(short * w / h), short)
    img = img.resize(size, modes[spec["interpolation"]])
    ch, cw = spec["center_crop"]
    w, h = img.size
    if w < cw or h < ch:
        raise ValueError(f"{path}: image smaller than the crop {cw}x{ch} after resizing")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))

"""An ImageNet-style folder dataset that reports unreadable images instead of dropping them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import VitoptError
from .labels import LabelMap, find_label_map

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif", ".jfif"}


def list_images(root: Path) -> list:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def spaced_indices(total: int, count: int) -> list:
    """``min(count, total)`` indices spread evenly over ``range(total)``: the calibration images every
    method reads (a folder sorted by class gives every class its share). Ascending, distinct.
    Example: ``spaced_indices(10, 4) == [0, 2, 5, 7]``"""
    n = min(int(count), int(total))
    return [int(i * total / n) for i in range(n)] if n > 0 else []


class ImageFolderData(Dataset):
    """(image tensor, label) pairs; an unreadable image yields ``None`` and is counted by the collate.

    ``labeled=False`` takes every image under ``root`` with label -1 (distillation needs none).
    ``num_classes`` (the model's head) refuses labels that cannot be the model's (``labels.check_fits``).
    """

    def __init__(self, root: str | Path, transform, synsets: Optional[str] = None,
                 labeled: bool = True, limit: Optional[int] = None, num_classes: Optional[int] = None):
        root = Path(root)
        if not root.is_dir():
            raise VitoptError(f"data directory not found: {root}")
        self.root, self.transform = root, transform
        self.label_map: Optional[LabelMap] = None
        if labeled:
            self.label_map = find_label_map(root, synsets, num_classes)
            class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
            unknown = [p.name for p in class_dirs if p.name not in self.label_map.index]
            if unknown:
                raise VitoptError(f"{len(unknown)} class folder(s) in {root} are not in {self.label_map.source}: "
                                  + ", ".join(unknown[:5]))
            self.samples = [(p, self.label_map.index[d.name]) for d in class_dirs for p in list_images(d)]
        else:
            self.samples = [(p, -1) for p in list_images(root)]
        if limit is not None:
            self.samples = self.samples[: int(limit)]
        if not self.samples:
            raise VitoptError(f"no images found in {root}")

    def __len__(self) -> int:
        return len(self.samples)

    def with_samples(self, samples: list, transform=None) -> "ImageFolderData":
        """A copy over ``samples`` (a subset of this folder's), optionally with another transform."""
        import copy
        other = copy.copy(self)
        other.samples = list(samples)
        if transform is not None:
            other.transform = transform
        return other

    def __getitem__(self, i: int):
        from PIL import Image
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
            return self.transform(img), label, str(path)
        except Exception as e:  # PIL raises many types for truncated or foreign files
            return None, label, f"{path}: {type(e).__name__}"


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    paths: list
    failed: list = field(default_factory=list)
    # dataset index of each image (``EpochSeeded`` items carry it; empty otherwise): sharded loops
    # find which images of a planned batch or gate group were readable
    indices: list = field(default_factory=list)


def collate(items) -> Batch:
    ok = [it for it in items if it[0] is not None]
    failed = [it[2] for it in items if it[0] is None]
    indices = [it[3] for it in ok] if ok and len(ok[0]) > 3 else []
    if not ok:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), [], failed)
    return Batch(torch.stack([it[0] for it in ok]), torch.tensor([it[1] for it in ok]),
                 [it[2] for it in ok], failed, indices)


def data_config(model) -> dict:
    """timm's data config for the model, at the resolution the model was actually built for."""
    from timm.data import resolve_data_config
    from ..counting import model_input_size
    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = model_input_size(model)
    return cfg


def eval_transform(model):
    """timm's own evaluation transform for the model (from its pretrained config)."""
    from timm.data import create_transform
    return create_transform(**data_config(model), is_training=False)


def train_transform(model):
    """timm's training augmentation (RandAugment, random resized crop) at the model's resolution."""
    from timm.data import create_transform
    cfg = data_config(model)
    return create_transform(input_size=cfg["input_size"], is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                            interpolation=cfg.get("interpolation", "bicubic"), mean=cfg["mean"], std=cfg["std"])


def build_loader(root: str | Path, model, batch_size: int = 64, synsets: Optional[str] = None,
                 labeled: bool = True, train: bool = False, shuffle: bool = False, workers: int = 2,
                 limit: Optional[int] = None, seed: int = 0) -> DataLoader:
    """DataLoader over an image folder with the model's timm transform; yields ``Batch``."""
    if batch_size < 1:
        raise VitoptError(f"batch size must be positive, got {batch_size}")
    tf = train_transform(model) if train else eval_transform(model)
    ds = ImageFolderData(root, tf, synsets=synsets, labeled=labeled, limit=limit,
                         num_classes=getattr(model, "num_classes", None))
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                      generator=g, persistent_workers=False)


class EpochSeeded(Dataset):
    """``dataset`` whose item i of epoch ``epoch`` draws its random augmentation from (seed, epoch, i).

    timm's transforms draw from ``random``, numpy and torch; seeding them per item (and restoring the
    caller's state afterwards, so a loop's own draws are untouched) makes an image's augmentation the
    same whichever rank, world size or worker loads it.
    """

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        import random
        import numpy as np
        s = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i)
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            try:
                return (*self.dataset[i], int(i))
            finally:
                random.setstate(py)
                np.random.set_state(npy)

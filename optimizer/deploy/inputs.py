"""The images the parity gate (and a calibrating precision) runs on."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import VitoptError


@dataclass(frozen=True)
class ParityInputs:
    """images: float tensor (N, C, H, W) with the model's eval transform; source: where they came from."""
    images: Any
    source: str


def parity_inputs(model, data_dir: Optional[str], n: int) -> ParityInputs:
    """``n`` images spread over ``data_dir`` (sorted by class, eval transform; unreadable files
    skipped), or ``n`` seeded random inputs of the model's input shape when ``data_dir`` is None.

    Raises VitoptError when the folder is missing or holds no readable image.
    Example: ``parity_inputs(model, "../shared/data/imagenet-mini/val", 8)``
    """
    import torch
    from ..counting import model_input_size
    if n < 1:
        raise VitoptError(f"the parity check needs at least one input, got {n}")
    if data_dir:
        if not os.path.isdir(data_dir):
            raise VitoptError(f"parity data directory not found: {data_dir}")
        from ..data.folder import ImageFolderData, eval_transform
        ds = ImageFolderData(data_dir, eval_transform(model), labeled=False)
        # spread over the folder (sorted by class) rather than the first class only
        picks = sorted({round(i * (len(ds) - 1) / max(n - 1, 1)) for i in range(min(n, len(ds)))})
        imgs = [item[0] for item in (ds[i] for i in picks) if item[0] is not None]
        if not imgs:
            raise VitoptError(f"no readable images in {data_dir} for the parity check")
        return ParityInputs(torch.stack(imgs), f"real images ({len(imgs)} images from {data_dir})")
    g = torch.Generator().manual_seed(0)
    return ParityInputs(torch.randn(n, *model_input_size(model, default=None), generator=g), f"random inputs ({n}, seeded; no data given)")
